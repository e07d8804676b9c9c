"""The [acl] roles against every command of the command table, the plaintext listener's
rules, and -NOPERM on a client connection. (The same matrix with real TLS clients
against real nodes is in tests/integration/test_ops.py.)"""

from __future__ import annotations

from collections import Counter

import pytest
from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from zope.interface.verify import verifyObject

from kvraft.acl import PLAINTEXT_IDENTITY, RoleACL, build_acl, command_class
from kvraft.client.backend import AllowAll, IClientACL
from kvraft.client.commands import COMMANDS, CommandFlag
from kvraft.client.server import ClientFactory

ROLES = ("read", "write", "admin")
RANK = {"connection": 0, "read": 1, "write": 2, "admin": 3}
TABLE = {"reader": "read", "writer": "write", "root": "admin"}
IDENTITY_OF = {"read": "reader", "write": "writer", "admin": "root"}


def test_role_acl_provides_the_interface():
    verifyObject(IClientACL, RoleACL(TABLE))


def test_command_classes_of_the_table():
    classes = {name.decode(): command_class(spec.flags) for name, spec in COMMANDS.items()}
    assert classes["GET"] == "read" and classes["KEYS"] == "read"
    assert classes["SET"] == "write" and classes["DEL"] == "write"
    assert classes["FLUSHALL"] == "admin" and classes["RAFT.MEMBERS"] == "admin"
    assert classes["RAFT.TRANSFER"] == "admin" and classes["RAFT.SNAPSHOT"] == "admin"
    assert classes["PING"] == "connection" and classes["HELLO"] == "connection"
    assert classes["INFO"] == "connection"


@pytest.mark.parametrize("role", ROLES)
def test_each_role_against_every_command(role):
    acl = RoleACL(TABLE)
    identity = IDENTITY_OF[role]
    for name, spec in COMMANDS.items():
        needed = command_class(spec.flags)
        allowed = RANK[needed] <= RANK[role]
        assert acl.authorize(identity, spec.flags) is allowed, (role, name)


def test_unlisted_identities_and_certificates_without_cn_get_connection_commands_only():
    acl = RoleACL(TABLE)
    for identity in ("stranger", None, ""):
        for spec in COMMANDS.values():
            expected = command_class(spec.flags) == "connection"
            assert acl.authorize(identity, spec.flags) is expected, (identity, spec.name)


def test_reserved_names_never_match_a_certificate():
    acl = RoleACL({PLAINTEXT_IDENTITY: "admin"})
    assert not acl.authorize(PLAINTEXT_IDENTITY, CommandFlag.READ)  # a CN "@plaintext"
    assert not acl.authorize(None, CommandFlag.READ)  # a TLS client without CN


def test_plaintext_listener_gets_the_plaintext_entry():
    assert RoleACL({PLAINTEXT_IDENTITY: "read"}, plaintext=True).authorize(
        None, CommandFlag.READ)
    assert not RoleACL({PLAINTEXT_IDENTITY: "read"}, plaintext=True).authorize(
        None, CommandFlag.WRITE)
    assert not RoleACL({"alice": "admin"}, plaintext=True).authorize(None, CommandFlag.READ)
    assert RoleACL({"alice": "admin"}, plaintext=True).authorize(None, CommandFlag.LOCAL)


def test_an_empty_acl_allows_everything():
    acl = build_acl({})
    assert isinstance(acl, AllowAll)
    assert all(acl.authorize(None, spec.flags) for spec in COMMANDS.values())
    assert isinstance(build_acl(TABLE), RoleACL)


def test_denials_are_counted_by_class():
    denied: Counter = Counter()
    acl = RoleACL(TABLE, denied=denied)
    acl.authorize("reader", COMMANDS[b"SET"].flags)
    acl.authorize("reader", COMMANDS[b"SET"].flags)
    acl.authorize("writer", COMMANDS[b"FLUSHALL"].flags)
    acl.authorize("writer", COMMANDS[b"GET"].flags)
    assert denied == {"write": 2, "admin": 1}


def test_unknown_roles_are_refused():
    with pytest.raises(ValueError, match="unknown ACL role"):
        RoleACL({"bob": "superuser"})


class Backend:
    node_id = "n1"

    def __init__(self):
        self.calls = []

    def write(self, command):
        self.calls.append(command)
        return succeed(1)

    def read(self, command, linearizable=True):
        self.calls.append(command)
        return succeed(b"v")

    def admin(self, command):
        self.calls.append(command)
        return succeed([b"n1"])

    def info(self):
        return {}


def converse(acl, identity, lines: list[bytes]) -> tuple[bytes, list]:
    backend = Backend()
    factory = ClientFactory(backend, acl=acl, clock=Clock(), identify=lambda p: identity)
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(b"".join(line + b"\r\n" for line in lines))
    return transport.value(), backend.calls


def test_a_denied_command_is_answered_noperm_and_never_reaches_the_node():
    acl = RoleACL(TABLE)
    out, calls = converse(acl, "reader", [b"GET k", b"SET k v", b"FLUSHALL", b"PING"])
    assert out == (b"$1\r\nv\r\n"
                   b"-NOPERM this user has no permissions to run the 'set' command\r\n"
                   b"-NOPERM this user has no permissions to run the 'flushall' command\r\n"
                   b"+PONG\r\n")
    assert calls == [[b"GET", b"k"]]
    out, calls = converse(acl, "root", [b"SET k v", b"RAFT.MEMBERS"])
    assert out == b":1\r\n*1\r\n$2\r\nn1\r\n"
    assert len(calls) == 2

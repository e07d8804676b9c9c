"""Access control for the client port: the ``[acl]`` table of the configuration.

A client's identity is the common name (CN) of its TLS client certificate; ``[acl]``
maps identities to one role each::

    [acl]
    app-server = "write"
    dashboards = "read"
    alice = "admin"
    "@plaintext" = "admin"   # the loopback plaintext listener (see below)

Roles nest (``admin`` > ``write`` > ``read``):

* ``read``: reads (GET, MGET, EXISTS, STRLEN, KEYS, DBSIZE).
* ``write``: reads and writes (SET, DEL, INCR, MSET, ...).
* ``admin``: everything, including the admin commands (RAFT.* membership, transfer and
  snapshot, FLUSHALL).

Connection commands (PING, HELLO, CLIENT, INFO, COMMAND, CONFIG, SELECT, QUIT, ...)
touch no replicated state and are allowed to every identity the TLS handshake let in;
redis clients send some of them on connect. A refused command is answered ``-NOPERM``
and counted in ``kvraft_client_denied_total``.

Rules, and why:

* An empty (or absent) ``[acl]`` keeps the behaviour of a node without ACLs: every
  certificate the cluster CA signed may run every command, admin ones included. The CA
  is then the only access control: issue client certificates accordingly.
* A non-empty ``[acl]`` is an allow-list: an identity it does not list (or a certificate
  without a CN) may run connection commands only.
* The plaintext listener (``client.plaintext_listen``, loopback only; also
  ``client.listen`` with ``client.tls = false``) has no certificate, so no identity. It
  gets the role of the reserved entry ``"@plaintext"``; without one, the allow-list rule
  applies and it may run connection commands only. Anyone with a shell on the machine
  can reach a loopback port, so grant ``"@plaintext"`` only what every local user may do.
  Identities starting with ``@`` are reserved: a certificate whose CN starts with ``@``
  matches no entry.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from twisted.logger import Logger
from zope.interface import implementer

from kvraft.client.backend import AllowAll, IClientACL
from kvraft.client.commands import CommandFlag

log = Logger(namespace="kvraft.acl")

PLAINTEXT_IDENTITY = "@plaintext"
"""The ``[acl]`` entry that gives the plaintext listener its role."""

_R, _W, _A = CommandFlag.READ, CommandFlag.WRITE, CommandFlag.ADMIN
CLASSES = _R | _W | _A
"""The flags an ACL decides on; any other flag (LOCAL, NO_LEADER) needs no permission."""
ROLE_FLAGS: dict[str, CommandFlag] = {"read": _R, "write": _R | _W, "admin": _R | _W | _A}
"""What each role may run."""
denials_logged_max = 1000
"""Distinct (identity, class) denials logged once each; later ones are only counted."""


def command_class(flags: CommandFlag) -> str:
    """The strongest permission a command with ``flags`` needs: ``"admin"``, ``"write"``,
    ``"read"`` or ``"connection"``."""
    if flags & _A:
        return "admin"
    if flags & _W:
        return "write"
    if flags & _R:
        return "read"
    return "connection"


@implementer(IClientACL)
class RoleACL:
    """Authorizes by the role ``roles[identity]`` (see the module docstring).

    ``plaintext``: this ACL serves a listener without client certificates, whose
    connections (identity ``None``) get the ``"@plaintext"`` entry's role. ``denied``,
    if given, counts refusals by command class."""

    def __init__(self, roles: Mapping[str, str], plaintext: bool = False,
                 denied: Counter | None = None):
        unknown = {identity: role for identity, role in roles.items() if role not in ROLE_FLAGS}
        if unknown:
            raise ValueError(f"unknown ACL role(s) {unknown}; use one of "
                             f"{', '.join(ROLE_FLAGS)}")
        self.roles = dict(roles)
        self.plaintext = plaintext
        self.denied = denied if denied is not None else Counter()
        self._allowed = {identity: ROLE_FLAGS[role] for identity, role in roles.items()}
        self._logged: set[tuple[str | None, str]] = set()

    def allowed(self, identity: str | None) -> CommandFlag:
        """The command classes ``identity`` may run on this listener."""
        if identity is None:
            return self._allowed.get(PLAINTEXT_IDENTITY, CommandFlag.NONE) \
                if self.plaintext else CommandFlag.NONE
        if identity.startswith("@"):
            return CommandFlag.NONE  # reserved names are never a certificate's identity
        return self._allowed.get(identity, CommandFlag.NONE)

    def authorize(self, identity: str | None, flags: CommandFlag) -> bool:
        """Whether ``identity`` may run a command with ``flags``."""
        needed = flags & CLASSES
        if not needed or needed & self.allowed(identity) == needed:
            return True
        kind = command_class(flags)
        self.denied[kind] += 1
        key = (identity, kind)
        if key not in self._logged and len(self._logged) < denials_logged_max:
            self._logged.add(key)
            who = identity if identity is not None else "the plaintext listener"
            log.warn("ACL: {who} may not run {kind} commands (role: {role}); further denials "
                     "are only counted (kvraft_client_denied_total)", who=who, kind=kind,
                     role=self.roles.get(identity if identity is not None
                                         else PLAINTEXT_IDENTITY, "none"))
        return False


def build_acl(roles: Mapping[str, str], plaintext: bool = False,
              denied: Counter | None = None) -> IClientACL:
    """The ACL of one client listener from the ``[acl]`` table: ``AllowAll`` when the
    table is empty (every CA-signed client may do anything), else a ``RoleACL``."""
    if not roles:
        return AllowAll()
    return RoleACL(roles, plaintext=plaintext, denied=denied)

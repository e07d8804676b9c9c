"""Connection commands: answered by the client connection itself, never replicated.

PING, ECHO, SELECT, HELLO, CLIENT, COMMAND, CONFIG, INFO, READONLY, READWRITE (QUIT is
handled by the connection, since it closes it). Each handler takes the connection and
the normalized command and returns the encoded reply; bad arguments raise
``InvalidCommandError`` with Redis' text.

HELLO 2 and HELLO 3 are both accepted: redis-py 8 opens every connection with HELLO 3
and gives up if refused. Our replies use only types both versions share, except null
(``$-1`` / ``_``) and maps (HELLO, CONFIG GET, COMMAND DOCS); the connection encodes
them for its version.

Compatibility: HELLO and INFO report ``redis_version`` ``7.0.0`` (the protocol level we
emulate, so client libraries enable what they should) next to ``kvraft_version``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import TYPE_CHECKING

import kvraft
from kvraft.client.backend import RAFT_INFO_FIELDS
from kvraft.client.commands import (
    COMMANDS,
    CommandFlag,
    arity_error,
    parse_int64,
    unknown_subcommand_error,
)
from kvraft.client.errors import InvalidCommandError
from kvraft.client.resp import NIL, NULL, OK, PONG, RespMap, encode_reply
from kvraft.reactor import multiplexing_api
from kvraft.results import Status

if TYPE_CHECKING:
    from kvraft.client.server import ClientProtocol

REDIS_COMPAT_VERSION = "7.0.0"
"""The Redis version whose client protocol we speak (HELLO, INFO redis_version)."""

INFO_SECTIONS = ("server", "clients", "keyspace", "raft")
"""INFO's sections, in the order INFO / INFO all / INFO default show them."""

Handler = Callable[["ClientProtocol", list[bytes]], bytes]


def run(conn: ClientProtocol, command: list[bytes]) -> bytes:
    """Answer the connection command ``command`` (normalized, name upper-case)."""
    return _HANDLERS[command[0]](conn, command)


def _bulk(value: bytes | str) -> bytes:
    if isinstance(value, str):
        value = value.encode()
    return b"$%d\r\n%s\r\n" % (len(value), value)


def _ping(conn: ClientProtocol, command: list[bytes]) -> bytes:
    return _bulk(command[1]) if len(command) > 1 else PONG


def _echo(conn: ClientProtocol, command: list[bytes]) -> bytes:
    return _bulk(command[1])


def _ok(conn: ClientProtocol, command: list[bytes]) -> bytes:
    return OK  # SELECT 0: the validator refused every other index


def _readonly(conn: ClientProtocol, command: list[bytes]) -> bytes:
    conn.readonly = True
    return OK


def _readwrite(conn: ClientProtocol, command: list[bytes]) -> bytes:
    conn.readonly = False
    return OK


# -- HELLO ---------------------------------------------------------------------------


def _hello(conn: ClientProtocol, command: list[bytes]) -> bytes:
    version = conn.protocol_version
    if len(command) > 1:
        version = parse_int64(command[1])
        if version is None:
            raise InvalidCommandError(
                "ERR Protocol version is not an integer or out of range")
        if version not in (2, 3):
            raise InvalidCommandError("NOPROTO sorry, this protocol version is not supported")
    name = None
    i = 2
    while i < len(command):
        option = command[i].upper()
        if option == b"SETNAME" and i + 1 < len(command):
            name = _checked_name(command[i + 1], "Client names")
            i += 2
        elif option == b"AUTH" and i + 2 < len(command):
            raise InvalidCommandError(
                "ERR AUTH is not supported: kvraft identifies clients by their TLS client "
                "certificate; connect with a certificate instead of a password")
        else:
            raise InvalidCommandError(
                f"ERR Syntax error in HELLO option '{command[i].decode('utf-8', 'replace')}'")
    if name is not None:
        conn.name = name
    conn.protocol_version = version  # the reply is already in the new version
    return encode_reply(RespMap([
        (b"server", b"redis"), (b"version", REDIS_COMPAT_VERSION.encode()),
        (b"proto", version), (b"id", conn.client_id), (b"mode", b"standalone"),
        (b"role", b"master"), (b"modules", [])]), conn.resp3)


def _checked_name(name: bytes, what: str) -> bytes:
    if any(c < 33 or c > 126 for c in name):  # bounded: one argument, a name
        raise InvalidCommandError(
            f"ERR {what} cannot contain spaces, newlines or special characters.")
    return name


# -- CLIENT --------------------------------------------------------------------------

_CLIENT_HELP = [
    "CLIENT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "ID", "    Return the ID of the current connection.",
    "GETNAME", "    Return the name of the current connection.",
    "SETNAME <name>", "    Assign the name <name> to the current connection.",
    "SETINFO <LIB-NAME|LIB-VER> <value>", "    Record the client library's name or version.",
    "INFO", "    Return information about the current connection.",
    "LIST", "    Return information about all client connections of this listener.",
    "HELP", "    Print this help.",
]


def _client(conn: ClientProtocol, command: list[bytes]) -> bytes:
    sub = command[1].upper()
    count = len(command)
    if sub == b"ID" and count == 2:
        return b":%d\r\n" % conn.client_id
    if sub == b"GETNAME" and count == 2:
        return _bulk(conn.name) if conn.name else (NULL if conn.resp3 else NIL)
    if sub == b"SETNAME" and count == 3:
        conn.name = _checked_name(command[2], "Client names")
        return OK
    if sub == b"SETINFO" and count == 4:
        attribute = command[2].upper()
        if attribute == b"LIB-NAME":
            conn.lib_name = _checked_name(command[3], "lib-name")
        elif attribute == b"LIB-VER":
            conn.lib_ver = _checked_name(command[3], "lib-ver")
        else:
            raise InvalidCommandError(
                f"ERR Unrecognized option '{command[2].decode('utf-8', 'replace')}'")
        return OK
    if sub == b"INFO" and count == 2:
        return _bulk(describe_client(conn) + "\n")
    if sub == b"LIST" and count == 2:
        lines = [describe_client(c) + "\n" for c in conn.factory.connections.values()]
        return _bulk("".join(lines))
    if sub == b"HELP" and count == 2:
        return encode_reply([Status(line) for line in _CLIENT_HELP], conn.resp3)
    if sub in (b"ID", b"GETNAME", b"SETNAME", b"SETINFO", b"INFO", b"LIST", b"HELP"):
        raise arity_error("client|" + sub.decode().lower())
    raise unknown_subcommand_error("client", command[1])


def describe_client(conn: ClientProtocol) -> str:
    """One CLIENT LIST line (Redis' field names; ``user`` is the TLS identity)."""
    now = conn.factory.clock.seconds()
    flags = "r" if conn.readonly else "N"
    fields = [
        ("id", str(conn.client_id)),
        ("addr", _address(conn.transport.getPeer())),
        ("laddr", _address(conn.transport.getHost())),
        ("name", conn.name.decode("ascii", "replace")),
        ("age", str(int(now - conn.created_s))),
        ("idle", str(int(now - conn.active_s))),
        ("flags", flags),
        ("db", "0"),
        ("cmd", conn.last_command.decode("ascii", "replace").lower()),
        ("user", conn.identity or "default"),
        ("lib-name", conn.lib_name.decode("ascii", "replace")),
        ("lib-ver", conn.lib_ver.decode("ascii", "replace")),
    ]
    return " ".join(f"{k}={v}" for k, v in fields)


def _address(address: object) -> str:
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    if host is None or port is None:
        return "?"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# -- COMMAND -------------------------------------------------------------------------

_REDIS_FLAGS = (
    (CommandFlag.READ, Status("readonly")),
    (CommandFlag.WRITE, Status("write")),
    (CommandFlag.ADMIN, Status("admin")),
    (CommandFlag.LOCAL, Status("fast")),
    (CommandFlag.NO_LEADER, Status("stale")),
)

_COMMAND_HELP = [
    "COMMAND <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "(no subcommand)", "    Return details about all commands.",
    "COUNT", "    Return the total number of commands.",
    "INFO [<command-name> ...]", "    Return details about the given (or all) commands.",
    "DOCS [<command-name> ...]", "    Return documentation (none: an empty array).",
    "LIST", "    Return the names of all commands.",
    "HELP", "    Print this help.",
]


def command_info(name: bytes) -> list | None:
    """COMMAND INFO's entry for ``name``, in Redis 7's shape: name, arity, flags, first
    key, last key, step, ACL categories, tips, key specs, subcommands."""
    spec = COMMANDS.get(name.upper())
    if spec is None:
        return None
    flags = [status for flag, status in _REDIS_FLAGS if flag in spec.flags]
    return [spec.name.encode(), spec.arity, flags, spec.first_key, spec.last_key,
            spec.step, [], [], [], []]


def _command(conn: ClientProtocol, command: list[bytes]) -> bytes:
    if len(command) == 1:
        return encode_reply([command_info(name) for name in COMMANDS], conn.resp3)
    sub = command[1].upper()
    if sub == b"COUNT" and len(command) == 2:
        return b":%d\r\n" % len(COMMANDS)
    if sub == b"INFO":
        names = command[2:] or list(COMMANDS)
        return encode_reply([command_info(name) for name in names], conn.resp3)
    if sub == b"DOCS":
        return encode_reply(RespMap(), conn.resp3)  # no docs: redis-cli shows no hints
    if sub == b"LIST" and len(command) == 2:
        return encode_reply([spec.name.encode() for spec in COMMANDS.values()], conn.resp3)
    if sub == b"HELP" and len(command) == 2:
        return encode_reply([Status(line) for line in _COMMAND_HELP], conn.resp3)
    if sub in (b"COUNT", b"LIST", b"HELP"):
        raise arity_error("command|" + sub.decode().lower())
    raise unknown_subcommand_error("command", command[1])


# -- CONFIG --------------------------------------------------------------------------


def config_parameters(conn: ClientProtocol) -> dict[str, str]:
    """The few Redis parameters CONFIG GET answers, with kvraft's true values: tools
    such as redis-benchmark ask for ``save`` and ``appendonly`` (durability comes from
    the Raft log, not from RDB or AOF)."""
    limits = conn.factory.limits
    return {
        "save": "",
        "appendonly": "no",
        "databases": "1",
        "maxclients": str(limits.connections_max),
        "timeout": str(int(limits.idle_timeout_s)),
        "proto-max-bulk-len": str(limits.bulk_bytes_max),
    }


def _config(conn: ClientProtocol, command: list[bytes]) -> bytes:
    sub = command[1].upper()
    if sub == b"GET":
        if len(command) < 3:
            raise arity_error("config|get")
        patterns = [arg.decode("utf-8", "replace").lower() for arg in command[2:]]
        found = [(name.encode(), value.encode())
                 for name, value in config_parameters(conn).items()
                 if any(fnmatch.fnmatchcase(name, p) for p in patterns)]
        return encode_reply(RespMap(found), conn.resp3)
    if sub == b"SET":
        raise InvalidCommandError(
            "ERR CONFIG SET is not supported: kvraft is configured by its config file "
            "(kvraft.toml); edit it and restart the node")
    if sub == b"HELP" and len(command) == 2:
        return encode_reply([Status("CONFIG GET <pattern> [<pattern> ...]"),
                             Status("    Read-only view of a few Redis parameters; kvraft "
                                    "is configured by its kvraft.toml.")], conn.resp3)
    raise unknown_subcommand_error("config", command[1])


# -- INFO ----------------------------------------------------------------------------


def _info(conn: ClientProtocol, command: list[bytes]) -> bytes:
    wanted = [arg.decode("utf-8", "replace").lower() for arg in command[1:]]
    if not wanted or any(w in ("all", "default", "everything") for w in wanted):
        sections = list(INFO_SECTIONS)
    else:
        sections = [s for s in INFO_SECTIONS if s in wanted]
    return _bulk(render_info(conn, sections))


def render_info(conn: ClientProtocol, sections: list[str]) -> str:
    """INFO's text for ``sections`` (names from ``INFO_SECTIONS``)."""
    factory = conn.factory
    node = factory.backend.info()
    raft = {name: node[name] for name in RAFT_INFO_FIELDS}  # KeyError: a backend bug
    raft.update((k, v) for k, v in node.items() if k.startswith("raft_"))
    extra = {k: v for k, v in node.items() if not k.startswith("raft_") and k != "keys"}
    uptime_s = int(factory.clock.seconds() - factory.started_s)
    port = getattr(conn.transport.getHost(), "port", 0)
    parts = []
    for section in sections:
        if section == "server":
            fields = {"redis_version": REDIS_COMPAT_VERSION,
                      "kvraft_version": kvraft.__version__, "redis_mode": "standalone",
                      "multiplexing_api": multiplexing_api(factory.clock),
                      "process_id": factory.process_id, "tcp_port": port,
                      "uptime_in_seconds": uptime_s, "uptime_in_days": uptime_s // 86400,
                      "node_id": factory.backend.node_id, **extra}
            parts.append(_info_section("Server", fields))
        elif section == "clients":
            parts.append(_info_section("Clients", {
                "connected_clients": len(factory.connections),
                "maxclients": factory.limits.connections_max,
                "blocked_clients": 0}))
        elif section == "keyspace":
            keys = node.get("keys", 0)
            fields = {"db0": f"keys={keys},expires=0,avg_ttl=0"} if keys else {}
            parts.append(_info_section("Keyspace", fields))
        elif section == "raft":
            parts.append(_info_section("Raft", raft))
    return "\r\n".join(parts)


def _info_section(title: str, fields: dict) -> str:
    lines = [f"# {title}\r\n"]
    for key, value in fields.items():
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        text = str(value).replace("\r", " ").replace("\n", " ")
        lines.append(f"{key}:{text}\r\n")
    return "".join(lines)


_HANDLERS: dict[bytes, Handler] = {
    b"PING": _ping,
    b"ECHO": _echo,
    b"SELECT": _ok,
    b"HELLO": _hello,
    b"CLIENT": _client,
    b"COMMAND": _command,
    b"CONFIG": _config,
    b"INFO": _info,
    b"READONLY": _readonly,
    b"READWRITE": _readwrite,
}

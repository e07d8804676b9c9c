"""The command table: every command the client port accepts, how it is checked, and
where it goes.

``resolve(args)`` turns a parsed request into ``(spec, command)``: ``spec`` is the
``CommandSpec`` (name, Redis-style arity, flags, route, key positions), ``command`` the
normalized state-machine command, or raises ``InvalidCommandError`` with the exact Redis
error text. Normalized commands are a list of bytes with the upper-case name first; the
state machine (``kvraft/machines``) implements exactly these shapes (a CONTRACT):

===================================  =====================================================
client sends                         backend receives
===================================  =====================================================
GET k                                [GET, k]
SET k v [NX|XX] [GET] [IFEQ old]     [SET, k, v] + [NX] or [XX] + [GET] + [IFEQ, old],
                                     always in that order (EX, PX, EXAT, PXAT and
                                     KEEPTTL are refused: no key expires)
SETNX k v                            [SETNX, k, v]
GETSET k v                           [SET, k, v, GET]
INCR / DECR k                        [INCRBY, k, b"1"] / [INCRBY, k, b"-1"]
INCRBY / DECRBY k n                  [INCRBY, k, n] / [INCRBY, k, -n] (n canonical int64)
DEL / EXISTS / MGET k...             [DEL, k...] / [EXISTS, k...] / [MGET, k...]
APPEND k v, STRLEN k                 [APPEND, k, v], [STRLEN, k]
MSET k v [k v ...]                   [MSET, k, v, ...]
KEYS pattern, DBSIZE                 [KEYS, pattern], [DBSIZE]
FLUSHALL [ASYNC|SYNC]                [FLUSHALL]                      (to ``admin``)
RAFT.<X> args...                     [RAFT.<X>, args...]             (to ``admin``)
===================================  =====================================================

Connection commands (route ``LOCAL``: PING, ECHO, QUIT, SELECT, HELLO, CLIENT, COMMAND,
CONFIG, INFO, READONLY, READWRITE) never reach the backend; ``kvraft.client.local``
answers them.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from dataclasses import dataclass

from kvraft.client.errors import InvalidCommandError


class CommandFlag(enum.Flag):
    """What a command does; an ACL decides from these (``IClientACL.authorize``)."""

    NONE = 0
    READ = enum.auto()
    """Reads the keyspace."""
    WRITE = enum.auto()
    """Changes the keyspace (goes through Raft)."""
    ADMIN = enum.auto()
    """Operator command: changes the cluster, or the whole keyspace at once."""
    LOCAL = enum.auto()
    """Answered by the connection itself: touches no replicated state."""
    NO_LEADER = enum.auto()
    """Answerable while no leader is known."""


class Route(enum.Enum):
    """Which backend call serves a command."""

    LOCAL = "local"
    READ = "read"
    WRITE = "write"
    ADMIN = "admin"


Validator = Callable[[list[bytes]], list[bytes]]


@dataclass(frozen=True)
class CommandSpec:
    """One entry of the command table."""

    name: str
    """Lower-case, as Redis shows it in errors and COMMAND replies (``"get"``)."""
    arity: int
    """Redis-style: positive = exact argument count (name included), negative = minimum."""
    flags: CommandFlag
    route: Route
    first_key: int = 0
    """Key positions, as in COMMAND's reply (0 = no keys; last_key -1 = to the end)."""
    last_key: int = 0
    step: int = 0
    validate: Validator | None = None
    """Checks and normalizes the arguments (after the arity check); ``None`` = upper-case
    the name and pass the arguments unchanged."""
    plain_count: int = 0
    """An argument count (the name included) at which ``validate`` has nothing to check
    or change but the name's case (``SET k v``: 3); 0 = none."""

    def arity_ok(self, count: int) -> bool:
        """Whether ``count`` arguments (the name included) suit this command."""
        return count == self.arity if self.arity > 0 else count >= -self.arity


# -- error texts (exactly Redis', so client libraries recognise them) --------------------

SYNTAX_ERROR = "ERR syntax error"
NOT_AN_INTEGER = "ERR value is not an integer or out of range"
EXPIRY_NOT_SUPPORTED = (
    "ERR expiry is not supported: kvraft keys never expire; send SET without "
    "EX/PX/EXAT/PXAT/KEEPTTL")


def arity_error(name: str) -> InvalidCommandError:
    """``ERR wrong number of arguments for '<name>' command``; ``name`` as Redis shows
    it (``get``, ``client|setname``)."""
    return InvalidCommandError(f"ERR wrong number of arguments for '{name}' command")


def unknown_command_error(args: list[bytes]) -> InvalidCommandError:
    """Redis 7's text for a command name it does not know."""
    shown = ""
    for arg in args[1:]:
        if len(shown) >= 128:
            break
        shown += f"'{_text(arg)[:128 - len(shown)]}' "
    return InvalidCommandError(
        f"ERR unknown command '{_text(args[0])[:128]}', with args beginning with: {shown}")


def unknown_subcommand_error(command: str, sub: bytes) -> InvalidCommandError:
    """Redis' text for an unknown subcommand of CLIENT, COMMAND, CONFIG."""
    return InvalidCommandError(
        f"ERR unknown subcommand '{_text(sub)[:128]}'. Try {command.upper()} HELP.")


def _text(arg: bytes) -> str:
    return arg.decode("utf-8", "replace")


_INT64 = re.compile(rb"-?[1-9][0-9]{0,18}|0")
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


def parse_int64(arg: bytes) -> int | None:
    """``arg`` as a signed 64-bit integer written the one way Redis accepts (no sign
    other than ``-``, no leading zeros, no spaces), or ``None``."""
    if _INT64.fullmatch(arg) is None:
        return None
    value = int(arg)
    return value if _INT64_MIN <= value <= _INT64_MAX else None


# -- validators ----------------------------------------------------------------------


def _set(args: list[bytes]) -> list[bytes]:
    condition: bytes | None = None  # NX or XX
    get = False
    ifeq: bytes | None = None
    i, n = 3, len(args)
    while i < n:
        option = args[i].upper()
        has_value = i + 1 < n
        if option in (b"NX", b"XX") and condition in (None, option) and ifeq is None:
            condition = option
        elif option == b"GET":
            get = True
        elif option == b"IFEQ" and has_value and condition is None and ifeq is None:
            ifeq = args[i + 1]
            i += 1
        elif (option in (b"EX", b"PX", b"EXAT", b"PXAT") and has_value) or option == b"KEEPTTL":
            raise InvalidCommandError(EXPIRY_NOT_SUPPORTED)  # as the kv machine says too
        else:
            raise InvalidCommandError(SYNTAX_ERROR)
        i += 1
    command = [b"SET", args[1], args[2]]
    if condition is not None:
        command.append(condition)
    if get:
        command.append(b"GET")
    if ifeq is not None:
        command += [b"IFEQ", ifeq]
    return command


def _getset(args: list[bytes]) -> list[bytes]:
    return [b"SET", args[1], args[2], b"GET"]


def _incr(args: list[bytes]) -> list[bytes]:
    return [b"INCRBY", args[1], b"1"]


def _decr(args: list[bytes]) -> list[bytes]:
    return [b"INCRBY", args[1], b"-1"]


def _incrby(args: list[bytes]) -> list[bytes]:
    if parse_int64(args[2]) is None:
        raise InvalidCommandError(NOT_AN_INTEGER)
    return [b"INCRBY", args[1], args[2]]


def _decrby(args: list[bytes]) -> list[bytes]:
    amount = parse_int64(args[2])
    if amount is None:
        raise InvalidCommandError(NOT_AN_INTEGER)
    if amount == _INT64_MIN:
        raise InvalidCommandError("ERR decrement would overflow")
    return [b"INCRBY", args[1], b"%d" % -amount]


def _mset(args: list[bytes]) -> list[bytes]:
    if len(args) % 2 == 0:
        raise arity_error("mset")
    return [b"MSET", *args[1:]]


def _flushall(args: list[bytes]) -> list[bytes]:
    if len(args) > 2 or (len(args) == 2 and args[1].upper() not in (b"ASYNC", b"SYNC")):
        raise InvalidCommandError(SYNTAX_ERROR)
    return [b"FLUSHALL"]


def _ping(args: list[bytes]) -> list[bytes]:
    if len(args) > 2:
        raise arity_error("ping")
    return [b"PING", *args[1:]]


def _select(args: list[bytes]) -> list[bytes]:
    index = parse_int64(args[1])
    if index is None:
        raise InvalidCommandError(NOT_AN_INTEGER)
    if index != 0:
        raise InvalidCommandError("ERR DB index is out of range")
    return [b"SELECT", b"0"]


def _raft_transfer(args: list[bytes]) -> list[bytes]:
    if len(args) > 2:
        raise arity_error("raft.transfer")
    return [b"RAFT.TRANSFER", *args[1:]]


# -- the table -----------------------------------------------------------------------

_R, _W, _A = CommandFlag.READ, CommandFlag.WRITE, CommandFlag.ADMIN
_L, _NL = CommandFlag.LOCAL, CommandFlag.NO_LEADER
_LOCAL = _L | _NL


def _spec(name: str, arity: int, flags: CommandFlag, route: Route,
          keys: tuple[int, int, int] = (0, 0, 0),
          validate: Validator | None = None, plain_count: int = 0) -> CommandSpec:
    return CommandSpec(name, arity, flags, route, *keys, validate=validate,
                       plain_count=plain_count)


_SPECS = [
    # connection commands
    _spec("ping", -1, _LOCAL, Route.LOCAL, validate=_ping),
    _spec("echo", 2, _LOCAL, Route.LOCAL),
    _spec("quit", -1, _LOCAL, Route.LOCAL),
    _spec("select", 2, _LOCAL, Route.LOCAL, validate=_select),
    _spec("hello", -1, _LOCAL, Route.LOCAL),
    _spec("client", -2, _LOCAL, Route.LOCAL),
    _spec("command", -1, _LOCAL, Route.LOCAL),
    _spec("config", -2, _LOCAL, Route.LOCAL),
    _spec("info", -1, _LOCAL, Route.LOCAL),
    _spec("readonly", 1, _LOCAL, Route.LOCAL),
    _spec("readwrite", 1, _LOCAL, Route.LOCAL),
    # reads
    _spec("get", 2, _R, Route.READ, (1, 1, 1)),
    _spec("mget", -2, _R, Route.READ, (1, -1, 1)),
    _spec("exists", -2, _R, Route.READ, (1, -1, 1)),
    _spec("strlen", 2, _R, Route.READ, (1, 1, 1)),
    _spec("keys", 2, _R, Route.READ),
    _spec("dbsize", 1, _R, Route.READ),
    # writes
    _spec("set", -3, _W, Route.WRITE, (1, 1, 1), _set, plain_count=3),
    _spec("setnx", 3, _W, Route.WRITE, (1, 1, 1)),
    _spec("getset", 3, _W, Route.WRITE, (1, 1, 1), _getset),
    _spec("del", -2, _W, Route.WRITE, (1, -1, 1)),
    _spec("incr", 2, _W, Route.WRITE, (1, 1, 1), _incr),
    _spec("incrby", 3, _W, Route.WRITE, (1, 1, 1), _incrby),
    _spec("decr", 2, _W, Route.WRITE, (1, 1, 1), _decr),
    _spec("decrby", 3, _W, Route.WRITE, (1, 1, 1), _decrby),
    _spec("append", 3, _W, Route.WRITE, (1, 1, 1)),
    _spec("mset", -3, _W, Route.WRITE, (1, -1, 2), _mset),
    # admin
    _spec("flushall", -1, _W | _A, Route.ADMIN, validate=_flushall),
    _spec("raft.members", 1, _A | _NL, Route.ADMIN),
    _spec("raft.add", -3, _A, Route.ADMIN),
    _spec("raft.promote", 2, _A, Route.ADMIN),
    _spec("raft.remove", 2, _A, Route.ADMIN),
    _spec("raft.transfer", -1, _A, Route.ADMIN, validate=_raft_transfer),
    _spec("raft.snapshot", 1, _A | _NL, Route.ADMIN),
]

COMMANDS: dict[bytes, CommandSpec] = {spec.name.upper().encode(): spec for spec in _SPECS}
"""The command table, by upper-case name."""


def resolve(args: list[bytes]) -> tuple[CommandSpec, list[bytes]]:
    """Look up and check a parsed request (``args[0]`` is the name, any case).

    Returns the spec and the normalized command; raises ``InvalidCommandError`` for an
    unknown command, a wrong argument count or bad arguments, in Redis' order of checks
    and with its texts.
    """
    name = args[0].upper()
    spec = COMMANDS.get(name)
    if spec is None:
        raise unknown_command_error(args)
    if not spec.arity_ok(len(args)):
        raise arity_error(spec.name)
    if spec.validate is None:
        return spec, [name, *args[1:]]
    return spec, spec.validate(args)


def resolve_many(commands: list[list[bytes]]) -> tuple[CommandSpec, list[list[bytes]]] | None:
    """``resolve`` for a pipeline of one command with one argument count (``SET k v``
    again and again, as bulk loaders and benchmarks send): the spec and the normalized
    commands, exactly what ``resolve`` gives each. ``None`` when the commands differ or
    any of them fails a check (``resolve`` them one by one for the error replies)."""
    first = commands[0]
    count = len(commands)
    if (list(map(len, commands)).count(len(first)) != count
            or [args[0] for args in commands].count(first[0]) != count):
        return None
    try:
        spec, normalized = resolve(first)
        validate = spec.validate
        if validate is None or len(first) == spec.plain_count:
            name = normalized[0]
            if first[0] == name:
                return spec, commands  # already normalized (the name in capitals)
            return spec, [[name, *args[1:]] for args in commands]
        return spec, [normalized, *map(validate, commands[1:])]
    except InvalidCommandError:
        return None

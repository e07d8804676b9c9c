"""The ``kv`` state machine: Redis string commands over one replicated key space.

Commands (a CONTRACT with the client layer) are lists of ``bytes``: exactly the
client's RESP arguments with the command name upper-cased, e.g. ``[b"SET", b"k", b"v",
b"NX", b"GET"]``. Option words may come in any case. Results follow
``kvraft.results``.

=========  =====  ==============================================================
command    kind   reply
=========  =====  ==============================================================
GET        read   value or nil
MGET       read   array of values / nils
EXISTS     read   how many of the given keys exist (repeats count again)
STRLEN     read   length of the value, 0 for a missing key
DBSIZE     read   number of keys
KEYS       read   keys matching a Redis glob (see ``keypattern``), in the same order
                  on every replica; at most ``keys_reply_max`` or an error
SET        write  OK / nil when NX, XX or IFEQ stops it; with GET the old value.
                  EX, PX, EXAT, PXAT, KEEPTTL: "ERR expiry is not supported"
SETNX      write  1 if set, 0 if the key existed
GETSET     write  old value or nil
DEL        write  how many keys were removed
INCR       write  the new value (64-bit signed; a missing key counts as 0)
INCRBY     write  likewise, by a 64-bit signed amount
DECR       write  likewise, minus one
DECRBY     write  likewise, minus the amount
APPEND     write  the new length
MSET       write  OK (all keys at once, one revision)
FLUSHALL   write  OK (optional ASYNC or SYNC, both synchronous here)
=========  =====  ==============================================================

Revisions: a global counter advances by one for each applied command that changed the
key space (wrote or removed at least one key; a SET of an equal value counts, a failed
SET NX or a DEL of missing keys does not). Every key a command writes takes that number
as its mod revision. Each key's value is stored as ONE ``bytes`` object, its 8-byte
big-endian mod revision followed by the value: that costs at most one 16-byte step of
the allocator per key, and nothing for 100-byte values (141 bytes round up to the
same 144 as 133). Measured: ~232 bytes per key in all for 16-byte keys and 100-byte
values, 221 MiB for a million (``tests/machines/bench_kv.py``).

Limits that change replicated results are constants (``VALUE_BYTES_MAX``): an option
would let two nodes configured differently diverge. Options (``KvStateMachine``
keywords, ``state_machine.*`` in the configuration) only bound local work.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from itertools import islice

from twisted.logger import Logger
from zope.interface import implementer

from kvraft.interfaces import IBatchStateMachine, IStateMachine
from kvraft.machines.keypattern import KeyPattern
from kvraft.machines.keyspace import KeySpace
from kvraft.machines.kv_snapshot import REVISION_BYTES, KvSnapshotView, read_snapshot
from kvraft.results import OK, CommandError

__all__ = ["COMMANDS", "VALUE_BYTES_MAX", "CommandSpec", "KvStateMachine"]

log = Logger()

VALUE_BYTES_MAX = 512 * 1024 * 1024
"""Largest value APPEND may build (Redis's proto-max-bulk-len). Replicated semantics."""

SNAPSHOT_CHUNK_BYTES_DEFAULT = 1024 * 1024
KEYS_REPLY_MAX_DEFAULT = 1_000_000
KEYS_PATTERN_BYTES_MAX_DEFAULT = 1024
SNAPSHOT_BUFFER_BYTES_MAX_DEFAULT = 2 * VALUE_BYTES_MAX  # one batch plus its largest value

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

_pack_revision = struct.Struct(">Q").pack
_unpack_revision = struct.Struct(">Q").unpack_from
# Redis's string2ll: no sign but '-', no leading zeros, no spaces, at most 20 bytes.
_INTEGER = re.compile(rb"(?:-?[1-9][0-9]{0,19}|0)\Z")
_PLAIN_SET = frozenset((b"SET", b"set"))
"""Spellings of SET that ``apply_batch`` recognises without the command table (any other
spelling still works, through it)."""
_PLAIN_GET = frozenset((b"GET", b"get"))
"""Spellings of GET that ``query`` answers without the command table."""
_EXPIRY_OPTIONS = frozenset((b"EX", b"PX", b"EXAT", b"PXAT", b"KEEPTTL"))
_FLUSH_MODES = frozenset((b"ASYNC", b"SYNC"))
_ARG_ECHO_CHARS = 128

# Error replies, in Redis's words wherever Redis has some.
ERR_SYNTAX = CommandError("ERR syntax error")
ERR_NOT_INTEGER = CommandError("ERR value is not an integer or out of range")
ERR_OVERFLOW = CommandError("ERR increment or decrement would overflow")
ERR_DECREMENT_OVERFLOW = CommandError("ERR decrement would overflow")
ERR_EXPIRY = CommandError("ERR expiry is not supported")
ERR_TOO_BIG = CommandError("ERR string exceeds maximum allowed size (proto-max-bulk-len)")
ERR_MALFORMED = CommandError(
    "ERR malformed command: expected a non-empty list of byte strings, name first")
ERR_INTERNAL = CommandError(
    "ERR internal error in the kv state machine; the node log has the details")


def _parse_int64(raw: bytes) -> int | None:
    """``raw`` as a signed 64-bit integer in Redis's strict decimal form, else None."""
    if _INTEGER.match(raw) is None:
        return None
    value = int(raw)
    return value if INT64_MIN <= value <= INT64_MAX else None


def _echo(raw: bytes) -> str:
    """A short printable rendering of user bytes for error messages."""
    text = raw[:_ARG_ECHO_CHARS].decode("utf-8", "replace")
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def _unknown_command(command: list | tuple) -> CommandError:
    args = ""
    for arg in command[1:]:
        if len(args) >= _ARG_ECHO_CHARS:
            break
        args += f"'{_echo(arg)[:_ARG_ECHO_CHARS - len(args)]}' "
    return CommandError(
        f"ERR unknown command '{_echo(command[0])}', with args beginning with: {args}")


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """One command of the ``kv`` machine, for the client layer's command table.

    ``arity`` follows Redis (the name counts): ``n > 0`` exactly ``n`` arguments,
    ``n < 0`` at least ``-n``.
    """

    name: bytes
    arity: int
    write: bool
    handler: Callable = field(repr=False, compare=False)
    arity_error: CommandError = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        message = (f"ERR wrong number of arguments for '{self.name.decode().lower()}' "
                   "command")
        object.__setattr__(self, "arity_error", CommandError(message))

    def arity_ok(self, count: int) -> bool:
        """Whether ``count`` arguments (name included) suit this command."""
        return count == self.arity if self.arity > 0 else count >= -self.arity


COMMANDS: dict[bytes, CommandSpec] = {}
"""Every command, by upper-case name (filled in below the machine class)."""


def _resolve(command: object) -> CommandSpec | CommandError:
    """The spec for a well-formed ``command``, else the error to reply."""
    if type(command) is not list and type(command) is not tuple or not command:
        return ERR_MALFORMED
    for arg in command:
        if type(arg) is not bytes:
            return ERR_MALFORMED
    spec = COMMANDS.get(command[0]) or COMMANDS.get(command[0].upper())
    if spec is None:
        return _unknown_command(command)
    if not spec.arity_ok(len(command)):
        return spec.arity_error
    return spec


@implementer(IStateMachine, IBatchStateMachine)
class KvStateMachine:
    """The ``kv`` machine (provides ``IStateMachine``); see the module docstring.

    Options bound local work only, so nodes may differ in them safely:
    ``snapshot_chunk_bytes`` (~size of each snapshot chunk), ``keys_reply_max`` (most
    keys KEYS returns; more is an error), ``keys_pattern_bytes_max`` (longest KEYS
    pattern), ``snapshot_buffer_bytes_max`` (largest undecoded snapshot record held while
    restoring).
    """

    option_defaults: Mapping[str, int] = {
        "snapshot_chunk_bytes": SNAPSHOT_CHUNK_BYTES_DEFAULT,
        "keys_reply_max": KEYS_REPLY_MAX_DEFAULT,
        "keys_pattern_bytes_max": KEYS_PATTERN_BYTES_MAX_DEFAULT,
        "snapshot_buffer_bytes_max": SNAPSHOT_BUFFER_BYTES_MAX_DEFAULT,
    }

    def __init__(self, *, snapshot_chunk_bytes: int = SNAPSHOT_CHUNK_BYTES_DEFAULT,
                 keys_reply_max: int = KEYS_REPLY_MAX_DEFAULT,
                 keys_pattern_bytes_max: int = KEYS_PATTERN_BYTES_MAX_DEFAULT,
                 snapshot_buffer_bytes_max: int = SNAPSHOT_BUFFER_BYTES_MAX_DEFAULT) -> None:
        self.last_applied = 0
        """Index of the last log entry applied (``IStateMachine``)."""
        self._keys = KeySpace()
        self._revision = 0
        self._snapshot_chunk_bytes = snapshot_chunk_bytes
        self._keys_reply_max = keys_reply_max
        self._keys_pattern_bytes_max = keys_pattern_bytes_max
        self._snapshot_buffer_bytes_max = snapshot_buffer_bytes_max

    @classmethod
    def from_options(cls, options: Mapping[str, object]) -> KvStateMachine:
        """A machine configured from ``state_machine.*`` settings (positive integers,
        names as in ``option_defaults``). ``ValueError`` names a wrong or unknown one."""
        unknown = sorted(set(options) - set(cls.option_defaults))
        if unknown:
            raise ValueError(
                f"state_machine: unknown option(s) {', '.join(unknown)} for the kv plugin; "
                f"known: {', '.join(sorted(cls.option_defaults))}")
        for name, value in options.items():
            if type(value) is not int or value < 1:
                raise ValueError(
                    f"state_machine.{name} must be a positive integer, got {value!r}")
        return cls(**options)  # type: ignore[arg-type]

    # -- IStateMachine ------------------------------------------------------------------

    def apply(self, index: int, command: object) -> object:
        """Apply one command of the entry at ``index``; never raises for bad input."""
        self._enter_entry(index)
        spec = _resolve(command)
        if type(spec) is CommandError:
            return spec
        return self._run(spec, command)

    def apply_batch(self, index: int, commands: list) -> list:
        """Apply every command of the entry at ``index`` in order; their results
        (``IBatchStateMachine``: the same as ``apply`` per command, once per entry).

        The common write, a plain ``SET key value``, skips the command table: it always
        succeeds, stores the value under a new revision and answers OK."""
        self._enter_entry(index)
        keys = self._keys
        put = keys.put
        live = keys.live_dict()  # None while a snapshot holds the map: then put()
        pack = _pack_revision
        run = self._run
        results = []
        append = results.append
        revision = self._revision
        for command in commands:
            if (type(command) is list and len(command) == 3
                    and type(name := command[0]) is bytes and name in _PLAIN_SET
                    and type(key := command[1]) is bytes
                    and type(value := command[2]) is bytes):
                revision += 1
                if live is not None:
                    live[key] = pack(revision) + value
                else:
                    put(key, pack(revision) + value)
                append(OK)
                continue
            self._revision = revision
            spec = _resolve(command)
            append(spec if type(spec) is CommandError else run(spec, command))
            revision = self._revision
            live = keys.live_dict()  # FLUSHALL replaces the map
        self._revision = revision
        return results

    def _enter_entry(self, index: int) -> None:
        """Start applying the entry at ``index`` (``apply``, ``apply_batch``)."""
        if index < self.last_applied:
            raise ValueError(
                f"apply(index={index}) after last_applied={self.last_applied}: entries "
                "must be applied in log order (a bug in the caller)")
        self.last_applied = index
        self._keys.thaw_if_released()

    def query(self, command: object) -> object:
        """Answer a read command from the current state, changing nothing. The common
        read, a plain ``GET key``, skips the command table."""
        if (type(command) is list and len(command) == 2
                and type(name := command[0]) is bytes and name in _PLAIN_GET
                and type(key := command[1]) is bytes):
            item = self._keys.get(key)
            return None if item is None else item[REVISION_BYTES:]
        spec = _resolve(command)
        if type(spec) is CommandError:
            return spec
        if spec.write:
            return CommandError(
                f"ERR {spec.name.decode()} is a write command: propose it through the log "
                "instead of answering it as a read")
        return self._run(spec, command)

    def snapshot(self) -> KvSnapshotView:
        """A view of the state as of ``last_applied``: O(1), copy-on-write. Take it
        between entries (never between two commands of one entry), and drop it once
        written: while it lives, writes go to a slower overlay, and a second snapshot
        taken meanwhile costs an O(n) copy."""
        self._keys.thaw_if_released()
        return self._keys.freeze(lambda items: KvSnapshotView(
            items, index=self.last_applied, revision=self._revision,
            chunk_bytes=self._snapshot_chunk_bytes))

    def restore(self, chunks: Iterable[bytes]) -> None:
        """Replace the whole state with a snapshot body; ``last_applied`` becomes the
        header's index until ``set_last_applied``. On ``ValueError`` (a bad snapshot,
        the message says what) the state is left as it was."""
        contents = read_snapshot(chunks, self._snapshot_buffer_bytes_max)
        self._keys.replace(contents.items)
        self._revision = contents.revision
        self.last_applied = contents.index

    def set_last_applied(self, index: int) -> None:
        """Record the log index the state now reflects (no-op entries, ``restore``)."""
        self.last_applied = index

    # -- inspection ---------------------------------------------------------------------

    @property
    def current_revision(self) -> int:
        """The global revision counter: how many applied commands changed the keys."""
        return self._revision

    def revision(self, key: bytes) -> int:
        """``key``'s mod revision (the counter when it was last written), 0 if absent."""
        item = self._keys.get(key)
        return 0 if item is None else _unpack_revision(item)[0]

    @property
    def key_count(self) -> int:
        """Number of keys (what DBSIZE answers), e.g. for INFO's keyspace section."""
        return len(self._keys)

    # -- plumbing -----------------------------------------------------------------------

    def _run(self, spec: CommandSpec, command: list | tuple) -> object:
        try:
            return spec.handler(self, command)
        except MemoryError:
            raise  # not deterministic across nodes: crashing beats diverging
        except Exception:
            # Deterministic on every node, so replying beats halting replication; but
            # it is a bug, and handlers validate before they write so nothing is half done.
            log.failure("kv command {name} failed", name=spec.name)
            return ERR_INTERNAL

    def _next_revision(self) -> bytes:
        """Advance the counter for a command that is about to write; the value prefix."""
        self._revision += 1
        return _pack_revision(self._revision)

    # -- reads --------------------------------------------------------------------------

    def _get(self, args: list) -> bytes | None:
        item = self._keys.get(args[1])
        return None if item is None else item[REVISION_BYTES:]

    def _mget(self, args: list) -> list:
        get = self._keys.get
        return [None if (item := get(key)) is None else item[REVISION_BYTES:]
                for key in args[1:]]

    def _exists(self, args: list) -> int:
        get = self._keys.get
        return sum(1 for key in args[1:] if get(key) is not None)

    def _strlen(self, args: list) -> int:
        item = self._keys.get(args[1])
        return 0 if item is None else len(item) - REVISION_BYTES

    def _dbsize(self, args: list) -> int:
        return len(self._keys)

    def _keys_matching(self, args: list) -> list | CommandError:
        pattern = args[1]
        if len(pattern) > self._keys_pattern_bytes_max:
            return CommandError(
                f"ERR KEYS pattern is {len(pattern)} bytes, over the limit of "
                f"{self._keys_pattern_bytes_max} (state_machine.keys_pattern_bytes_max); "
                "use a shorter pattern")
        if pattern == b"*":  # Redis special-cases it, so it lists the empty key too
            candidates = self._keys.keys()
        else:
            compiled = KeyPattern(pattern)
            if compiled.literal is not None:
                literal = compiled.literal
                return [literal] if self._keys.get(literal) is not None else []
            candidates = compiled.filter(self._keys.keys())
        limit = self._keys_reply_max
        found = list(islice(candidates, limit + 1))
        if len(found) > limit:
            return CommandError(
                f"ERR KEYS matched more than {limit} keys "
                "(state_machine.keys_reply_max); use a narrower pattern")
        return found

    # -- writes -------------------------------------------------------------------------

    def _set(self, args: list) -> object:
        condition: bytes | None = None
        expected: bytes | None = None
        want_old = False
        i, count = 3, len(args)
        while i < count:
            option = args[i].upper()
            if option == b"NX" or option == b"XX":
                if condition is not None and condition != option:
                    return ERR_SYNTAX
                condition = option
            elif option == b"IFEQ" and i + 1 < count:
                if condition is not None:
                    return ERR_SYNTAX
                condition, expected = option, args[i + 1]
                i += 1
            elif option == b"GET":
                want_old = True
            elif option in _EXPIRY_OPTIONS:
                return ERR_EXPIRY
            else:
                return ERR_SYNTAX
            i += 1
        key = args[1]
        old = self._keys.get(key)
        if condition is None:
            allowed = True
        elif condition == b"NX":
            allowed = old is None
        elif condition == b"XX":
            allowed = old is not None
        else:  # IFEQ: an absent key never equals (Valkey)
            allowed = (old is not None and len(old) - REVISION_BYTES == len(expected)
                       and old.endswith(expected))
        if allowed:
            self._keys.put(key, self._next_revision() + args[2])
        if want_old:
            return None if old is None else old[REVISION_BYTES:]
        return OK if allowed else None

    def _setnx(self, args: list) -> int:
        key = args[1]
        if self._keys.get(key) is not None:
            return 0
        self._keys.put(key, self._next_revision() + args[2])
        return 1

    def _getset(self, args: list) -> bytes | None:
        key = args[1]
        old = self._keys.get(key)
        self._keys.put(key, self._next_revision() + args[2])
        return None if old is None else old[REVISION_BYTES:]

    def _mset(self, args: list) -> object:
        if len(args) % 2 == 0:
            return COMMANDS[b"MSET"].arity_error
        prefix = self._next_revision()
        put = self._keys.put
        for i in range(1, len(args), 2):
            put(args[i], prefix + args[i + 1])
        return OK

    def _del(self, args: list) -> int:
        delete = self._keys.delete
        removed = sum(1 for key in args[1:] if delete(key))
        if removed:
            self._revision += 1
        return removed

    def _append(self, args: list) -> int | CommandError:
        key, suffix = args[1], args[2]
        old = self._keys.get(key)
        length = len(suffix) if old is None else len(old) - REVISION_BYTES + len(suffix)
        if length > VALUE_BYTES_MAX:
            return ERR_TOO_BIG
        prefix = self._next_revision()
        if old is None:
            self._keys.put(key, prefix + suffix)
        else:
            self._keys.put(key, b"".join((prefix, memoryview(old)[REVISION_BYTES:], suffix)))
        return length

    def _incr_by(self, key: bytes, increment: int) -> int | CommandError:
        old = self._keys.get(key)
        if old is None:
            current = 0
        else:
            current = _parse_int64(old[REVISION_BYTES:])
            if current is None:
                return ERR_NOT_INTEGER
        value = current + increment
        if not INT64_MIN <= value <= INT64_MAX:
            return ERR_OVERFLOW
        self._keys.put(key, self._next_revision() + b"%d" % value)
        return value

    def _incr(self, args: list) -> int | CommandError:
        return self._incr_by(args[1], 1)

    def _decr(self, args: list) -> int | CommandError:
        return self._incr_by(args[1], -1)

    def _incrby(self, args: list) -> int | CommandError:
        increment = _parse_int64(args[2])
        if increment is None:
            return ERR_NOT_INTEGER
        return self._incr_by(args[1], increment)

    def _decrby(self, args: list) -> int | CommandError:
        decrement = _parse_int64(args[2])
        if decrement is None:
            return ERR_NOT_INTEGER
        if decrement == INT64_MIN:
            return ERR_DECREMENT_OVERFLOW
        return self._incr_by(args[1], -decrement)

    def _flushall(self, args: list) -> object:
        if len(args) > 2 or (len(args) == 2 and args[1].upper() not in _FLUSH_MODES):
            return ERR_SYNTAX
        if len(self._keys):
            self._revision += 1
        self._keys.clear()
        return OK


def _register(name: bytes, arity: int, write: bool, handler: Callable) -> None:
    COMMANDS[name] = CommandSpec(name, arity, write, handler)


_register(b"GET", 2, False, KvStateMachine._get)
_register(b"MGET", -2, False, KvStateMachine._mget)
_register(b"EXISTS", -2, False, KvStateMachine._exists)
_register(b"STRLEN", 2, False, KvStateMachine._strlen)
_register(b"DBSIZE", 1, False, KvStateMachine._dbsize)
_register(b"KEYS", 2, False, KvStateMachine._keys_matching)
_register(b"SET", -3, True, KvStateMachine._set)
_register(b"SETNX", 3, True, KvStateMachine._setnx)
_register(b"GETSET", 3, True, KvStateMachine._getset)
_register(b"MSET", -3, True, KvStateMachine._mset)
_register(b"DEL", -2, True, KvStateMachine._del)
_register(b"APPEND", 3, True, KvStateMachine._append)
_register(b"INCR", 2, True, KvStateMachine._incr)
_register(b"DECR", 2, True, KvStateMachine._decr)
_register(b"INCRBY", 3, True, KvStateMachine._incrby)
_register(b"DECRBY", 3, True, KvStateMachine._decrby)
_register(b"FLUSHALL", -1, True, KvStateMachine._flushall)

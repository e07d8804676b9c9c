"""RESP for the client port: an incremental request parser and the reply encoder.

Replies are RESP2, or RESP3 for a connection that sent HELLO 3 (the two differ, for
our replies, only in null and map). Requests are the same in both, and come in two
shapes, told apart by their first byte, as in Redis:

* multibulk: ``*<count>\\r\\n`` then ``count`` times ``$<length>\\r\\n<bytes>\\r\\n``
  (what redis-cli, redis-py and redis-benchmark send);
* inline: one line of space-separated words (what a person types into telnet), with
  Redis' quoting: ``"..."`` understands ``\\n \\r \\t \\b \\a \\" \\\\`` and ``\\xHH``;
  ``'...'`` understands only ``\\'``; a closing quote must be followed by a space or the
  end of the line. Words are separated by ASCII whitespace; unlike Redis, a NUL byte is
  an ordinary byte.

The parser is fed arbitrary slices of the stream and hands back complete commands
(lists of bytes). It never trusts a length header with memory: a header is checked
against the limits first, and the bytes it announces are only held as they arrive.
Everything it holds is bounded by ``line_bytes_max`` (an unfinished line),
``bulk_bytes_max`` (an unfinished argument) and ``request_bytes_max`` (the arguments of
one unfinished command).

Speed: a pipelined burst is parsed from one ``bytes`` buffer with ``find`` and slicing,
with no per-byte Python loop; data that cannot complete anything yet (the middle of a
large value, a line without its newline) is only appended to a list, so a stream fed
one byte at a time costs linear time, not quadratic.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from itertools import chain

from kvraft.client.errors import ProtocolError
from kvraft.results import CommandError, Status

line_bytes_max_default = 64 * 1024
"""Longest inline command line or RESP header line, CRLF excluded (Redis: 64 KiB)."""
bulk_bytes_max_default = 16 * 1024 * 1024
"""Largest single argument (Redis: 512 MiB; a Raft log entry should stay far smaller)."""
args_max_default = 65536
"""Most arguments in one command (Redis: 1024 * 1024)."""
request_bytes_max_default = 32 * 1024 * 1024
"""Most argument bytes in one command (bounds MSET k1 v1 ... kN vN as a whole)."""

fast_window_bytes = 128 * 1024
"""The most input one ``take`` hands to the fast multibulk path (bounds its copying)."""

_NO_LIMIT = 1 << 62
_ARRAY_HEADERS = {b"*%d" % n: n for n in range(1, 1025)}
_BULK_HEADERS = [b"$%d" % n for n in range(4096)]
_DIGITS_MAX = 18  # more digits than any limit could allow; keeps int() cheap

_UNQUOTED_RUN = re.compile(rb"[^\s\"']+")
_DOUBLE_QUOTED_RUN = re.compile(rb'[^"\\]+')
_SINGLE_QUOTED_RUN = re.compile(rb"[^'\\]+")
_SPACES = re.compile(rb"\s*")
_WHITESPACE = frozenset(b" \t\r\n\x0b\x0c")
_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")
_ESCAPES = {ord("n"): b"\n", ord("r"): b"\r", ord("t"): b"\t", ord("b"): b"\b",
            ord("a"): b"\a"}


class RespParser:
    """Incremental parser of a client's request stream.

    ``feed(data)`` any slice of the stream, then ``take()`` the commands it completed.
    After a ``ProtocolError`` the stream is unusable (the position of the next command
    is unknown): the connection must answer the error and close.
    """

    def __init__(self, line_bytes_max: int = line_bytes_max_default,
                 bulk_bytes_max: int = bulk_bytes_max_default,
                 args_max: int = args_max_default,
                 request_bytes_max: int = request_bytes_max_default) -> None:
        for name, value in (("line_bytes_max", line_bytes_max),
                            ("bulk_bytes_max", bulk_bytes_max), ("args_max", args_max),
                            ("request_bytes_max", request_bytes_max)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, not {value}")
        if request_bytes_max < bulk_bytes_max:
            raise ValueError(
                f"request_bytes_max ({request_bytes_max}) must be at least bulk_bytes_max "
                f"({bulk_bytes_max}): one command must be able to carry one largest argument")
        self.line_bytes_max = line_bytes_max
        self.bulk_bytes_max = bulk_bytes_max
        self.args_max = args_max
        self.request_bytes_max = request_bytes_max
        # take_whole skips the byte-limit checks of reads no longer than this: none of
        # their arguments can break a limit, and each has a precomputed header.
        self._small_bytes_max = min(len(_BULK_HEADERS) - 1, bulk_bytes_max, request_bytes_max)
        # Unparsed input: self._buf[self._pos:] followed by the chunks in self._chunks.
        self._buf = b""
        self._pos = 0
        self._chunks: list[bytes] = []
        self._buffered = 0  # bytes of unparsed input, in _buf and _chunks
        # Parsing resumes only when it can progress: once _buffered reaches _need_bytes,
        # or (when waiting for the end of a line) once a chunk with a newline arrives.
        self._need_bytes = 1
        self._need_newline = False
        self.ready = False
        """Whether ``take`` may return commands (False: it would return none)."""
        # The multibulk command being read: its arguments so far, how many are still
        # due, their total size, and the length of the argument whose body is awaited
        # (-1 while its "$<length>" header is awaited).
        self._args: list[bytes] | None = None
        self._args_left = 0
        self._args_bytes = 0
        self._bulk_len = -1
        self._error: ProtocolError | None = None

    @property
    def buffered_bytes(self) -> int:
        """Bytes held for commands not yet complete: unparsed input plus the arguments
        already read of an unfinished multibulk command."""
        held = sum(map(len, self._args)) if self._args else 0
        return self._buffered + held

    def feed(self, data: bytes) -> None:
        """Append ``data`` (any slice of the stream) to the input. Cheap: parsing
        happens in ``take``. Input after a protocol error is dropped."""
        if not data or self._error is not None:
            return
        self._chunks.append(data)
        self._buffered += len(data)
        if not self.ready and (self._buffered >= self._need_bytes
                                or (self._need_newline and b"\n" in data)):
            self.ready = True

    def take(self, max_commands: int | None = None) -> list[list[bytes]]:
        """The commands completed by the input so far, oldest first, at most
        ``max_commands`` of them (the rest stay buffered for the next call).

        Raises ``ProtocolError`` when the input is not a valid request stream or breaks
        a limit; commands completed before the bad bytes are returned first, and the
        error is raised by the next call (and every call after it).
        """
        if self._error is not None:
            raise self._error
        if not self.ready:
            return []
        if self._chunks:
            self._join()
        out: list[list[bytes]] = []
        try:
            self._parse(out, _NO_LIMIT if max_commands is None else max_commands)
        except ProtocolError as e:
            self._fail(e)
            if out:
                return out
            raise
        return out

    def _join(self) -> None:
        chunks = self._chunks
        if self._pos < len(self._buf):
            chunks.insert(0, self._buf[self._pos:])
        self._buf = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._pos = 0
        self._chunks = []

    def _fail(self, error: ProtocolError) -> None:
        self._error = error
        self._buf, self._pos, self._chunks = b"", 0, []
        self._args, self._args_bytes, self._buffered = None, 0, 0

    def _wait(self, pos: int, end: int, need_bytes: int, need_newline: bool) -> None:
        """Park at ``pos``: no progress until ``need_bytes`` unparsed bytes (counted from
        ``pos``) are held, or a newline arrives when ``need_newline``."""
        self._pos = pos
        self._buffered = end - pos
        self._need_bytes = need_bytes
        self._need_newline = need_newline
        self.ready = False
        if pos == end:
            self._buf, self._pos = b"", 0

    def _line_end(self, buf: bytes, pos: int, end: int, what: str) -> int:
        """Index of the ``\\n`` ending the line at ``pos``, or -1 when it has not arrived
        yet; raises once the line is longer than ``line_bytes_max`` allows."""
        window = pos + self.line_bytes_max + 2  # the line, "\r" and "\n"
        nl = buf.find(b"\n", pos, window)
        if nl < 0 and end >= window:
            raise ProtocolError(
                f"Protocol error: too big {what} (line_bytes_max is {self.line_bytes_max} "
                "bytes)")
        return nl

    def _header(self, buf: bytes, pos: int, nl: int, what: str) -> int:
        """The integer of the RESP header line ``buf[pos:nl]`` (type byte included)."""
        if buf[nl - 1] != 13:
            raise ProtocolError(f"Protocol error: {what} line must end with CRLF")
        text = buf[pos + 1:nl - 1]
        if text.isdigit() and len(text) <= _DIGITS_MAX:
            return int(text)
        if text[:1] == b"-" and text[1:].isdigit() and len(text) <= _DIGITS_MAX:
            return -1
        raise ProtocolError(f"Protocol error: invalid {what}")

    def _parse(self, out: list[list[bytes]], limit: int) -> None:
        buf, pos, end = self._buf, self._pos, len(self._buf)
        if self._args is None and pos < end and buf[pos] == 42:  # "*"
            pos = self._fast_multibulk(buf, pos, end, out, limit)
        while True:
            if self._args is None:
                if len(out) >= limit:
                    self._pos, self._buffered = pos, end - pos
                    return  # stay ready: more commands may be waiting
                if pos >= end:
                    self._wait(pos, end, 1, False)
                    return
                if buf[pos] == 42:  # "*"
                    nl = self._line_end(buf, pos, end, "mbulk count string")
                    if nl < 0:
                        self._wait(pos, end, self.line_bytes_max + 2, True)
                        return
                    count = self._header(buf, pos, nl, "multibulk length")
                    pos = nl + 1
                    if count <= 0:
                        continue  # "*0" and "*-1" are no command at all, as in Redis
                    if count > self.args_max:
                        raise ProtocolError(
                            f"Protocol error: invalid multibulk length {count}: more than "
                            f"args_max ({self.args_max}) arguments")
                    self._args, self._args_left, self._args_bytes = [], count, 0
                    self._bulk_len = -1
                else:
                    nl = self._line_end(buf, pos, end, "inline request")
                    if nl < 0:
                        self._wait(pos, end, self.line_bytes_max + 2, True)
                        return
                    args = self._inline(buf, pos, nl)
                    pos = nl + 1
                    if args:
                        out.append(args)
                    continue
            pos = self._bulks(buf, pos, end)
            if pos < 0:
                return
            out.append(self._args)
            self._args, self._args_bytes = None, 0

    def take_whole(self, data: bytes, max_commands: int) -> list[list[bytes]] | None:
        """The commands of ``data`` when the parser holds nothing and ``data`` is one or
        more whole, plain multibulk commands (at most ``max_commands`` of them, in at
        most ``fast_window_bytes``); else ``None`` and nothing is consumed: ``feed`` it.

        The connection's fast path for what clients send most (one command per read,
        or a pipeline read whole). It returns exactly what ``feed`` then ``take``
        would, and never an error: anything unusual, valid or not, is ``None``.
        """
        size = len(data)
        if (not size or size > fast_window_bytes or self._buffered or self._args is not None
                or self._error is not None):
            return None
        pieces = data.split(b"\r\n")
        if pieces[-1]:
            return None  # ends inside a command (or is not multibulk)
        complete = len(pieces) - 1
        out: list[list[bytes]] = []
        if size > self._small_bytes_max:
            if self._scan(pieces, complete, out, max_commands) != complete:
                return None
            return out
        # Every argument is shorter than data, so within the byte limits, and its
        # header is in _BULK_HEADERS: only the shape and args_max are left to check.
        # (Anything not starting with a canonical "*<count>" is declined here.)
        counts, header_of = _ARRAY_HEADERS, _BULK_HEADERS.__getitem__
        count = counts.get(pieces[0])
        if count is not None and 2 * count + 1 == complete:  # one command: most reads
            args = pieces[2::2]
            if (count > self.args_max or max_commands < 1
                    or pieces[1:complete:2] != list(map(header_of, map(len, args)))):
                return None
            return [args]
        args_max = self.args_max
        if count is not None and count <= args_max:
            # A pipeline of commands of one length (SET k v, SET k v...): checked
            # column by column, each check one C-level pass over all the commands.
            period = 2 * count + 1
            commands, rest = divmod(complete, period)
            if (not rest and commands <= max_commands
                    and pieces[0:complete:period].count(pieces[0]) == commands):
                columns = [pieces[at:complete:period] for at in range(2, period, 2)]
                if all(pieces[at - 1:complete:period] == list(map(header_of, map(len, column)))
                       for at, column in zip(range(2, period, 2), columns, strict=True)):
                    return list(map(list, zip(*columns, strict=True)))
        i = 0
        while i < complete:
            count = counts.get(pieces[i])
            stop = i + 1 + 2 * count if count is not None else complete + 1
            if stop > complete or count > args_max:
                return None
            args = pieces[i + 2:stop:2]
            if pieces[i + 1:stop:2] != list(map(header_of, map(len, args))):
                return None
            out.append(args)
            i = stop
        return out if len(out) <= max_commands else None

    def _fast_multibulk(self, buf: bytes, pos: int, end: int, out: list[list[bytes]],
                        limit: int) -> int:
        """Parse the complete multibulk commands at ``pos`` from one C-speed
        ``split(b"\\r\\n")`` of a bounded window; the position after the last one.

        Stops at the first thing that is not a plain, complete, valid multibulk command
        (an argument holding CRLF, an inline command, a limit broken, the window's end):
        the exact parser in ``_parse`` takes over from there, and reports any error.
        """
        stop = min(end, pos + fast_window_bytes)
        pieces = (buf if pos == 0 and stop == end else buf[pos:stop]).split(b"\r\n")
        complete = len(pieces) - 1  # the last piece has no CRLF after it (yet)
        return pos + _consumed(pieces, self._scan(pieces, complete, out, limit))

    def _scan(self, pieces: list[bytes], complete: int, out: list[list[bytes]],
              limit: int) -> int:
        """Append to ``out`` the plain multibulk commands made of the first ``complete``
        CRLF-terminated ``pieces`` (up to ``limit`` commands in ``out``); how many
        pieces they took. A command accepted here is exactly what the exact parser
        would read: each argument must be the whole piece between two CRLFs and have
        the announced length, so the CRLF after it is where the exact parser expects
        it."""
        args_max, bulk_max = self.args_max, self.bulk_bytes_max
        request_max = self.request_bytes_max
        counts, header_of = _ARRAY_HEADERS, _BULK_HEADERS.__getitem__
        small = len(_BULK_HEADERS)
        i = 0
        while len(out) < limit and i < complete:
            # Only canonical headers ("*3", "$5") are taken here; anything else, valid
            # or not, is left to the exact parser.
            count = counts.get(pieces[i])
            if count is None or count > args_max or i + 2 * count >= complete:
                break
            args = pieces[i + 2:i + 2 + 2 * count:2]
            lengths = list(map(len, args))
            longest = max(lengths)
            if longest < small:
                expected = list(map(header_of, lengths))
            else:
                expected = [b"$%d" % n for n in lengths]
            if (pieces[i + 1:i + 1 + 2 * count:2] != expected or longest > bulk_max
                    or (count > 1 and sum(lengths) > request_max)):
                break
            out.append(args)
            i += 1 + 2 * count
        return i

    def _bulks(self, buf: bytes, pos: int, end: int) -> int:
        """Read the arguments of the current multibulk command; the position after it,
        or -1 after parking for more input."""
        args = self._args
        while self._args_left:
            size = self._bulk_len
            if size < 0:
                if pos >= end:
                    self._wait(pos, end, 1, False)
                    return -1
                if buf[pos] != 36:  # "$"
                    got = chr(buf[pos]) if 32 < buf[pos] < 127 else f"\\x{buf[pos]:02x}"
                    raise ProtocolError(f"Protocol error: expected '$', got '{got}'")
                nl = self._line_end(buf, pos, end, "bulk count string")
                if nl < 0:
                    self._wait(pos, end, self.line_bytes_max + 2, True)
                    return -1
                size = self._header(buf, pos, nl, "bulk length")
                self._check_bulk(size)
                pos = nl + 1
            stop = pos + size
            if stop + 2 > end:
                self._bulk_len = size
                self._wait(pos, end, size + 2, False)
                return -1
            if buf[stop:stop + 2] != b"\r\n":
                raise ProtocolError("Protocol error: expected CRLF after bulk data")
            args.append(buf[pos:stop])
            pos = stop + 2
            self._args_left -= 1
            self._bulk_len = -1
        return pos

    def _check_bulk(self, size: int) -> None:
        if size < 0:
            raise ProtocolError("Protocol error: invalid bulk length")
        if size > self.bulk_bytes_max:
            raise ProtocolError(
                f"Protocol error: invalid bulk length {size}: larger than bulk_bytes_max "
                f"({self.bulk_bytes_max} bytes)")
        self._args_bytes += size
        if self._args_bytes > self.request_bytes_max:
            raise ProtocolError(
                f"Protocol error: request too big: its arguments exceed request_bytes_max "
                f"({self.request_bytes_max} bytes)")

    def _inline(self, buf: bytes, pos: int, nl: int) -> list[bytes]:
        stop = nl - 1 if nl > pos and buf[nl - 1] == 13 else nl
        if stop - pos > self.line_bytes_max:
            raise ProtocolError(
                f"Protocol error: too big inline request (line_bytes_max is "
                f"{self.line_bytes_max} bytes)")
        line = buf[pos:stop]
        if 34 in line or 39 in line:  # '"' or "'"
            args = split_inline(line)
        else:
            args = line.split()
        if len(args) > self.args_max:
            raise ProtocolError(
                f"Protocol error: too many arguments in inline request (args_max is "
                f"{self.args_max})")
        return args


def _consumed(pieces: list[bytes], count: int) -> int:
    """Bytes taken by the first ``count`` CRLF-terminated pieces."""
    return sum(map(len, pieces[:count])) + 2 * count


def split_inline(line: bytes) -> list[bytes]:
    """Split an inline command line into words with Redis' quoting rules (see the module
    docstring). Raises ``ProtocolError`` on an unbalanced quote, or a closing quote
    followed by something other than whitespace, as Redis does."""
    args: list[bytes] = []
    n = len(line)
    i = 0
    while True:
        i = _SPACES.match(line, i).end()
        if i >= n:
            return args
        word = bytearray()
        while i < n:
            c = line[i]
            if c == 34 or c == 39:  # a quoted part ends the word
                i = (_double_quoted if c == 34 else _single_quoted)(line, i + 1, word)
                if i < n and line[i] not in _WHITESPACE:
                    raise ProtocolError("Protocol error: unbalanced quotes in request")
                break
            if c in _WHITESPACE:
                break
            m = _UNQUOTED_RUN.match(line, i)
            word += m.group()
            i = m.end()
        args.append(bytes(word))


def _double_quoted(line: bytes, i: int, word: bytearray) -> int:
    n = len(line)
    while i < n:
        c = line[i]
        if c == 34:
            return i + 1
        if c == 92 and i + 1 < n:  # backslash
            nxt = line[i + 1]
            if (nxt == 120 and i + 3 < n and line[i + 2] in _HEX_DIGITS
                    and line[i + 3] in _HEX_DIGITS):  # \xHH
                word.append(int(line[i + 2:i + 4], 16))
                i += 4
            else:
                word += _ESCAPES.get(nxt, line[i + 1:i + 2])
                i += 2
            continue
        m = _DOUBLE_QUOTED_RUN.match(line, i)
        if m is None:  # a lone backslash at the very end
            break
        word += m.group()
        i = m.end()
    raise ProtocolError("Protocol error: unbalanced quotes in request")


def _single_quoted(line: bytes, i: int, word: bytearray) -> int:
    n = len(line)
    while i < n:
        c = line[i]
        if c == 39:
            return i + 1
        if c == 92:
            if i + 1 < n and line[i + 1] == 39:
                word.append(39)
                i += 2
            else:
                word.append(92)
                i += 1
            continue
        m = _SINGLE_QUOTED_RUN.match(line, i)
        word += m.group()
        i = m.end()
    raise ProtocolError("Protocol error: unbalanced quotes in request")


# -- replies -------------------------------------------------------------------------

OK = b"+OK\r\n"
PONG = b"+PONG\r\n"
NIL = b"$-1\r\n"
NULL = b"_\r\n"  # RESP3
EMPTY_ARRAY = b"*0\r\n"


def encode_error(message: str) -> bytes:
    """An error reply ``-<message>\\r\\n``. ``message`` starts with the error code
    (``ERR``, ``CLUSTERDOWN``...); CR and LF in it become spaces, as Redis does, so a
    message can never break the reply stream."""
    if "\r" in message or "\n" in message:
        message = message.replace("\r", " ").replace("\n", " ")
    return b"-" + message.encode("utf-8", "backslashreplace") + b"\r\n"


def encode_status(text: str) -> bytes:
    """A simple-string reply ``+<text>\\r\\n`` (CR and LF become spaces)."""
    if "\r" in text or "\n" in text:
        text = text.replace("\r", " ").replace("\n", " ")
    return b"+" + text.encode("utf-8", "backslashreplace") + b"\r\n"


class RespMap(tuple):
    """A map reply, built from ``(key, value)`` pairs: a flat array of keys and values
    in RESP2, a map (``%<count>``) in RESP3."""

    __slots__ = ()


def encode_reply(value: object, resp3: bool = False) -> bytes:
    """The encoding of a result: ``None`` -> null (RESP2 ``$-1``, RESP3 ``_``),
    ``bytes`` -> bulk string, ``int`` -> integer, ``list``/``tuple`` -> array (nested
    freely), ``RespMap`` -> map, ``kvraft.results.Status`` -> simple string,
    ``kvraft.results.CommandError`` -> error. Anything else is a programmer error:
    ``TypeError``.

    Nested arrays are encoded with an explicit stack, not recursion.
    """
    kind = type(value)
    if kind is bytes:
        return b"$%d\r\n%s\r\n" % (len(value), value)
    if value is None:
        return NULL if resp3 else NIL
    if kind is int:
        return b":%d\r\n" % value
    if kind is Status or kind is CommandError:
        return _encode_scalar(value)
    if kind is list:
        return b"*%d\r\n%s" % (len(value), encode_items(value, resp3))
    parts: list[bytes] = []
    _encode_into(value, parts, resp3)
    return b"".join(parts)


_ONLY_BYTES = frozenset((bytes,))


def encode_items(items: list, resp3: bool = False) -> bytes:
    """The encodings of ``items``, one after another: an array's body without its
    ``*<n>`` header (``encode_reply`` of a list is that header and this). The client
    port encodes a long array a slice at a time (``REPLY_STEP_ITEMS``)."""
    if items and set(map(type, items)) == _ONLY_BYTES:
        return _bulk_strings(items)
    parts: list[bytes] = []
    for item in items:
        _encode_into(item, parts, resp3)
    return b"".join(parts)


def _bulk_strings(items: list[bytes]) -> bytes:
    """Bulk strings for a non-empty list of ``bytes`` (KEYS, MGET of keys that all
    exist): the same bytes ``_encode_into`` writes, in C-level passes, three to four
    times as fast. Element by element, the reply to a KEYS of a million keys took
    1.3-1.6 s to encode."""
    lengths = list(map(len, items))
    headers = (map(_BULK_HEADERS.__getitem__, lengths) if max(lengths) < len(_BULK_HEADERS)
               else map(b"$%d".__mod__, lengths))
    # "$<len>" CRLF item CRLF "$<len>" CRLF item ... CRLF: CRLF joins the pieces.
    return b"\r\n".join(chain.from_iterable(zip(headers, items, strict=True))) + b"\r\n"


def _encode_into(value: object, parts: list[bytes], resp3: bool) -> None:
    stack: list[Iterable[object]] = [iter((value,))]
    while stack:
        for item in stack[-1]:
            if isinstance(item, RespMap):
                parts.append(b"%%%d\r\n" % len(item) if resp3 else b"*%d\r\n" % (2 * len(item)))
                stack.append(iter([part for pair in item for part in pair]))
                break
            if isinstance(item, list | tuple):
                parts.append(b"*%d\r\n" % len(item))
                stack.append(iter(item))
                break
            parts.append(NULL if item is None and resp3 else _encode_scalar(item))
        else:
            stack.pop()


def _encode_scalar(value: object) -> bytes:
    if isinstance(value, Status):
        return OK if value == "OK" else encode_status(str(value))
    if isinstance(value, bytes | bytearray | memoryview):
        value = bytes(value)
        return b"$%d\r\n%s\r\n" % (len(value), value)
    if value is None:
        return NIL
    if isinstance(value, int):
        return b":%d\r\n" % value
    if isinstance(value, CommandError):
        return encode_error(value.message)
    raise TypeError(
        f"cannot encode a {type(value).__name__} as a RESP2 reply: results must be None, "
        "bytes, int, list, kvraft.results.Status or kvraft.results.CommandError")


def encode_command(args: Iterable[bytes]) -> bytes:
    """The multibulk request for ``args`` (what a client sends); for tests and tools."""
    args = list(args)
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(parts)

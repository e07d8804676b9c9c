"""Peer wire format: Raft messages as length-prefixed msgpack frames (DESIGN.md section 3).

A frame is a 4-byte big-endian body length followed by a msgpack map. The first frame
each side sends on a link is a hello::

    {"v": 1, "type": "hello", "from": "n1", "cluster": "prod"}

and every later frame is one Raft message::

    {"v": 1, "type": 10, "from": "n1", "to": "n2", "term": 7,   # always present
     "lt": log_term, "i": index, "c": commit, "r": reject, "rh": reject_hint,
     "x": context,                                               # omitted when default
     "e": [[term, index, entry_type, data], ...],                # entries, if any
     "s": {"i": index, "t": term, "d": data,                     # snapshot, if any
           "cs": {"v": voters, "l": learners, "vo": voters_outgoing,
                  "ln": learners_next, "a": auto_leave}}}

Integers are unsigned 64-bit; ids are text; payloads (entry data, context, snapshot
data) are msgpack bin. ``decode_body`` checks every field (presence, type, range, known
kind, no local-only kind, no unknown key, MsgApp entries contiguous after ``index``) and
raises ``FrameError`` on anything else: a peer's bytes never reach the core unchecked.
Adding a field means a new version, negotiated through the hello.

This module is pure (no I/O) so it can be tested and fuzzed without a reactor.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack

from kvraft.raft.types import (
    LOCAL_MESSAGES,
    ConfState,
    Entry,
    EntryType,
    Message,
    MsgType,
    Snapshot,
    SnapshotMetadata,
)

WIRE_VERSION = 1
HELLO = "hello"
frame_header_bytes = 4
frame_body_bytes_limit = (1 << 32) - 1  # what a 4-byte length can say
id_chars_max = 255  # node ids and cluster names; identity rules live in kvraft.certs
uint_max = (1 << 64) - 1

_WIRE_TYPES = {int(t): t for t in MsgType if t not in LOCAL_MESSAGES}
_ENTRY_TYPES = {int(t): t for t in EntryType}
_MESSAGE_KEYS = frozenset({"v", "type", "from", "to", "term", "lt", "i", "e", "c", "s",
                           "r", "rh", "x"})
_HELLO_KEYS = frozenset({"v", "type", "from", "cluster"})
_SNAPSHOT_KEYS = frozenset({"i", "t", "cs", "d"})
_CONF_KEYS = frozenset({"v", "l", "vo", "ln", "a"})
_UNPACK_ERRORS = (ValueError, TypeError, OverflowError, msgpack.UnpackException)


MALFORMED = "malformed"
BAD_VERSION = "unknown version"
OVERSIZED = "oversized"
UNEXPECTED_HELLO = "unexpected hello"


class FrameError(Exception):
    """A frame from a peer is unacceptable; the link that carried it must be closed.

    ``reason`` says what was wrong (for the log line); ``kind`` is a fixed word for the
    bad-frame counter: ``"malformed"``, ``"unknown version"``, ``"oversized"``, or one
    the peer protocol adds (``"wrong sender"``...).
    """

    def __init__(self, reason: str, kind: str = MALFORMED):
        super().__init__(reason)
        self.reason = reason
        self.kind = kind


@dataclass(frozen=True, slots=True)
class Hello:
    """The first frame on a link: who is speaking, for which cluster, in which version."""

    node_id: str
    cluster: str
    version: int = WIRE_VERSION


# -- encoding -------------------------------------------------------------------------------


def encode_message(msg: Message) -> bytes:
    """One Raft message as a complete frame (length prefix included).

    Raises ``ValueError`` for a message that must never be sent (a local-only kind, no
    sender or recipient): that is a programmer error, not a peer's fault.
    """
    kind = msg.type
    if kind in LOCAL_MESSAGES:
        raise ValueError(f"{kind.name} is local to a node and must not be sent to a peer")
    if not msg.to or not msg.frm:
        raise ValueError(f"{kind.name} needs both a sender and a recipient "
                         f"(from={msg.frm!r}, to={msg.to!r})")
    body: dict = {"v": WIRE_VERSION, "type": int(kind), "from": msg.frm, "to": msg.to,
                  "term": msg.term}
    if msg.log_term:
        body["lt"] = msg.log_term
    if msg.index:
        body["i"] = msg.index
    if msg.entries:
        body["e"] = [[e.term, e.index, int(e.type), e.data] for e in msg.entries]
    if msg.commit:
        body["c"] = msg.commit
    if msg.snapshot is not None:
        body["s"] = _snapshot_map(msg.snapshot)
    if msg.reject:
        body["r"] = True
    if msg.reject_hint:
        body["rh"] = msg.reject_hint
    if msg.context:
        body["x"] = msg.context
    return frame(msgpack.packb(body, use_bin_type=True))


def encode_hello(node_id: str, cluster: str) -> bytes:
    """The hello frame announcing ``node_id`` of ``cluster``."""
    return frame(msgpack.packb({"v": WIRE_VERSION, "type": HELLO, "from": node_id,
                                "cluster": cluster}, use_bin_type=True))


def frame(body: bytes) -> bytes:
    """Prefix ``body`` with its 4-byte big-endian length."""
    if len(body) > frame_body_bytes_limit:
        raise ValueError(f"a frame body of {len(body)} bytes does not fit a 4-byte length")
    return len(body).to_bytes(frame_header_bytes, "big") + body


def _snapshot_map(snap: Snapshot) -> dict:
    meta = snap.metadata
    out: dict = {"i": meta.index, "t": meta.term}
    cs = meta.conf_state
    conf: dict = {}
    if cs.voters:
        conf["v"] = list(cs.voters)
    if cs.learners:
        conf["l"] = list(cs.learners)
    if cs.voters_outgoing:
        conf["vo"] = list(cs.voters_outgoing)
    if cs.learners_next:
        conf["ln"] = list(cs.learners_next)
    if cs.auto_leave:
        conf["a"] = True
    if conf:
        out["cs"] = conf
    if snap.data:
        out["d"] = snap.data
    return out


# -- decoding -------------------------------------------------------------------------------


def decode_body(body: bytes) -> Message | Hello:
    """Decode one frame body (without its length prefix); ``FrameError`` if malformed."""
    try:
        obj = msgpack.unpackb(body, raw=False, strict_map_key=True, use_list=True)
    except _UNPACK_ERRORS as e:
        raise FrameError(f"not msgpack ({type(e).__name__}: {e})") from None
    if type(obj) is not dict:
        raise FrameError(f"a frame must be a msgpack map, got {type(obj).__name__}")
    version = obj.get("v")
    if type(version) is not int or version != WIRE_VERSION:
        raise FrameError(f"unknown wire version {version!r:.40} (this node speaks "
                         f"{WIRE_VERSION})", BAD_VERSION)
    kind = obj.get("type")
    if type(kind) is int:
        return _decode_message(obj, kind)
    if kind == HELLO:
        return _decode_hello(obj)
    raise FrameError(f"unknown frame type {kind!r:.40}")


def decode_message(body: bytes) -> Message:
    """Decode a frame body that must be a Raft message (not a hello)."""
    decoded = decode_body(body)
    if not isinstance(decoded, Message):
        raise FrameError("unexpected hello: a link sends one hello, first",
                         UNEXPECTED_HELLO)
    return decoded


def _decode_hello(obj: dict) -> Hello:
    _check_keys(obj, _HELLO_KEYS, "hello")
    return Hello(_text(obj, "from"), _text(obj, "cluster"))


def _decode_message(obj: dict, kind_number: int) -> Message:
    kind = _WIRE_TYPES.get(kind_number)
    if kind is None:
        if kind_number in MsgType._value2member_map_:
            raise FrameError(f"{MsgType(kind_number).name} is local to a node and never "
                             f"travels between nodes")
        raise FrameError(f"unknown message type {kind_number}")
    _check_keys(obj, _MESSAGE_KEYS, "message")
    msg = Message(kind, to=_text(obj, "to"), frm=_text(obj, "from"),
                  term=_uint(obj, "term", required=True))
    get = obj.get
    if "lt" in obj:
        msg.log_term = _uint(obj, "lt")
    if "i" in obj:
        msg.index = _uint(obj, "i")
    if "c" in obj:
        msg.commit = _uint(obj, "c")
    if "rh" in obj:
        msg.reject_hint = _uint(obj, "rh")
    if "r" in obj:
        reject = get("r")
        if type(reject) is not bool:
            raise FrameError(f"field 'r' (reject) must be a boolean, got {reject!r}")
        msg.reject = reject
    if "x" in obj:
        msg.context = _bytes(get("x"), "x")
    if "e" in obj:
        msg.entries = _entries(get("e"))
        if kind is MsgType.MsgApp:
            _check_contiguous(msg)
    if "s" in obj:
        msg.snapshot = _snapshot(get("s"))
    return msg


def _entries(raw: object) -> list[Entry]:
    if type(raw) is not list:
        raise FrameError("field 'e' (entries) must be an array")
    entries = []
    append = entries.append
    entry_types = _ENTRY_TYPES
    for item in raw:
        if type(item) is not list or len(item) != 4:
            raise FrameError("an entry must be an array [term, index, type, data]")
        term, index, type_number, data = item
        if type(term) is not int or type(index) is not int or not (
                0 <= term <= uint_max and 0 <= index <= uint_max):
            raise FrameError(f"entry term and index must be unsigned 64-bit integers, got "
                             f"{term!r}, {index!r}")
        entry_type = entry_types.get(type_number) if type(type_number) is int else None
        if entry_type is None:
            raise FrameError(f"unknown entry type {type_number!r}")
        if type(data) is not bytes:
            raise FrameError("entry data must be msgpack bin")
        append(Entry(term, index, entry_type, data))
    return entries


def _check_contiguous(msg: Message) -> None:
    # MsgApp's entries follow the entry at msg.index with no gap: a hole would make the
    # follower's log disagree with the leader's while both think they match.
    expected = msg.index + 1
    for entry in msg.entries:
        if entry.index != expected:
            raise FrameError(f"MsgApp entries must be contiguous from index {msg.index + 1}; "
                             f"found index {entry.index} where {expected} belongs")
        expected += 1


def _snapshot(raw: object) -> Snapshot:
    if type(raw) is not dict:
        raise FrameError("field 's' (snapshot) must be a map")
    _check_keys(raw, _SNAPSHOT_KEYS, "snapshot")
    meta = SnapshotMetadata(index=_uint(raw, "i", required=True),
                            term=_uint(raw, "t", required=True))
    if "cs" in raw:
        meta.conf_state = _conf_state(raw["cs"])
    data = _bytes(raw["d"], "snapshot data") if "d" in raw else b""
    return Snapshot(meta, data)


def _conf_state(raw: object) -> ConfState:
    if type(raw) is not dict:
        raise FrameError("snapshot field 'cs' (conf state) must be a map")
    _check_keys(raw, _CONF_KEYS, "conf state")
    auto_leave = raw.get("a", False)
    if type(auto_leave) is not bool:
        raise FrameError("conf state field 'a' (auto_leave) must be a boolean")
    return ConfState(voters=_ids(raw, "v"), learners=_ids(raw, "l"),
                     voters_outgoing=_ids(raw, "vo"), learners_next=_ids(raw, "ln"),
                     auto_leave=auto_leave)


def _ids(raw: dict, key: str) -> tuple[str, ...]:
    value = raw.get(key, [])
    if type(value) is not list:
        raise FrameError(f"conf state field {key!r} must be an array of node ids")
    for item in value:
        if type(item) is not str or not 0 < len(item) <= id_chars_max:
            raise FrameError(f"conf state field {key!r} holds an invalid node id {item!r}")
    return tuple(value)


def _check_keys(obj: dict, allowed: frozenset, what: str) -> None:
    if not allowed.issuperset(obj):
        unknown = sorted(str(k) for k in obj if k not in allowed)
        raise FrameError(f"unknown {what} field(s) {', '.join(unknown)} in wire version "
                         f"{WIRE_VERSION}")


def _text(obj: dict, key: str) -> str:
    value = obj.get(key)
    if type(value) is not str or not 0 < len(value) <= id_chars_max:
        what = "missing" if value is None else f"invalid ({value!r:.80})"
        raise FrameError(f"field {key!r} is {what}: expected 1 to {id_chars_max} characters")
    return value


def _uint(obj: dict, key: str, required: bool = False) -> int:
    value = obj.get(key)
    if type(value) is not int or not 0 <= value <= uint_max:
        if value is None and not required:
            raise FrameError(f"field {key!r} is nil: omit a default field instead")
        what = "missing" if value is None else f"{value!r:.80}"
        raise FrameError(f"field {key!r} must be an unsigned 64-bit integer, got {what}")
    return value


def _bytes(value: object, what: str) -> bytes:
    if type(value) is not bytes:
        raise FrameError(f"field {what!r} must be msgpack bin, got {type(value).__name__}")
    return value


class FrameBuffer:
    """Cuts a byte stream into frame bodies.

    ``frame_bytes_max`` bounds one frame's body; it may be changed between feeds (a link
    allows only a small hello before the peer is authenticated). A frame over the
    limit raises ``FrameError`` as soon as its header arrives, before its body is
    buffered, so a peer cannot make us hold more than ``frame_bytes_max`` plus one read.
    """

    def __init__(self, frame_bytes_max: int):
        self.frame_bytes_max = frame_bytes_max
        self._buffer = bytearray()
        self._need = frame_header_bytes  # bytes the next step waits for

    @property
    def buffered_bytes(self) -> int:
        """Bytes received but not yet returned as a frame."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data``; return the bodies of the frames it completed, in order."""
        buf = self._buffer
        if buf:
            buf += data
            if len(buf) < self._need:
                return []
            source: bytes | bytearray = buf
        else:
            source = data  # nothing pending: cut frames straight out of the read
        bodies: list[bytes] = []
        offset, end = 0, len(source)
        limit = self.frame_bytes_max
        # One copy per body: a memoryview slice is free, bytes() copies it once.
        with memoryview(source) as view:
            while end - offset >= frame_header_bytes:
                size = int.from_bytes(view[offset:offset + frame_header_bytes], "big")
                if size > limit:
                    raise FrameError(f"frame of {size} bytes exceeds frame_bytes_max "
                                     f"({limit})", OVERSIZED)
                start = offset + frame_header_bytes
                if end - start < size:
                    self._need = frame_header_bytes + size
                    break
                bodies.append(bytes(view[start:start + size]))
                offset = start + size
            else:
                self._need = frame_header_bytes
        if source is buf:
            del buf[:offset]
        elif offset < end:
            buf += data[offset:]
        return bodies

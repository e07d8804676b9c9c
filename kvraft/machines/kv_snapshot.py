"""The ``kv`` machine's snapshot format: writing it from a frozen map, reading it back.

A snapshot body is a stream of msgpack objects (chunk boundaries carry no meaning):

1. a header map ``{"format": "kvraft.kv", "version": 1, "index": I, "revision": R,
   "count": N}``: the last applied log index, the global revision counter and the
   number of keys;
2. then arrays ``[key1, item1, key2, item2, ...]``, ``N`` pairs in all, where each key
   is a bin and each item a bin made of the key's mod revision (8 bytes, big-endian
   unsigned) followed by the value. That is the machine's in-memory layout, so neither
   side copies or re-encodes values.

Pairs come in the map's iteration order, which every replica shares, and arrays close
after ``BATCH_BYTES`` of keys and values, so replicas that applied the same commands
write identical bytes whatever their chunk size. Batching pairs into arrays keeps most
per-key work in C on both sides.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from operator import itemgetter

import msgpack
from zope.interface import implementer

from kvraft.interfaces import ISnapshotView

__all__ = [
    "SNAPSHOT_FORMAT", "SNAPSHOT_VERSION", "KvSnapshotView", "SnapshotContents",
    "SnapshotError", "read_snapshot",
]

SNAPSHOT_FORMAT = "kvraft.kv"
SNAPSHOT_VERSION = 1
"""Bump on any change to the body layout; ``read_snapshot`` refuses other versions."""

REVISION_BYTES = 8
"""Size of the big-endian mod-revision prefix of every stored item."""

BATCH_BYTES = 256 * 1024
"""Key and value bytes per array. Part of the format (it fixes the bytes written), so
a change needs a new ``SNAPSHOT_VERSION``; readers accept any batch size."""

_revision_prefix = itemgetter(slice(0, REVISION_BYTES))


class SnapshotError(ValueError):
    """A kv snapshot body that cannot be restored; the message says why."""


@implementer(ISnapshotView)
class KvSnapshotView:
    """A consistent, immutable view of the ``kv`` machine (provides ``ISnapshotView``).

    ``items`` is a dict that nobody mutates while this view is alive (see
    ``KeySpace.freeze``): keep the view only as long as you need it, since the machine
    diverts its writes into a slower overlay until the view and every ``chunks()``
    iterator are garbage.
    """

    __slots__ = ("index", "revision", "count", "_items", "_chunk_bytes", "__weakref__")

    def __init__(self, items: dict[bytes, bytes], *, index: int, revision: int,
                 chunk_bytes: int) -> None:
        self.index = index
        """Log index of the last command the view reflects."""
        self.revision = revision
        """The machine's global revision counter at that point."""
        self.count = len(items)
        """Number of keys in the view."""
        self._items = items
        self._chunk_bytes = chunk_bytes

    def chunks(self) -> Iterator[bytes]:
        """The snapshot body in chunks of exactly ``chunk_bytes`` (the last one shorter).
        Reads only the frozen map, so it may run in any thread; it may be iterated more
        than once. The bytes do not depend on ``chunk_bytes``."""
        limit = self._chunk_bytes
        pending = bytearray()
        for record in self._records():
            pending += record
            if len(pending) < limit:
                continue
            start, end = 0, len(pending) - len(pending) % limit
            with memoryview(pending) as view:
                while start < end:
                    yield bytes(view[start:start + limit])
                    start += limit
            del pending[:end]
        if pending:
            yield bytes(pending)

    def _records(self) -> Iterator[bytes]:
        """The header, then the pairs in arrays of about ``BATCH_BYTES``."""
        packer = msgpack.Packer(use_bin_type=True)
        yield packer.pack({
            "format": SNAPSHOT_FORMAT, "version": SNAPSHOT_VERSION, "index": self.index,
            "revision": self.revision, "count": self.count,
        })
        batch: list[bytes] = []
        size = 0
        for key, item in self._items.items():
            batch.append(key)
            batch.append(item)
            size += len(key) + len(item)
            if size >= BATCH_BYTES:
                yield packer.pack(batch)
                batch = []
                size = 0
        if batch:
            yield packer.pack(batch)


class SnapshotContents:
    """What ``read_snapshot`` found: the map (in stream order) and the header fields."""

    __slots__ = ("items", "index", "revision")

    def __init__(self, items: dict[bytes, bytes], index: int, revision: int) -> None:
        self.items = items
        self.index = index
        self.revision = revision


def _header_int(header: dict, name: str) -> int:
    value = header.get(name)
    if type(value) is not int or value < 0:
        raise SnapshotError(
            f"kv snapshot header field {name!r} must be a non-negative integer, got "
            f"{value!r}: the snapshot is corrupt; take a new one or restore another")
    return value


def _check_header(header: object) -> tuple[int, int, int]:
    """(index, revision, count) from a header record, or SnapshotError."""
    if type(header) is not dict or header.get("format") != SNAPSHOT_FORMAT:
        raise SnapshotError(
            "not a kv state-machine snapshot: the first record is not a kvraft.kv header "
            "(was it written by another state-machine plugin? check state_machine.plugin)")
    version = header.get("version")
    if version != SNAPSHOT_VERSION:
        raise SnapshotError(
            f"kv snapshot format version {version!r} is not supported: this kvraft reads "
            f"version {SNAPSHOT_VERSION}; restore it with the kvraft release that wrote it")
    return (_header_int(header, "index"), _header_int(header, "revision"),
            _header_int(header, "count"))


def _check_batch(batch: object, revision: int) -> None:
    """SnapshotError unless ``batch`` is a well-formed array of key/item pairs whose mod
    revisions lie in ``1..revision``. Every check runs in C, one pass each."""
    if type(batch) is not list or not batch or len(batch) % 2:
        raise SnapshotError(
            "kv snapshot is corrupt: expected an array of key/value pairs after the header")
    if not set(map(type, batch)) <= {bytes}:
        raise SnapshotError("kv snapshot is corrupt: a key or value is not a byte string")
    items = batch[1::2]
    if min(map(len, items)) < REVISION_BYTES:
        raise SnapshotError("kv snapshot is corrupt: a value lacks its 8-byte revision")
    prefixes = list(map(_revision_prefix, items))
    if min(prefixes) == bytes(REVISION_BYTES) or max(prefixes) > revision.to_bytes(
            REVISION_BYTES, "big"):
        raise SnapshotError(
            f"kv snapshot is corrupt: a key's mod revision is 0 or above the header's "
            f"revision counter {revision}")


def read_snapshot(chunks: Iterable[bytes], buffer_bytes_max: int) -> SnapshotContents:
    """Parse and validate a whole snapshot body. Raises ``SnapshotError`` (a
    ``ValueError``) saying what is wrong: bad header, unsupported version, truncation,
    corrupt record, wrong key count or a repeated key. ``buffer_bytes_max`` bounds the
    memory held by one undecoded record."""
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=buffer_bytes_max)
    header: tuple[int, int, int] | None = None
    items: dict[bytes, bytes] = {}
    fed = 0
    pairs_seen = 0
    for chunk in chunks:
        if not isinstance(chunk, bytes | bytearray | memoryview):
            raise SnapshotError(
                f"kv snapshot chunks must be bytes, got {type(chunk).__name__}")
        try:
            unpacker.feed(chunk)
        except msgpack.BufferFull:
            raise SnapshotError(
                f"kv snapshot record exceeds {buffer_bytes_max} bytes: the snapshot is "
                "corrupt, or raise state_machine.snapshot_buffer_bytes_max") from None
        fed += len(chunk)
        try:
            for record in unpacker:
                if header is None:
                    header = _check_header(record)
                    continue
                _check_batch(record, header[1])
                pairs_seen += len(record) // 2
                pairs = iter(record)
                items.update(zip(pairs, pairs, strict=True))
        except SnapshotError:
            raise
        except (ValueError, msgpack.UnpackException) as e:
            raise SnapshotError(f"kv snapshot is corrupt (not valid msgpack): {e}") from e
    if header is None:
        raise SnapshotError("kv snapshot is empty: no header record; the stream was cut short")
    if unpacker.tell() != fed:
        raise SnapshotError(
            f"kv snapshot is truncated: {fed - unpacker.tell()} bytes of an unfinished "
            "record at the end")
    index, revision, count = header
    if pairs_seen != count or len(items) != count:
        raise SnapshotError(
            f"kv snapshot holds {pairs_seen} pairs ({len(items)} distinct keys) but its "
            f"header says {count} keys: it is truncated or corrupt")
    return SnapshotContents(items, index, revision)

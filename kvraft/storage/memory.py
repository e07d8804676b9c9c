"""The "memory" backend: the storage contract held in memory (tests, simulation).

Nothing is durable: ``sync`` is a no-op and ``close`` forgets everything. Values go
through msgpack exactly as in the file backends, so a test sees the same types
(tuples come back as lists) whichever backend it runs on.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import msgpack
from zope.interface import implementer

from kvraft.interfaces import ILogStore, ISnapshotStore, ISnapshotWriter, IStableStore
from kvraft.raft.types import Entry, HardState, SnapshotMetadata
from kvraft.storage.base import Storage, parse_options
from kvraft.storage.logindex import IndexedLog

DEFAULTS = {"snapshot_chunk_bytes": 1 << 20}


@implementer(ILogStore)
class MemoryLogStore(IndexedLog):
    """Every entry kept as an ``Entry`` object; ``sync`` does nothing."""

    def __init__(self) -> None:
        super().__init__(cache_bytes_max=None)

    def append(self, entries: list[Entry]) -> None:
        """Append contiguous entries, discarding a conflicting suffix first."""
        if not entries:
            return
        if self._check_append(entries):
            self._index_truncate(entries[0].index)
        self._index_append(list(entries))

    def sync(self) -> None:
        """Nothing to make durable."""

    def compact(self, index: int) -> None:
        """Discard entries up to ``index``; a no-op when already compacted that far."""
        if index > self.last_index():
            raise ValueError(f"compact({index}) is beyond the last index "
                             f"{self.last_index()}")
        if index > self._snap_index:
            self._index_compact(index)

    def reset(self, index: int, term: int) -> None:
        """Discard the whole log; it restarts after ``index``/``term``."""
        self._index_reset(index, term)

    def close(self) -> None:
        """Forget everything."""
        self._index_reset(0, 0)


@implementer(IStableStore)
class MemoryStableStore:
    """Hard state and metadata in memory."""

    def __init__(self) -> None:
        self._hard_state = HardState()
        self._metadata = msgpack.packb({})

    def hard_state(self) -> HardState:
        """A copy of the last saved hard state."""
        hs = self._hard_state
        return HardState(term=hs.term, vote=hs.vote, commit=hs.commit)

    def save_hard_state(self, hard_state: HardState) -> None:
        """Keep a copy of ``hard_state``."""
        self._hard_state = HardState(term=hard_state.term, vote=hard_state.vote,
                                     commit=hard_state.commit)

    def metadata(self) -> dict:
        """A fresh copy of the saved metadata."""
        return msgpack.unpackb(self._metadata, raw=False)

    def save_metadata(self, metadata: dict) -> None:
        """Keep ``metadata`` (it must be msgpack-able, as on disk)."""
        if not isinstance(metadata, dict):
            raise TypeError(f"metadata must be a dict, got {type(metadata).__name__}")
        self._metadata = msgpack.packb(metadata)

    def close(self) -> None:
        """Nothing to release."""


@implementer(ISnapshotWriter)
class MemorySnapshotWriter:
    """Collects chunks; ``commit`` publishes them to the store."""

    def __init__(self, store: MemorySnapshotStore, metadata: SnapshotMetadata):
        self._store = store
        self._metadata = copy.deepcopy(metadata)
        self._chunks: list[bytes] | None = []

    def write(self, chunk: bytes) -> None:
        """Append ``chunk`` to the body."""
        if self._chunks is None:
            raise ValueError("write() after commit() or abort()")
        self._chunks.append(bytes(chunk))

    def commit(self) -> SnapshotMetadata:
        """Publish the snapshot; return its metadata."""
        if self._chunks is None:
            raise ValueError("commit() after commit() or abort()")
        body, self._chunks = b"".join(self._chunks), None
        self._store._publish(self._metadata, body)
        return copy.deepcopy(self._metadata)

    def abort(self) -> None:
        """Drop the partial snapshot."""
        self._chunks = None


@implementer(ISnapshotStore)
class MemorySnapshotStore:
    """Snapshots kept as bytes, keyed by (index, term)."""

    def __init__(self, chunk_bytes: int = DEFAULTS["snapshot_chunk_bytes"]):
        self._chunk_bytes = chunk_bytes
        self._snapshots: dict[tuple[int, int], tuple[SnapshotMetadata, bytes]] = {}

    def _publish(self, metadata: SnapshotMetadata, body: bytes) -> None:
        self._snapshots[(metadata.index, metadata.term)] = (metadata, body)

    def create(self, metadata: SnapshotMetadata) -> MemorySnapshotWriter:
        """Start a snapshot described by ``metadata``."""
        return MemorySnapshotWriter(self, metadata)

    def list(self) -> list[SnapshotMetadata]:
        """Metadata of every snapshot, newest first."""
        return [copy.deepcopy(self._snapshots[key][0])
                for key in sorted(self._snapshots, reverse=True)]

    def latest(self) -> SnapshotMetadata | None:
        """Metadata of the newest snapshot, or None."""
        if not self._snapshots:
            return None
        return copy.deepcopy(self._snapshots[max(self._snapshots)][0])

    def open(self, index: int) -> Iterator[bytes]:
        """The body of the newest snapshot at ``index``, in chunks."""
        keys = [key for key in self._snapshots if key[0] == index]
        if not keys:
            raise KeyError(f"no snapshot at index {index}")
        body = self._snapshots[max(keys)][1]
        step = self._chunk_bytes
        return iter([body[i:i + step] for i in range(0, len(body), step)])

    def retain(self, count: int) -> None:
        """Delete all but the newest ``count`` snapshots."""
        if count < 0:
            raise ValueError(f"retain({count}): count must be >= 0")
        for key in sorted(self._snapshots, reverse=True)[count:]:
            del self._snapshots[key]

    def close(self) -> None:
        """Nothing to release."""


def open_storage(data_dir: str | None = None, options: dict | None = None) -> Storage:
    """A fresh in-memory storage; ``data_dir`` is ignored."""
    settings = parse_options("memory", options, DEFAULTS)
    return Storage(MemoryLogStore(), MemoryStableStore(),
                   MemorySnapshotStore(settings["snapshot_chunk_bytes"]))

"""The ``state`` file of a file backend's ``data_dir``: hard state, node metadata and
where the log starts.

Format: ``b"KVRFSTAT"``, ``<II`` (payload length, CRC32 of the payload), then a msgpack
map. It is only ever replaced whole (write temp, fsync, rename, fsync the directory),
so it is either the old or the new version after a crash, never a mix.
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Callable
from zlib import crc32

import msgpack

from kvraft.raft.types import HardState
from kvraft.storage import fsutil
from kvraft.storage.errors import RESTORE_ADVICE, StorageError

STATE_MAGIC = b"KVRFSTAT"
STATE_VERSION = 1
_HEADER = struct.Struct("<8sII")


class StateFile:
    """The durable fields, mirrored in memory; ``save()`` writes them all.

    ``snap_index``/``snap_term``: the log starts after this entry (the last compacted
    one). ``generation``: bumped by ``reset``; WAL segments of older generations are
    leftovers of the log that an installed snapshot replaced. ``commit_dirty`` is True
    when the commit index in memory is newer than on disk (persisted lazily).

    ``durable_index``, set by the log store, caps the commit index written: the file
    never claims a commit index beyond the log that is durable (whatever order the
    driver saves in), so on open ``commit > last_index`` means entries were lost.

    A lock serialises ``save()``: the log store and the stable store share this object
    and the node may call them from different threads (never one store from two).
    """

    def __init__(self, path: str):
        self.path = path
        self.hard_state = HardState()
        self.metadata: dict = {}
        self.snap_index = 0
        self.snap_term = 0
        self.generation = 0
        self.commit_dirty = False
        self.durable_index: Callable[[], int] | None = None
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: str) -> StateFile:
        """The state in ``path``; ``StorageError`` if it exists but is unreadable,
        ``FileNotFoundError`` if it does not exist."""
        with open(path, "rb") as f:
            data = f.read()
        state = cls(path)
        try:
            fields = _decode(data)
            hs = fields["hard_state"]
            state.hard_state = HardState(term=hs[0], vote=hs[1], commit=hs[2])
            state.metadata = fields["metadata"]
            state.snap_index, state.snap_term = fields["log_start"]
            state.generation = fields["generation"]
        except (ValueError, KeyError, TypeError, IndexError) as e:
            raise StorageError(
                f"the state file {path} is unreadable: {e}. It holds this node's Raft "
                f"term and vote, so the node cannot safely restart without it. To "
                f"recover, {RESTORE_ADVICE}.") from None
        return state

    def save(self) -> None:
        """Atomically replace the file with the fields in memory (two fsyncs)."""
        with self._lock:
            hs = self.hard_state
            commit = hs.commit
            if self.durable_index is not None:
                commit = max(min(commit, self.durable_index()), self.snap_index)
            payload = msgpack.packb({
                "version": STATE_VERSION,
                "hard_state": [hs.term, hs.vote, commit],
                "metadata": self.metadata,
                "log_start": [self.snap_index, self.snap_term],
                "generation": self.generation,
            }, use_bin_type=True)
            data = _HEADER.pack(STATE_MAGIC, len(payload), crc32(payload)) + payload
            fsutil.atomic_write(self.path, data)
            self.commit_dirty = commit < hs.commit  # write the rest once it is durable

    def flush(self) -> None:
        """Write a lazily kept commit index, if any."""
        if self.commit_dirty:
            self.save()


def _decode(data: bytes) -> dict:
    if len(data) < _HEADER.size:
        raise ValueError(f"it is {len(data)} bytes long, shorter than its header")
    magic, length, check = _HEADER.unpack_from(data)
    if magic != STATE_MAGIC:
        raise ValueError("it is not a kvraft state file (bad magic)")
    payload = data[_HEADER.size:]
    if len(payload) != length:
        raise ValueError(f"its payload is {len(payload)} bytes, the header says {length}")
    if crc32(payload) != check:
        raise ValueError("its checksum does not match")
    fields = msgpack.unpackb(payload, raw=False)
    if not isinstance(fields, dict):
        raise ValueError("its payload is not a map")
    if fields.get("version") != STATE_VERSION:
        raise ValueError(f"format version {fields.get('version')!r} is not supported "
                         f"(this kvraft reads {STATE_VERSION})")
    return fields


def state_path(data_dir: str) -> str:
    """``data_dir/state``."""
    return os.path.join(data_dir, "state")

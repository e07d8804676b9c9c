"""Helpers shared by the storage tests (imported by name: pytest puts this directory on
sys.path, and the name is unique to avoid clashing with other test directories)."""

from __future__ import annotations

import os

from twisted.logger import LogLevel, formatEvent

from kvraft.raft.types import Entry
from kvraft.storage import memory, sqlite, wal
from kvraft.storage.records import SEGMENT_HEADER, encode_record

OPENERS = {
    "memory": memory.open_storage,
    "wal": wal.open_storage,
    "sqlite": sqlite.open_storage,
}
BACKENDS = tuple(OPENERS)
FILE_BACKENDS = ("wal", "sqlite")

SMALL = {
    "memory": {},
    "wal": {"segment_bytes_max": 2048, "cache_bytes_max": 1024},
    "sqlite": {"cache_bytes_max": 1024},
}
"""Small limits so that a few hundred entries roll segments and spill out of the cache."""


def warnings_in(events: list[dict]) -> list[str]:
    """The formatted text of warning-or-worse log events."""
    return [formatEvent(e) for e in events
            if e.get("log_level") in (LogLevel.warn, LogLevel.error, LogLevel.critical)]


def entry_data(index: int, term: int) -> bytes:
    """Deterministic, variable-length data for the entry at ``index``/``term``."""
    return f"{index}:{term}:".encode() + bytes((index * 7 + term * 13) % 97)


def make_entries(first: int, count: int, term: int) -> list[Entry]:
    """``count`` entries from ``first`` in ``term`` with ``entry_data``."""
    return [Entry(term=term, index=i, data=entry_data(i, term))
            for i in range(first, first + count)]


def write_log(data_dir: str, count: int = 40) -> list[Entry]:
    """A synced WAL of ``count`` entries in one segment (closed again); the entries."""
    storage = wal.open_storage(data_dir)
    entries = make_entries(1, count, term=1)
    storage.log.append(entries)
    storage.close()
    return entries


def segment_path(data_dir: str, first_index: int = 1) -> str:
    """The WAL segment of ``data_dir`` that starts at ``first_index``."""
    return os.path.join(data_dir, "wal", f"{first_index:020d}.seg")


def record_offsets(entries: list[Entry]) -> list[int]:
    """Where each entry's record starts in a segment that starts with ``entries[0]``,
    then where the last one ends."""
    offsets, pos = [], SEGMENT_HEADER.size
    for entry in entries:
        offsets.append(pos)
        pos += len(encode_record(entry))
    return offsets + [pos]


class Harness:
    """Opens one backend over one directory; ``reopen`` closes and opens again."""

    def __init__(self, backend: str, data_dir: str, options: dict | None = None):
        self.backend = backend
        self.data_dir = data_dir
        self.options = SMALL[backend] if options is None else options
        self.storage = OPENERS[backend](data_dir, self.options)

    @property
    def durable(self) -> bool:
        return self.backend in FILE_BACKENDS

    def reopen(self):
        self.storage.close()
        self.storage = OPENERS[self.backend](self.data_dir, self.options)
        return self.storage

    def close(self) -> None:
        if self.storage is not None:
            self.storage.close()
            self.storage = None

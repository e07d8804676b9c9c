"""The "sqlite" backend: the log, hard state and metadata in one SQLite database,
``data_dir/kvraft.sqlite3`` (WAL journal mode, ``synchronous=FULL``), plus the file
snapshot store in ``data_dir/snap/``.

``append`` runs inside an open transaction that ``sync`` commits (one commit, one fsync
of SQLite's WAL for every append since the last sync: group commit); a truncating append
is atomic with its new entries because both sit in that transaction. Each row carries a
CRC32 of the entry, checked whenever the row is read. Terms and the newest entries are
mirrored in memory (``IndexedLog``) so the core's reads rarely touch SQLite.
"""

from __future__ import annotations

import os
import sqlite3
import struct
import threading
from collections.abc import Sequence
from zlib import crc32

import msgpack
from zope.interface import implementer

from kvraft.interfaces import ILogStore, IStableStore
from kvraft.raft.types import Entry, EntryType, HardState
from kvraft.storage import fsutil
from kvraft.storage.base import Storage, parse_options
from kvraft.storage.errors import RESTORE_ADVICE, CorruptLogError, StorageError
from kvraft.storage.logindex import ENTRY_OBJECT_BYTES, IndexedLog, cache_cost
from kvraft.storage.snapshots import FileSnapshotStore

DEFAULTS = {
    "cache_bytes_max": 64 * 1024 * 1024,
    "snapshot_chunk_bytes": 1024 * 1024,
}
DB_NAME = "kvraft.sqlite3"
CACHE_WARM_BYTES_MAX = 4 * 1024 * 1024
"""How much of the log tail ``open`` reads back into the cache."""
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS log (
    idx  INTEGER PRIMARY KEY,
    term INTEGER NOT NULL,
    type INTEGER NOT NULL,
    data BLOB NOT NULL,
    crc  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
"""
_CRC_PREFIX = struct.Struct("<QQB")


def entry_crc(index: int, term: int, kind: int, data: bytes) -> int:
    """CRC32 over an entry's fields, stored with its row."""
    return crc32(data, crc32(_CRC_PREFIX.pack(index, term, kind)))


class _Database:
    """The connection and the transaction discipline shared by both stores.

    Writes run in a transaction opened on demand (``write``); ``commit`` ends it (one
    fsync). A lock serialises use of the connection: the node may read the log on the
    reactor thread while its writer thread commits.
    """

    def __init__(self, path: str):
        self.path = path
        self.lock = threading.RLock()
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.in_transaction = False
        self.failed: StorageError | None = None  # after a failed write nothing is trusted
        mode = self.conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise StorageError(f"{path}: SQLite refused WAL journal mode (got {mode!r}); "
                               "put data_dir on a local filesystem")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.executescript(_SCHEMA)

    def query(self, sql: str, params: tuple = ()) -> list:
        """All rows of a read."""
        with self.lock:
            return self.conn.execute(sql, params).fetchall()

    def get(self, key: str, default):
        """A msgpack value of the ``meta`` table."""
        rows = self.query("SELECT value FROM meta WHERE key = ?", (key,))
        return default if not rows else msgpack.unpackb(rows[0][0], raw=False)

    def write(self, sql: str, params: tuple | list = (), many: bool = False) -> None:
        """Run a write inside the open transaction (opening one if needed)."""
        with self.lock:
            if self.failed is not None:
                raise self.failed
            if not self.in_transaction:
                self.conn.execute("BEGIN IMMEDIATE")
                self.in_transaction = True
            if many:
                self.conn.executemany(sql, params)
            else:
                self.conn.execute(sql, params)

    def put(self, key: str, value) -> None:
        """Set a msgpack value of the ``meta`` table (in the open transaction)."""
        self.write("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                   (key, msgpack.packb(value, use_bin_type=True)))

    def commit(self) -> None:
        """Commit the open transaction, if any (one fsync of SQLite's WAL)."""
        with self.lock:
            if self.failed is not None:
                raise self.failed
            if self.in_transaction:
                self.conn.execute("COMMIT")
                self.in_transaction = False

    def close(self) -> None:
        """Commit (unless a write failed) and close the connection."""
        with self.lock:
            try:
                if self.failed is None:
                    self.commit()
            finally:
                self.conn.close()


@implementer(ILogStore)
class SqliteLogStore(IndexedLog):
    """The log in the ``log`` table; see the module docstring."""

    def __init__(self, db: _Database, cache_bytes_max: int = DEFAULTS["cache_bytes_max"]):
        snap_index, snap_term = db.get("log_start", [0, 0])
        super().__init__(snap_index, snap_term, cache_bytes_max)
        self._db = db
        self._closed = False
        self._load()

    def __repr__(self) -> str:
        return f"<SqliteLogStore {self._db.path} [{self.first_index()}, {self.last_index()}]>"

    def _load(self) -> None:
        expected = self._snap_index + 1
        previous = self._snap_term
        rows = self._db.query("SELECT idx, term FROM log WHERE idx > ? ORDER BY idx",
                              (self._snap_index,))
        for index, term in rows:
            if index != expected or term < previous:
                what = (f"entry {expected} is missing" if index != expected else
                        f"entry {index} has term {term}, below the term {previous} before it")
                raise CorruptLogError(f"the log in {self._db.path} is corrupt: {what}. To "
                                      f"recover, {RESTORE_ADVICE}.")
            self._terms.append(term)
            expected += 1
            previous = term
        self._clear_cache(self.last_index() + 1)
        if self._cache_bytes_max is None:
            return
        # Warm a small tail only (see the WAL's _warm_cache for why).
        lo, budget = self.last_index() + 1, min(self._cache_bytes_max, CACHE_WARM_BYTES_MAX)
        for (size,) in self._db.query(
                "SELECT length(data) + ? FROM log WHERE idx > ? ORDER BY idx DESC LIMIT ?",
                (ENTRY_OBJECT_BYTES, self._snap_index, budget // ENTRY_OBJECT_BYTES + 1)):
            if size > budget:
                break
            budget -= size
            lo -= 1
        if lo <= self.last_index():
            entries = self._read_uncached(lo, self.last_index() + 1, None)
            self._clear_cache(lo)
            self._cache.extend(entries)
            self._cache_bytes = sum(map(cache_cost, entries))

    def _read_uncached(self, lo: int, hi: int, max_bytes: int | None) -> list[Entry]:
        out: list[Entry] = []
        used = 0
        rows = self._db.query(
            "SELECT idx, term, type, data, crc FROM log WHERE idx >= ? AND idx < ? "
            "ORDER BY idx", (lo, hi))
        for index, term, kind, data, check in rows:
            if index != lo + len(out) or entry_crc(index, term, kind, data) != check:
                raise CorruptLogError(
                    f"the log in {self._db.path} is corrupt at entry {lo + len(out)} (found "
                    f"on read: missing or failing its checksum). To recover, "
                    f"{RESTORE_ADVICE}.")
            entry = Entry(term=term, index=index, type=EntryType(kind), data=data)
            out.append(entry)
            used += entry.size()
            if max_bytes is not None and used > max_bytes:
                break
        return out

    def append(self, entries: Sequence[Entry]) -> None:
        """Append inside the open transaction (deleting a conflicting suffix in the same
        transaction); durable at the next ``sync``."""
        if not entries:
            return
        self._check_open()
        truncate = self._check_append(entries)
        db = self._db
        try:
            if truncate:
                db.write("DELETE FROM log WHERE idx >= ?", (entries[0].index,))
            db.write("INSERT INTO log (idx, term, type, data, crc) VALUES (?, ?, ?, ?, ?)",
                     [(e.index, e.term, int(e.type), e.data,
                       entry_crc(e.index, e.term, int(e.type), e.data)) for e in entries],
                     many=True)
        except sqlite3.Error as e:
            raise _error("append to", db, e) from None
        if truncate:
            self._index_truncate(entries[0].index)
        self._index_append(entries)

    def sync(self) -> None:
        """Commit the open transaction (one fsync). May block."""
        self._check_open()
        try:
            self._db.commit()
        except sqlite3.Error as e:
            raise _error("commit to", self._db, e) from None

    def compact(self, index: int) -> None:
        """Delete entries up to ``index``, keeping its term; committed at once."""
        self._check_open()
        if index > self.last_index():
            raise ValueError(f"compact({index}) is beyond the last index "
                             f"{self.last_index()}")
        if index <= self._snap_index:
            return
        term = self.term(index)
        try:
            self._db.put("log_start", [index, term])
            self._db.write("DELETE FROM log WHERE idx <= ?", (index,))
            self._db.commit()
        except sqlite3.Error as e:
            raise _error("compact", self._db, e) from None
        self._index_compact(index)

    def reset(self, index: int, term: int) -> None:
        """Delete the whole log; it restarts after ``index``/``term``. Durable."""
        self._check_open()
        try:
            self._db.put("log_start", [index, term])
            self._db.write("DELETE FROM log")
            self._db.commit()
        except sqlite3.Error as e:
            raise _error("reset the log in", self._db, e) from None
        self._index_reset(index, term)

    def close(self) -> None:
        """Commit pending appends; the database closes with the storage."""
        if not self._closed:
            self._closed = True
            self._db.commit()

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError(f"{self!r} is closed")


@implementer(IStableStore)
class SqliteStableStore:
    """Hard state and metadata in the ``meta`` table."""

    def __init__(self, db: _Database, log_start: int = 0):
        self._db = db
        term, vote, commit = db.get("hard_state", [0, "", 0])
        # An installed snapshot's entries are committed by definition; reset() does not
        # touch the hard state, so a restart right after one may find a lower commit.
        self._hard_state = HardState(term=term, vote=vote, commit=max(commit, log_start))
        self._metadata = db.get("metadata", {})

    def hard_state(self) -> HardState:
        """The last saved hard state (a copy)."""
        hs = self._hard_state
        return HardState(term=hs.term, vote=hs.vote, commit=hs.commit)

    def save_hard_state(self, hard_state: HardState) -> None:
        """Write the row; commit now when term or vote changed, else with the next
        ``sync`` (a lazily persisted commit index is safe: see IStableStore)."""
        old = self._hard_state
        self._hard_state = HardState(term=hard_state.term, vote=hard_state.vote,
                                     commit=hard_state.commit)
        if old == self._hard_state:
            return
        try:
            self._db.put("hard_state", [hard_state.term, hard_state.vote, hard_state.commit])
            if hard_state.term != old.term or hard_state.vote != old.vote:
                self._db.commit()
        except sqlite3.Error as e:
            raise _error("save the hard state to", self._db, e) from None

    def metadata(self) -> dict:
        """The saved node metadata (a fresh copy)."""
        return msgpack.unpackb(msgpack.packb(self._metadata, use_bin_type=True), raw=False)

    def save_metadata(self, metadata: dict) -> None:
        """Persist ``metadata``; committed at once."""
        if not isinstance(metadata, dict):
            raise TypeError(f"metadata must be a dict, got {type(metadata).__name__}")
        copy = msgpack.unpackb(msgpack.packb(metadata, use_bin_type=True), raw=False)
        try:
            self._db.put("metadata", copy)
            self._db.commit()
        except sqlite3.Error as e:
            raise _error("save metadata to", self._db, e) from None
        self._metadata = copy

    def close(self) -> None:
        """Commit a lazily kept commit index; closing the connection is the storage's
        job (both stores share it)."""
        self._db.commit()


def _error(action: str, db: _Database, error: sqlite3.Error) -> StorageError:
    # The open transaction may hold half of an operation: refuse everything from now
    # on (nothing more is committed) and let the node restart from what is on disk.
    db.failed = StorageError(
        f"could not {action} {db.path}: {error}. The store stops accepting writes; fix "
        "the cause (disk full? failing disk?) and restart the node: it recovers from "
        "what was committed.")
    return db.failed


def open_storage(data_dir: str, options: dict | None = None) -> Storage:
    """Open (creating if needed) a SQLite storage under ``data_dir``.

    Options: ``cache_bytes_max``, ``snapshot_chunk_bytes``.
    """
    settings = parse_options("sqlite", options, DEFAULTS)
    try:
        os.makedirs(data_dir, exist_ok=True)
        lock = fsutil.lock_dir(data_dir)
    except BlockingIOError as e:
        raise StorageError(str(e)) from None
    except OSError as e:
        raise StorageError(f"could not use {data_dir} as data_dir: {e}. Check its path "
                           "and permissions.") from None
    db = None
    try:
        db = _Database(os.path.join(data_dir, DB_NAME))
        version = db.get("schema_version", None)
        if version is None:
            db.put("schema_version", SCHEMA_VERSION)
            db.commit()
        elif version != SCHEMA_VERSION:
            raise StorageError(f"{db.path} has schema version {version}; this kvraft "
                               f"reads version {SCHEMA_VERSION}: run a matching kvraft")
        log_store = SqliteLogStore(db, settings["cache_bytes_max"])
        stable = SqliteStableStore(db, log_start=log_store.first_index() - 1)
        snapshots = FileSnapshotStore(os.path.join(data_dir, "snap"),
                                      settings["snapshot_chunk_bytes"])
    except (sqlite3.DatabaseError, OSError) as e:
        if db is not None:
            db.conn.close()
        fsutil.unlock_dir(lock)
        raise StorageError(
            f"could not open or read {os.path.join(data_dir, DB_NAME)}: {e}. If it is a "
            "permission or disk problem, fix that and restart; if the file is damaged, "
            f"{RESTORE_ADVICE}.") from None
    except BaseException:
        if db is not None:
            db.conn.close()
        fsutil.unlock_dir(lock)
        raise

    def release() -> None:
        try:
            db.close()
        finally:
            fsutil.unlock_dir(lock)

    return Storage(log_store, stable, snapshots, release=release)

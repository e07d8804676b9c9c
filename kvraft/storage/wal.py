"""The "wal" backend (the default): a segmented write-ahead log plus a ``state`` file.

Layout under ``data_dir`` (operators rely on it)::

    wal/00000000000000000001.seg   segments, named by their first index (see records.py)
    snap/<index>-<term>.snap       snapshots (see snapshots.py)
    state                          hard state, node metadata, log start (statefile.py)
    lock                           held while a process has the directory open

Durability rules, each one a crash-safety argument:

* ``append`` writes each batch with one ``pwrite``; ``sync`` is one ``fdatasync`` for
  everything since the last sync (group commit). A batch over ``UNSYNCED_BYTES_MAX``
  (segment.py) is written in parts, each synced before the next is written: a crash
  tears at most that much.
* The last segment reserves space ahead of its records (``preallocate_bytes`` at a time,
  ``posix_fallocate``), so that a sync flushes data without a metadata journal commit.
  The reserve reads as zeros; it is cut off when the log rolls past the segment, on
  close, and on open. On open, a bad record in the last segment is a torn write only if
  what a crash can do explains it (segment.py, ``Segment._is_torn``); else the node
  refuses to start.
* A segment is rolled at ``segment_bytes_max``: the old one is fdatasynced and the new
  one is published with a complete, fsynced header (temp file, rename, fsync dir), so on
  open only the last segment may have a torn tail, and every segment has a valid header.
* A truncation (``append`` replacing a conflicting suffix) is durable before the new
  entries are written: later segments are unlinked newest first, each unlink made
  durable (directory fsync) before the next, then the cut segment is ftruncated and
  fdatasynced; a crash part way leaves a shorter log without holes. Without that, new
  records could reach the disk while the cut did not, and stale entries would reappear
  behind them.
* ``compact`` syncs the log, then records the new log start in ``state``, then unlinks
  whole segments below it; leftovers of an interrupted compaction are removed on open.
* ``reset`` first writes ``state`` with the new log start and a new generation, then
  replaces the segments; segments of an older generation found on open are leftovers.
* ``save_hard_state`` rewrites ``state`` (fsync, rename, fsync dir) only when the term or
  the vote changed; a commit-only change is kept in memory and written with the next
  ``state`` write or at ``close``.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Sequence

from twisted.logger import Logger
from zope.interface import implementer

from kvraft.interfaces import IFdSyncLogStore, IStableStore
from kvraft.raft.types import Entry, HardState
from kvraft.storage import fsutil
from kvraft.storage.base import Storage, parse_options
from kvraft.storage.errors import RESTORE_ADVICE, CorruptLogError, StorageError
from kvraft.storage.logindex import ENTRY_OBJECT_BYTES, IndexedLog, cache_cost
from kvraft.storage.records import encode_record, parse_segment_name
from kvraft.storage.segment import Segment, storage_error
from kvraft.storage.snapshots import FileSnapshotStore
from kvraft.storage.statefile import StateFile, state_path

log = Logger()

DEFAULTS = {
    "segment_bytes_max": 64 * 1024 * 1024,
    "cache_bytes_max": 16 * 1024 * 1024,
    "snapshot_chunk_bytes": 1024 * 1024,
    "preallocate_bytes": 1024 * 1024,
}
"""``segment_bytes_max``: roll to a new segment past this size. ``cache_bytes_max``:
memory for the newest entries kept as objects (older ones are read from disk). The core
reads the tail it has not yet sent, had acknowledged or applied: at 100k writes/s of
16-byte values that is a few MB a second, so 16 MiB keeps seconds of it; more only
costs memory (64 MiB of it was 15% of a node holding 1M 100-byte values).
``preallocate_bytes``: space the last segment reserves ahead of its records at a time
(0: none). Each reservation costs one slower sync; a larger one only holds more disk."""
CACHE_WARM_BYTES_MAX = 4 * 1024 * 1024
"""How much of the log tail ``open`` reads back into the cache."""


@implementer(IFdSyncLogStore)
class WalLogStore(IndexedLog):
    """The log in segment files under ``data_dir/wal``; see the module docstring."""

    def __init__(self, directory: str, state: StateFile,
                 segment_bytes_max: int = DEFAULTS["segment_bytes_max"],
                 cache_bytes_max: int = DEFAULTS["cache_bytes_max"],
                 preallocate_bytes: int = 0):
        super().__init__(state.snap_index, state.snap_term, cache_bytes_max)
        self._dir = directory
        self._state = state
        self._segment_bytes_max = segment_bytes_max
        self._preallocate_bytes = preallocate_bytes
        self._segments: list[Segment] = []
        self._firsts: list[int] = []  # segment first indexes, for bisect
        self._failed: StorageError | None = None
        self._synced_index = 0  # entries up to here are durable
        os.makedirs(directory, exist_ok=True)
        try:
            self._open_segments()
        except BaseException:
            for segment in self._segments:
                segment.close()
            raise

    def __repr__(self) -> str:
        return (f"<WalLogStore {self._dir} [{self.first_index()}, {self.last_index()}] "
                f"segments={len(self._segments)}>")

    # -- open ----------------------------------------------------------------------------

    def _open_segments(self) -> None:
        found: list[Segment] = []
        for name in sorted(os.listdir(self._dir)):
            path = os.path.join(self._dir, name)
            if name.endswith(".tmp"):
                os.unlink(path)  # a segment that was never published
                continue
            first = parse_segment_name(name)
            if first is None:
                log.warn("ignoring {path}: not a WAL segment name", path=path)
                continue
            self._segments.append(segment := Segment.open(path))
            found.append(segment)
            if segment.first_index != first:
                raise CorruptLogError(
                    f"WAL segment {path} is corrupt at byte offset 0: its header says it "
                    f"starts at index {segment.first_index}, its name says {first}. To "
                    f"recover, {RESTORE_ADVICE}.")
        self._segments = self._current_generation(found)
        self._drop_compacted_segments()
        if not self._segments:
            self._segments = [Segment.create(self._dir, self._state.generation,
                                             self._state.snap_index + 1)]
        self._firsts = [s.first_index for s in self._segments]
        self._scan_segments()
        self._reserve_ahead(self._segments[-1])
        self._synced_index = self.last_index()
        self._state.durable_index = lambda: self._synced_index

    def _current_generation(self, found: list[Segment]) -> list[Segment]:
        current = []
        for segment in found:
            if segment.generation == self._state.generation:
                current.append(segment)
            elif segment.generation < self._state.generation:
                log.info("removing {path}: left over from a log replaced by a snapshot",
                         path=segment.path)
                segment.remove()
            else:
                raise CorruptLogError(
                    f"WAL segment {segment.path} belongs to log generation "
                    f"{segment.generation}, newer than the state file's "
                    f"{self._state.generation}: the state file is older than the log "
                    f"(restored from a backup?). To recover, {RESTORE_ADVICE}.")
        return current

    def _drop_compacted_segments(self) -> None:
        # Whole segments below the log start are leftovers of an interrupted compact().
        start = self._state.snap_index + 1
        while len(self._segments) > 1 and self._segments[1].first_index <= start:
            log.info("removing {path}: compacted", path=self._segments[0].path)
            self._segments.pop(0).remove()

    def _scan_segments(self) -> None:
        snap_index, snap_term = self._state.snap_index, self._state.snap_term
        first = self._segments[0]
        if first.first_index > snap_index + 1:
            raise CorruptLogError(
                f"the log should start at index {snap_index + 1} but its first segment "
                f"{first.path} starts at {first.first_index}: entries {snap_index + 1} to "
                f"{first.first_index - 1} are missing. To recover, {RESTORE_ADVICE}.")
        previous_term = 0
        expected = first.first_index
        for n, segment in enumerate(self._segments):
            if segment.first_index != expected:
                raise CorruptLogError(
                    f"WAL segment {segment.path} starts at index {segment.first_index}, "
                    f"but the segment before it ends at {expected - 1}: a segment is "
                    f"missing or stale. To recover, {RESTORE_ADVICE}.")
            terms = segment.scan(n == len(self._segments) - 1, previous_term).terms
            if terms:
                previous_term = terms[-1]
            self._adopt_terms(segment, terms)
            expected = segment.last_index + 1
        if self.last_index() < snap_index:
            raise CorruptLogError(
                f"the log in {self._dir} ends at index {self.last_index()}, below its start "
                f"{snap_index + 1} recorded in {self._state.path}. To recover, "
                f"{RESTORE_ADVICE}.")
        if self._snap_term != snap_term:
            raise CorruptLogError(
                f"entry {snap_index} in {self._dir} has term {self._snap_term}, but "
                f"{self._state.path} says the log starts after term {snap_term}. To "
                f"recover, {RESTORE_ADVICE}.")
        self._clear_cache(self.last_index() + 1)
        self._warm_cache()

    def _adopt_terms(self, segment: Segment, terms) -> None:
        # Entries at or below the log start stay in the first segment (only whole
        # segments are deleted) but are not part of the log; the term of the start
        # entry itself is checked against the state file.
        skip = self._state.snap_index + 1 - segment.first_index
        if skip > 0:
            if skip <= len(terms):
                self._snap_term = terms[skip - 1]
            terms = terms[skip:]
        self._terms.extend(terms)

    def _warm_cache(self) -> None:
        # Only a small tail: followers' next entries and uncommitted entries sit there.
        # Warming all of cache_bytes_max would decode up to hundreds of thousands of
        # entries that a restart may never read (replay reads them in bounded chunks).
        budget = min(self._cache_bytes_max or 0, CACHE_WARM_BYTES_MAX)
        lo = self.last_index() + 1
        for segment in reversed(self._segments):
            k = segment.count
            while k > 0 and lo > self.first_index():
                cost = segment._offset(k) - segment.offsets[k - 1] + ENTRY_OBJECT_BYTES
                if cost > budget:
                    break
                budget -= cost
                k -= 1
                lo -= 1
            if k > 0 or lo <= self.first_index():
                break
        if lo <= self.last_index():
            entries = self._read_uncached(lo, self.last_index() + 1, None)
            self._clear_cache(lo)
            self._cache.extend(entries)
            self._cache_bytes = sum(map(cache_cost, entries))

    # -- ILogStore -----------------------------------------------------------------------

    def _read_uncached(self, lo: int, hi: int, max_bytes: int | None) -> list[Entry]:
        out: list[Entry] = []
        used = 0
        n = bisect.bisect_right(self._firsts, lo) - 1
        while lo < hi:
            segment = self._segments[n]
            seg_hi = min(hi, segment.last_index + 1)
            budget = None if max_bytes is None else max_bytes - used
            entries = segment.read(lo, seg_hi, budget)
            out.extend(entries)
            if max_bytes is not None:
                used += sum(e.size() for e in entries)
                if used > max_bytes:
                    break
            lo = seg_hi
            n += 1
        return out

    def append(self, entries: Sequence[Entry]) -> None:
        """Append contiguous entries; a conflicting suffix is first cut durably (one
        fdatasync, plus one directory fsync per dropped segment: only when truncating)."""
        if not entries:
            return
        self._check_usable()
        if self._check_append(entries):
            self._truncate(entries[0].index)
        records = [encode_record(entry) for entry in entries]
        segment = self._segments[-1]
        try:
            self._write(segment, entries, records)
        except OSError as e:
            raise self._fail("append to", self._segments[-1].path, e) from None
        self._index_append(entries)

    def _write(self, segment: Segment, entries: Sequence[Entry], records: list[bytes]) -> None:
        batch = bytearray()
        offsets: list[int] = []
        pos = segment.end
        for entry, record in zip(entries, records, strict=True):
            if pos + len(record) > self._segment_bytes_max and (segment.count or offsets):
                segment.write(batch, offsets)
                segment = self._roll(entry.index)
                batch, offsets, pos = bytearray(), [], segment.end
            offsets.append(pos)
            batch += record
            pos += len(record)
        segment.write(batch, offsets)

    def _roll(self, first_index: int) -> Segment:
        # The old segment is made durable first (without its reserve): only the last
        # segment may be torn or end in zeros.
        self._segments[-1].trim()
        self._segments[-1].sync()
        segment = self._reserve_ahead(
            Segment.create(self._dir, self._state.generation, first_index))
        self._segments.append(segment)
        self._firsts.append(first_index)
        return segment

    def _truncate(self, index: int) -> None:
        n = bisect.bisect_right(self._firsts, index) - 1
        try:
            # Newest first, each unlink durable before the next: a crash part way leaves
            # a shorter but gap-free log, never a hole with stale segments behind it.
            while len(self._segments) > n + 1:
                self._segments[-1].remove()
                self._segments.pop()
                self._firsts.pop()
                fsutil.fsync_dir(self._dir)
            self._segments[n].truncate(index)
        except OSError as e:
            raise self._fail("truncate", self._segments[n].path, e) from None
        self._index_truncate(index)
        self._synced_index = min(self._synced_index, index - 1)

    def sync(self) -> None:
        """One fdatasync for everything appended since the last sync (older segments
        were synced when the log rolled past them). May block."""
        self._check_usable()
        segment = self._segments[-1]
        try:
            segment.sync()
        except OSError as e:
            raise self._fail("fsync", segment.path, e) from None
        self._synced_index = self.last_index()

    def sync_fd(self) -> int | None:
        """The last segment's descriptor if it has unsynced writes (``IFdSyncLogStore``:
        older segments were synced when the log rolled past them)."""
        self._check_usable()
        segment = self._segments[-1]
        return segment.fd if segment.dirty else None

    def mark_synced(self) -> None:
        """The last segment was fdatasynced by the caller after the last append."""
        self._segments[-1].synced()
        self._synced_index = self.last_index()

    def compact(self, index: int) -> None:
        """Discard entries up to ``index`` (kept readable: ``term(index)``); whole
        segments below it are deleted. A no-op when already compacted that far."""
        self._check_usable()
        if index > self.last_index():
            raise ValueError(f"compact({index}) is beyond the last index "
                             f"{self.last_index()}")
        if index <= self._snap_index:
            return
        # The state file must never claim a log start beyond what is durable in the log.
        self.sync()
        self._save_log_start(index, self.term(index), self._state.generation)
        self._index_compact(index)
        # Unlinks need no directory fsync: a segment that comes back after a crash lies
        # below the recorded log start and is removed on open. A failed unlink is
        # harmless for the same reason.
        while len(self._segments) > 1 and self._segments[1].first_index <= index + 1:
            segment = self._segments.pop(0)
            self._firsts.pop(0)
            try:
                segment.remove()
            except OSError as e:
                log.warn("could not remove compacted WAL segment {path}: {error}; it will "
                         "be removed when the log is next opened", path=segment.path,
                         error=str(e))

    def reset(self, index: int, term: int) -> None:
        """Replace the whole log by an empty one starting after ``index``/``term``.
        Durable when it returns."""
        self._check_usable()
        # The new log start and generation are the commit point: from here on, every
        # segment of the old generation is a leftover (removed on open after a crash).
        generation = self._state.generation + 1
        self._save_log_start(index, term, generation)
        try:
            for segment in self._segments:
                segment.remove()
            self._segments = [self._reserve_ahead(
                Segment.create(self._dir, generation, index + 1))]
        except OSError as e:
            raise self._fail("reset the log in", self._dir, e) from None
        self._firsts = [index + 1]
        self._index_reset(index, term)
        self._synced_index = index

    def close(self) -> None:
        """Sync and close every segment file (idempotent)."""
        try:
            if self._failed is None and self._segments:
                segment = self._segments[-1]
                try:
                    segment.trim()
                except OSError as e:
                    raise self._fail("trim", segment.path, e) from None
                self.sync()
        finally:
            for segment in self._segments:
                segment.close()
            self._segments = []
            self._failed = self._failed or StorageError(f"{self!r} is closed")

    def _reserve_ahead(self, segment: Segment) -> Segment:
        """Let ``segment``, the last one, reserve space as it is written."""
        segment.preallocate_bytes = self._preallocate_bytes
        segment.size_max = self._segment_bytes_max
        return segment

    # -- failure handling ----------------------------------------------------------------

    def _save_log_start(self, index: int, term: int, generation: int) -> None:
        state = self._state
        old = state.snap_index, state.snap_term, state.generation
        state.snap_index, state.snap_term, state.generation = index, term, generation
        try:
            state.save()
        except OSError as e:
            # Keep memory as on disk: the stable store may still write this file.
            state.snap_index, state.snap_term, state.generation = old
            raise self._fail("write", state.path, e) from None

    def _fail(self, action: str, path: str, error: OSError) -> StorageError:
        self._failed = storage_error(action, path, error)
        log.error("{error}", error=str(self._failed))
        return self._failed

    def _check_usable(self) -> None:
        if self._failed is not None:
            raise self._failed

    def check_invariants(self) -> None:
        """The IndexedLog invariants plus: segments are contiguous and only the last one
        may hold unsynced writes."""
        super().check_invariants()
        for before, after in zip(self._segments, self._segments[1:], strict=False):
            assert before.last_index + 1 == after.first_index, (before, after)
            assert not before.dirty, before
        assert self._firsts == [s.first_index for s in self._segments]
        assert self._segments[-1].last_index == self.last_index()


@implementer(IStableStore)
class WalStableStore:
    """Hard state and metadata in ``data_dir/state``."""

    def __init__(self, state: StateFile):
        self._state = state
        self._closed = False

    def hard_state(self) -> HardState:
        """The last saved hard state (a copy)."""
        hs = self._state.hard_state
        return HardState(term=hs.term, vote=hs.vote, commit=hs.commit)

    def save_hard_state(self, hard_state: HardState) -> None:
        """Rewrite ``state`` when term or vote changed; otherwise keep the new commit
        index in memory until the next write or ``close`` (safe: see IStableStore)."""
        state = self._state
        old = state.hard_state
        state.hard_state = HardState(term=hard_state.term, vote=hard_state.vote,
                                     commit=hard_state.commit)
        if hard_state.term != old.term or hard_state.vote != old.vote:
            state.save()
        elif hard_state.commit != old.commit:
            state.commit_dirty = True

    def metadata(self) -> dict:
        """The saved node metadata (a fresh copy)."""
        return _copy(self._state.metadata)

    def save_metadata(self, metadata: dict) -> None:
        """Persist ``metadata`` atomically."""
        if not isinstance(metadata, dict):
            raise TypeError(f"metadata must be a dict, got {type(metadata).__name__}")
        self._state.metadata = _copy(metadata)
        self._state.save()

    def close(self) -> None:
        """Write a lazily kept commit index (idempotent)."""
        if not self._closed:
            self._closed = True
            self._state.flush()


def _copy(value: dict) -> dict:
    import msgpack

    return msgpack.unpackb(msgpack.packb(value, use_bin_type=True), raw=False)


def open_storage(data_dir: str, options: dict | None = None) -> Storage:
    """Open (creating if needed) a WAL storage under ``data_dir``.

    Options: ``segment_bytes_max``, ``cache_bytes_max``, ``snapshot_chunk_bytes``,
    ``preallocate_bytes``.
    Raises ``StorageError`` (operator-facing) when the directory is in use, or when the
    log or the state file is corrupt.
    """
    settings = parse_options("wal", options, DEFAULTS, zero_ok=frozenset({"preallocate_bytes"}))
    try:
        os.makedirs(data_dir, exist_ok=True)
        lock = fsutil.lock_dir(data_dir)
    except BlockingIOError as e:
        raise StorageError(str(e)) from None
    except OSError as e:
        raise StorageError(f"could not use {data_dir} as data_dir: {e}. Check its path "
                           "and permissions.") from None
    try:
        state = _load_state(data_dir)
        log_store = WalLogStore(os.path.join(data_dir, "wal"), state,
                                settings["segment_bytes_max"], settings["cache_bytes_max"],
                                settings["preallocate_bytes"])
        try:
            _check_commit(state, log_store)
            snapshots = FileSnapshotStore(os.path.join(data_dir, "snap"),
                                          settings["snapshot_chunk_bytes"])
        except BaseException:
            log_store.close()
            raise
    except OSError as e:
        fsutil.unlock_dir(lock)
        raise StorageError(
            f"could not open the storage in {data_dir}: {e}. Check that the directory is "
            "writable by this user and the disk has space, then restart.") from None
    except BaseException:
        fsutil.unlock_dir(lock)
        raise
    return Storage(log_store, WalStableStore(state), snapshots,
                   release=lambda: fsutil.unlock_dir(lock))


def _load_state(data_dir: str) -> StateFile:
    path = state_path(data_dir)
    try:
        return StateFile.load(path)
    except FileNotFoundError:
        pass
    wal_dir = os.path.join(data_dir, "wal")
    if os.path.isdir(wal_dir) and any(parse_segment_name(n) is not None
                                      for n in os.listdir(wal_dir)):
        raise StorageError(
            f"{data_dir} holds WAL segments but no state file ({path}): the node's term "
            f"and vote are lost, so it must not rejoin with this log (it could vote twice "
            f"in one term). To recover, {RESTORE_ADVICE}.")
    state = StateFile(path)
    state.save()  # before any segment exists: segments never exist without a state file
    return state


def _check_commit(state: StateFile, log_store: WalLogStore) -> None:
    hs = state.hard_state
    if hs.commit > log_store.last_index():
        raise CorruptLogError(
            f"{state.path} says entries up to {hs.commit} are committed, but the log in "
            f"{data_dir_of(state)} ends at {log_store.last_index()}: committed entries were "
            f"lost (a disk or filesystem that does not honour fsync?). To recover, "
            f"{RESTORE_ADVICE}.")
    if hs.commit < state.snap_index:  # a snapshot's entries are committed by definition
        state.hard_state = HardState(term=hs.term, vote=hs.vote, commit=state.snap_index)


def data_dir_of(state: StateFile) -> str:
    """The data_dir holding ``state``."""
    return os.path.dirname(state.path) or "."

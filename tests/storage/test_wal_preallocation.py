"""The WAL's reserved space: the last segment preallocates ahead of its records so that a
sync flushes data only, and a crash inside that space is told apart from corruption."""

from __future__ import annotations

import os

import pytest
from storage_support import (
    make_entries,
    record_offsets,
    segment_path,
    warnings_in,
    write_log,
)

from kvraft.raft.types import Entry
from kvraft.storage import CorruptLogError, fsutil, segment
from kvraft.storage.wal import open_storage

RESERVE = 64 * 1024


def records_end(entries) -> int:
    """Where the records of ``entries`` (one segment, from its first entry) end."""
    return record_offsets(entries)[-1]


def test_the_last_segment_writes_into_space_it_reserved_ahead(tmp_path):
    data_dir = str(tmp_path / "data")
    storage = open_storage(data_dir, {"preallocate_bytes": RESERVE})
    path = segment_path(data_dir)
    entries = []
    sizes = []
    for first in range(1, 200, 20):
        batch = make_entries(first, 20, term=1)
        storage.log.append(batch)
        storage.log.sync()
        entries += batch
        sizes.append(os.path.getsize(path))
    try:
        assert records_end(entries) < RESERVE  # all of it fits the first reservation
        assert len(set(sizes)) == 1  # so the size never moved as the records grew
        assert sizes[0] > records_end(entries)
        assert storage.log.entries(1, 201) == entries
    finally:
        storage.close()
    assert os.path.getsize(path) == records_end(entries)  # close gives the reserve back
    storage = open_storage(data_dir, {"preallocate_bytes": RESERVE})
    assert storage.log.entries(1, 201) == entries
    storage.close()


def test_without_preallocation_the_file_ends_at_its_last_record(tmp_path):
    data_dir = str(tmp_path / "data")
    storage = open_storage(data_dir, {"preallocate_bytes": 0})
    entries = make_entries(1, 30, term=1)
    storage.log.append(entries)
    storage.log.sync()
    try:
        assert os.path.getsize(segment_path(data_dir)) == records_end(entries)
    finally:
        storage.close()


def test_rolling_cuts_the_reserve_off_the_segment_left_behind(tmp_path):
    data_dir = str(tmp_path / "data")
    options = {"segment_bytes_max": 1500, "preallocate_bytes": 1024}
    storage = open_storage(data_dir, options)
    entries = make_entries(1, 120, term=1)
    for k in range(0, 120, 10):
        storage.log.append(entries[k:k + 10])
        storage.log.sync()
    wal_dir = os.path.join(data_dir, "wal")
    names = sorted(os.listdir(wal_dir))
    firsts = [int(n[:20]) for n in names] + [121]
    try:
        assert len(names) > 3
        for n, name in enumerate(names[:-1]):
            held = entries[firsts[n] - 1:firsts[n + 1] - 1]
            assert os.path.getsize(os.path.join(wal_dir, name)) == records_end(held), name
        assert os.path.getsize(os.path.join(wal_dir, names[-1])) > records_end(
            entries[firsts[-2] - 1:])  # the last one still holds its reserve
    finally:
        storage.close()
    storage = open_storage(data_dir, options)
    assert storage.log.entries(1, 121) == entries
    storage.close()


def punch_hole(data_dir: str, entries, k: int) -> tuple[int, int]:
    """Zero the first whole sector at or after entry ``k + 1``'s record, as a page the
    kernel never wrote back would read; returns (offset of the record the hole starts
    in, index of the last entry before it)."""
    starts = record_offsets(entries)[:-1]
    hole = -(-starts[k] // segment.SECTOR_BYTES) * segment.SECTOR_BYTES
    assert hole + segment.SECTOR_BYTES < records_end(entries), "needs data behind it"
    torn = max(i for i, s in enumerate(starts) if s <= hole)
    with open(segment_path(data_dir), "r+b") as f:
        f.seek(hole)
        f.write(bytes(segment.SECTOR_BYTES))
    return starts[torn], torn  # entries 1..torn survive


def test_a_hole_in_the_last_unsynced_write_is_a_torn_tail(tmp_path, log_events):
    # The kernel writes an unsynced write's pages back in any order: a crash can leave
    # one unwritten (zeros) with later records of the same write intact behind it.
    data_dir = str(tmp_path / "data")
    entries = write_log(data_dir, 60)
    torn_at, survivors = punch_hole(data_dir, entries, 40)
    storage = open_storage(data_dir)
    try:
        assert storage.log.last_index() == survivors
        assert storage.log.entries(1, survivors + 1) == entries[:survivors]
        warned = warnings_in(log_events)
        assert any("torn record" in w and f"byte offset {torn_at}" in w
                   for w in warned), warned
        assert os.path.getsize(segment_path(data_dir)) == torn_at
    finally:
        storage.close()


def test_a_hole_further_from_the_end_than_an_unsynced_write_reaches_is_corruption(
        tmp_path, monkeypatch):
    data_dir = str(tmp_path / "data")
    entries = write_log(data_dir, 60)
    torn_at, _ = punch_hole(data_dir, entries, 10)
    size = os.path.getsize(segment_path(data_dir))
    monkeypatch.setattr(segment, "UNSYNCED_BYTES_MAX", (size - torn_at) // 2)
    with pytest.raises(CorruptLogError, match=f"byte offset {torn_at}"):
        open_storage(data_dir)
    assert os.path.getsize(segment_path(data_dir)) == size  # nothing was cut


def test_a_batch_over_the_unsynced_limit_is_written_in_synced_parts(tmp_path, monkeypatch):
    limit = 1024
    monkeypatch.setattr(segment, "UNSYNCED_BYTES_MAX", limit)
    data_dir = str(tmp_path / "data")
    storage = open_storage(data_dir)
    unsynced: dict[int, int] = {}
    worst = [0]
    real_pwrite, real_fdatasync = os.pwrite, fsutil.fdatasync

    def pwrite(fd, data, offset):
        unsynced[fd] = unsynced.get(fd, 0) + len(data)
        worst[0] = max(worst[0], unsynced[fd])
        return real_pwrite(fd, data, offset)

    def fdatasync(fd):
        unsynced[fd] = 0
        real_fdatasync(fd)

    monkeypatch.setattr(fsutil.os, "pwrite", pwrite)
    monkeypatch.setattr(fsutil, "fdatasync", fdatasync)
    entries = make_entries(1, 150, term=1)
    entries.append(Entry(term=1, index=151, data=bytes(range(256)) * 20))  # > limit alone
    try:
        storage.log.append(entries)  # one call, several KiB
        assert records_end(entries) > 5 * limit
        assert 0 < worst[0] <= limit
        storage.log.sync()
    finally:
        storage.close()
    storage = open_storage(data_dir)
    assert storage.log.entries(1, 152) == entries
    storage.close()


def test_preallocate_bytes_may_be_zero_but_not_negative(tmp_path):
    open_storage(str(tmp_path / "a"), {"preallocate_bytes": 0}).close()
    with pytest.raises(ValueError, match="'preallocate_bytes' must be 0 or a positive"):
        open_storage(str(tmp_path / "b"), {"preallocate_bytes": -1})


def test_a_record_starting_in_a_sector_that_was_not_written_back_is_a_torn_tail(
        tmp_path, log_events):
    # The sector holding the end of the last synced record and the start of the next,
    # unsynced, one was never written again: from that record on it reads as zeros,
    # while a later sector of the same write made it to the disk.
    data_dir = str(tmp_path / "data")
    entries = write_log(data_dir, 60)
    starts = record_offsets(entries)[:-1]
    k = next(i for i in range(30, 50) if starts[i] % segment.SECTOR_BYTES
             and starts[i] % segment.SECTOR_BYTES < segment.SECTOR_BYTES - 64)
    sector_end = starts[k] - starts[k] % segment.SECTOR_BYTES + segment.SECTOR_BYTES
    with open(segment_path(data_dir), "r+b") as f:
        f.seek(starts[k])
        f.write(bytes(sector_end - starts[k]))
    storage = open_storage(data_dir)
    try:
        assert storage.log.last_index() == k
        warned = warnings_in(log_events)
        assert any("torn record" in w and f"byte offset {starts[k]}" in w
                   for w in warned), warned
    finally:
        storage.close()


def test_a_filesystem_that_cannot_preallocate_gets_plain_appends(tmp_path, monkeypatch):
    calls = []

    def refuse(fd, offset, length):
        calls.append(length)
        return False

    monkeypatch.setattr(fsutil, "preallocate", refuse)
    data_dir = str(tmp_path / "data")
    storage = open_storage(data_dir, {"preallocate_bytes": RESERVE})
    entries = make_entries(1, 40, term=1)
    try:
        for k in range(0, 40, 10):
            storage.log.append(entries[k:k + 10])
            storage.log.sync()
            assert os.path.getsize(segment_path(data_dir)) == records_end(entries[:k + 10])
        assert len(calls) == 1  # tried once, then the segment stopped asking
    finally:
        storage.close()
    storage = open_storage(data_dir)
    assert storage.log.entries(1, 41) == entries
    storage.close()

"""What the WAL does on open with a damaged or unusual data_dir: repair what a crash
explains, refuse what it does not, and say why and what to do."""

from __future__ import annotations

import os
import shutil

import pytest
from storage_support import make_entries, warnings_in

from kvraft.raft.types import HardState
from kvraft.storage import CorruptLogError, StorageError
from kvraft.storage.records import SEGMENT_HEADER, encode_segment_header
from kvraft.storage.wal import open_storage

OPTIONS = {"segment_bytes_max": 1500, "cache_bytes_max": 500}


def build(path: str, count: int = 100) -> list[str]:
    """A synced log of ``count`` entries over several segments; the segment paths."""
    storage = open_storage(path, OPTIONS)
    storage.log.append(make_entries(1, count, term=1))
    storage.close()
    return segments(path)


def segments(path: str) -> list[str]:
    wal_dir = os.path.join(path, "wal")
    return [os.path.join(wal_dir, n) for n in sorted(os.listdir(wal_dir))
            if n.endswith(".seg")]


def reopen(path: str):
    return open_storage(path, OPTIONS)


def test_the_layout_is_the_documented_one(tmp_path):
    path = str(tmp_path / "data")
    segs = build(path)
    assert sorted(os.listdir(path)) == ["lock", "snap", "state", "wal"]
    assert os.path.basename(segs[0]) == "00000000000000000001.seg"
    assert len(segs) > 3
    first_indexes = [int(os.path.basename(s)[:20]) for s in segs]
    assert first_indexes == sorted(first_indexes)


def test_segments_without_a_state_file_are_refused(tmp_path):
    path = str(tmp_path / "data")
    build(path)
    os.unlink(os.path.join(path, "state"))
    with pytest.raises(StorageError, match="no state file .* could vote twice"):
        reopen(path)


def test_a_corrupt_state_file_is_refused_naming_it(tmp_path):
    path = str(tmp_path / "data")
    build(path)
    state = os.path.join(path, "state")
    data = bytearray(open(state, "rb").read())
    data[-2] ^= 0x01
    open(state, "wb").write(data)
    with pytest.raises(StorageError) as info:
        reopen(path)
    assert state in str(info.value) and "checksum" in str(info.value)
    assert "kvraft member add" in str(info.value)


def test_a_missing_segment_is_refused(tmp_path):
    path = str(tmp_path / "data")
    segs = build(path)
    os.unlink(segs[2])
    with pytest.raises(CorruptLogError, match=f"{segs[3]} starts at index .* missing"):
        reopen(path)


def test_a_missing_first_segment_is_refused(tmp_path):
    path = str(tmp_path / "data")
    segs = build(path)
    os.unlink(segs[0])
    with pytest.raises(CorruptLogError, match="entries 1 to .* are missing"):
        reopen(path)


def test_a_torn_tail_in_a_segment_that_is_not_the_last_is_corruption(tmp_path):
    # Rolling syncs the old segment, so only the last one can be torn by a crash.
    path = str(tmp_path / "data")
    segs = build(path)
    with open(segs[1], "r+b") as f:
        f.truncate(os.path.getsize(segs[1]) - 5)
    with pytest.raises(CorruptLogError, match=f"{segs[1]} is corrupt at byte offset"):
        reopen(path)


def test_a_bad_segment_header_is_refused(tmp_path):
    path = str(tmp_path / "data")
    segs = build(path)
    with open(segs[1], "r+b") as f:
        f.seek(3)
        f.write(b"X")
    with pytest.raises(CorruptLogError, match=f"{segs[1]}: .*byte offset 0"):
        reopen(path)


def test_a_segment_whose_name_and_header_disagree_is_refused(tmp_path):
    path = str(tmp_path / "data")
    segs = build(path)
    with open(segs[1], "r+b") as f:
        f.write(encode_segment_header(0, 999))
    with pytest.raises(CorruptLogError, match="its header says it starts at index 999"):
        reopen(path)


def test_a_segment_newer_than_the_state_file_is_refused(tmp_path):
    path = str(tmp_path / "data")
    segs = build(path)
    first = int(os.path.basename(segs[1])[:20])
    with open(segs[1], "r+b") as f:
        f.write(encode_segment_header(7, first))
    with pytest.raises(CorruptLogError, match="generation 7, newer than the state"):
        reopen(path)


def test_leftovers_of_an_interrupted_reset_are_removed(tmp_path):
    path = str(tmp_path / "data")
    segs = build(path)
    saved = str(tmp_path / "saved.seg")
    shutil.copy(segs[-1], saved)
    storage = reopen(path)
    storage.log.reset(500, 3)
    storage.log.append(make_entries(501, 4, term=3))
    storage.close()
    shutil.copy(saved, segs[-1])  # as if the crash came before this unlink
    storage = reopen(path)
    assert (storage.log.first_index(), storage.log.last_index()) == (501, 504)
    assert not os.path.exists(segs[-1])
    storage.close()


def test_leftovers_of_an_interrupted_compaction_are_removed(tmp_path):
    path = str(tmp_path / "data")
    segs = build(path)
    saved = [open(s, "rb").read() for s in segs[:3]]
    storage = reopen(path)
    storage.log.compact(80)
    storage.close()
    assert not os.path.exists(segs[0])
    for seg, data in zip(segs[:3], saved, strict=True):  # the unlinks never happened
        open(seg, "wb").write(data)
    storage = reopen(path)
    assert (storage.log.first_index(), storage.log.last_index()) == (81, 100)
    assert storage.log.term(80) == 1
    assert not any(os.path.exists(s) for s in segs[:3])
    storage.close()


def test_temporary_and_foreign_files_are_cleaned_or_ignored(tmp_path, log_events):
    path = str(tmp_path / "data")
    build(path)
    wal_dir = os.path.join(path, "wal")
    open(os.path.join(wal_dir, "00000000000000000101.seg.tmp"), "wb").write(b"half")
    open(os.path.join(wal_dir, "notes.txt"), "w").write("operator notes")
    storage = reopen(path)
    assert storage.log.last_index() == 100
    storage.close()
    assert not os.path.exists(os.path.join(wal_dir, "00000000000000000101.seg.tmp"))
    assert os.path.exists(os.path.join(wal_dir, "notes.txt"))
    assert any("notes.txt" in w for w in warnings_in(log_events))


def test_a_commit_index_beyond_the_log_is_refused(tmp_path):
    path = str(tmp_path / "data")
    segs = build(path)
    storage = reopen(path)
    storage.stable.save_hard_state(HardState(term=1, vote="n1", commit=100))
    storage.close()
    for seg in segs[-2:]:  # committed entries lost under the node's feet
        os.unlink(seg)
    with pytest.raises(CorruptLogError, match="committed entries were lost"):
        reopen(path)


def test_corruption_found_on_a_later_read_is_reported(tmp_path):
    path = str(tmp_path / "data")
    segs = build(path)
    storage = reopen(path)
    assert storage.log.entries(1, 3) == make_entries(1, 2, term=1)  # cold: from disk
    with open(segs[0], "r+b") as f:  # bit rot after the open scan
        f.seek(SEGMENT_HEADER.size + 20)
        byte = f.read(1)
        f.seek(SEGMENT_HEADER.size + 20)
        f.write(bytes([byte[0] ^ 0x40]))
    with pytest.raises(CorruptLogError, match=f"{segs[0]} is corrupt .*found on read"):
        storage.log.entries(1, 3)
    storage.close()


def test_the_newest_entries_are_served_from_memory_after_open(tmp_path):
    path = str(tmp_path / "data")
    build(path)
    storage = reopen(path)
    log = storage.log
    log.check_invariants()
    assert log._cache_first <= 100  # warmed from disk: recent reads need no I/O
    assert log._cache_bytes <= OPTIONS["cache_bytes_max"]
    for seg in log._segments:
        seg.close()  # any disk read now fails loudly
    hot = log.entries(log._cache_first, 101)
    assert [e.index for e in hot] == list(range(log._cache_first, 101))
    with pytest.raises(OSError):
        log.entries(1, 2)
    log._segments = []
    storage.close()

"""MemoryStorage: the storage read contract and the driver-side writes."""

import pytest
from zope.interface.verify import verifyClass

from kvraft.interfaces import ILogStore
from kvraft.raft import (
    CompactedError,
    ConfState,
    Entry,
    HardState,
    MemoryStorage,
    Snapshot,
    SnapshotMetadata,
    SnapshotOutOfDateError,
    UnavailableError,
)


def ents(*pairs):
    return [Entry(term=t, index=i, data=b"d%d" % i) for i, t in pairs]


def filled(n=5):
    s = MemoryStorage()
    s.append(ents(*[(i, 1 + i // 3) for i in range(1, n + 1)]))
    return s


def test_storage_offers_the_log_store_methods():
    assert verifyClass(ILogStore, MemoryStorage, tentative=True)


def test_storage_new_log_is_empty_with_a_zero_sentinel():
    s = MemoryStorage()
    assert (s.first_index(), s.last_index(), s.term(0)) == (1, 0, 0)
    with pytest.raises(UnavailableError):
        s.term(1)
    assert s.initial_state() == (HardState(), ConfState())


def test_storage_append_truncates_conflicting_suffix():
    s = filled(5)
    s.append(ents((3, 9), (4, 9)))
    assert s.last_index() == 4
    assert [s.term(i) for i in range(1, 5)] == [1, 1, 9, 9]
    with pytest.raises(ValueError, match="gap"):
        s.append(ents((7, 9)))


def test_storage_entries_respects_bounds_and_max_bytes():
    s = filled(5)
    assert [e.index for e in s.entries(2, 5)] == [2, 3, 4]
    one = s.entries(2, 5, max_bytes=1)
    assert [e.index for e in one] == [2], "always at least one entry"
    two = s.entries(2, 5, max_bytes=2 * Entry(0, 0, data=b"d2").size())
    assert [e.index for e in two] == [2, 3]
    with pytest.raises(UnavailableError):
        s.entries(4, 8)


def test_storage_compact_keeps_the_term_of_the_compaction_point():
    s = filled(6)
    s.compact(4)
    assert (s.first_index(), s.last_index(), s.term(4)) == (5, 6, 2)
    with pytest.raises(CompactedError):
        s.term(3)
    with pytest.raises(CompactedError):
        s.entries(4, 6)
    with pytest.raises(CompactedError):
        s.compact(3)


def test_storage_snapshots_create_apply_and_refuse_old_ones():
    s = filled(6)
    cs = ConfState(voters=("n1", "n2"))
    snap = s.create_snapshot(5, cs, b"state")
    assert (snap.metadata.index, snap.metadata.term, s.snapshot().data) == (5, 2, b"state")
    with pytest.raises(SnapshotOutOfDateError):
        s.create_snapshot(4, cs, b"old")
    other = MemoryStorage()
    other.apply_snapshot(Snapshot(SnapshotMetadata(index=9, term=3, conf_state=cs), b"x"))
    assert (other.first_index(), other.last_index(), other.term(9)) == (10, 9, 3)
    assert other.initial_state()[1] == cs
    with pytest.raises(SnapshotOutOfDateError):
        other.apply_snapshot(Snapshot(SnapshotMetadata(index=8, term=3), b""))


def test_storage_hard_state_is_copied():
    s = MemoryStorage()
    hs = HardState(term=2, vote="n1", commit=0)
    s.set_hard_state(hs)
    hs.term = 99
    assert s.initial_state()[0].term == 2

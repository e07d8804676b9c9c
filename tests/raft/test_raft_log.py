"""RaftLog and its unstable tail (Raft 5.3 log matching; async persistence)."""

import pytest

from kvraft.raft import (
    CompactedError,
    Entry,
    LogLostError,
    MemoryStorage,
    Snapshot,
    SnapshotMetadata,
)
from kvraft.raft.log import RaftLog


def ents(*pairs):
    return [Entry(term=t, index=i) for i, t in pairs]


def make_log(stable=(), unstable=()):
    s = MemoryStorage()
    s.append(ents(*stable))
    log = RaftLog(s, max_applying_bytes=1 << 20)
    if unstable:
        log.append(ents(*unstable))
    return log


def test_log_reads_across_storage_and_unstable():
    log = make_log(stable=[(1, 1), (2, 1)], unstable=[(3, 2), (4, 2)])
    assert (log.first_index(), log.last_index(), log.last_term()) == (1, 4, 2)
    assert [e.index for e in log.slice(1, 5)] == [1, 2, 3, 4]
    assert [e.index for e in log.slice(2, 5, max_bytes=1)] == [2]
    assert [e.index for e in log.next_unstable_entries()] == [3, 4]


def test_log_maybe_append_checks_the_previous_entry():
    log = make_log(stable=[(1, 1), (2, 1)])
    assert log.maybe_append(2, 2, 0, ents((3, 2))) is None, "prev term mismatch"
    assert log.maybe_append(5, 1, 0, ents((6, 2))) is None, "prev index missing"
    assert log.maybe_append(2, 1, 3, ents((3, 2))) == 3
    assert log.committed == 3


def test_log_maybe_append_truncates_a_conflict_but_never_committed_entries():
    log = make_log(stable=[(1, 1), (2, 1), (3, 1)])
    log.commit_to(1)
    assert log.maybe_append(1, 1, 1, ents((2, 3))) == 2
    assert (log.last_index(), log.term(2)) == (2, 3)
    log.commit_to(2)
    with pytest.raises(AssertionError, match="committed"):
        log.maybe_append(1, 1, 2, ents((2, 4)))


def test_log_maybe_append_ignores_an_already_held_prefix():
    log = make_log(stable=[(1, 1), (2, 1), (3, 1)])
    # A stale, shorter MsgApp must not truncate entries after it.
    assert log.maybe_append(0, 0, 0, ents((1, 1), (2, 1))) == 2
    assert log.last_index() == 3


def test_log_find_conflict_by_term_skips_whole_terms():
    log = make_log(stable=[(1, 1), (2, 1), (3, 2), (4, 2), (5, 4), (6, 4)])
    assert log.find_conflict_by_term(6, 3) == (4, 2)
    assert log.find_conflict_by_term(6, 4) == (6, 4)
    assert log.find_conflict_by_term(6, 0) == (0, 0)


def test_log_commit_only_current_term_by_counting():
    log = make_log(stable=[(1, 1), (2, 2)])
    assert not log.maybe_commit(2, 3), "an old-term entry is not committed by counting"
    assert log.committed == 0
    assert log.maybe_commit(2, 2)


def test_log_stable_to_ignores_a_replaced_entry():
    log = make_log(stable=[(1, 1)], unstable=[(2, 1), (3, 1)])
    log.unstable.accept_in_progress()
    log.append(ents((3, 2)))  # a new leader replaced entry 3 while it was being written
    assert log.unstable.offset_in_progress == 3
    log.unstable.stable_to(3, 1)  # the old write completes: stale
    assert [e.term for e in log.unstable.entries] == [1, 2]
    log.unstable.stable_to(3, 2)
    assert log.unstable.entries == [] and log.unstable.offset == 4


def test_log_unstable_truncate_before_offset_replaces_everything():
    log = make_log(stable=[(1, 1), (2, 1)], unstable=[(3, 1)])
    log.append(ents((2, 5), (3, 5)))
    assert log.unstable.offset == 2
    assert [(e.index, e.term) for e in log.next_unstable_entries()] == [(2, 5), (3, 5)]


def test_log_restore_snapshot_then_committed_entries_wait():
    log = make_log(stable=[(1, 1)])
    snap = Snapshot(SnapshotMetadata(index=10, term=3))
    log.restore(snap)
    assert (log.first_index(), log.last_index(), log.term(10), log.committed) == \
        (11, 10, 3, 10)
    assert log.next_committed_entries() == [] and not log.has_next_committed_entries()
    with pytest.raises(CompactedError):
        log.term(5)


def test_log_applied_to_is_bounded_by_committed():
    log = make_log(stable=[(1, 1), (2, 1)])
    log.commit_to(1)
    with pytest.raises(AssertionError):
        log.applied_to(2)
    with pytest.raises(LogLostError, match="beyond the last index"):
        log.commit_to(5)

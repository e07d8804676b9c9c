"""Progress states and the inflights window (etcd tracker/progress)."""

import pytest

from kvraft.raft.progress import Inflights, Progress, ProgressState


def test_progress_inflights_window_by_count_and_bytes():
    w = Inflights(size_max=3)
    w.add(5, 10)
    w.add(7, 10)
    assert not w.full()
    w.add(9, 10)
    assert w.full()
    with pytest.raises(AssertionError):
        w.add(10, 1)
    w.free_le(7)
    assert (len(w), w.bytes, w.full()) == (1, 10, False)
    b = Inflights(size_max=100, bytes_max=25)
    b.add(1, 20)
    assert not b.full()
    b.add(2, 10)
    assert b.full()


def test_progress_probe_sends_one_at_a_time_until_answered():
    pr = Progress(next_index=5, inflight_max=4)
    assert pr.state == ProgressState.Probe and not pr.is_paused()
    pr.sent_entries(2, 40)
    assert pr.is_paused() and pr.next == 5, "probe does not advance next"
    assert pr.maybe_update(6)
    assert (pr.match, pr.next, pr.is_paused()) == (6, 7, False)


def test_progress_replicate_pipelines_up_to_the_window():
    pr = Progress(next_index=1, inflight_max=2)
    pr.become_replicate()
    pr.sent_entries(3, 30)
    pr.sent_entries(1, 10)
    assert (pr.next, pr.is_paused(), len(pr.inflights)) == (5, True, 2)
    pr.maybe_update(3)
    pr.inflights.free_le(3)
    assert len(pr.inflights) == 1


def test_progress_maybe_decr_to_uses_the_hint_and_ignores_stale_rejections():
    pr = Progress(next_index=10, inflight_max=4)
    assert not pr.maybe_decr_to(5, 3), "rejection of an index we did not probe is stale"
    assert pr.maybe_decr_to(9, 4)
    assert pr.next == 5
    pr.match = 4
    pr.become_replicate()
    assert not pr.maybe_decr_to(3, 0), "below match: stale"
    assert pr.maybe_decr_to(7, 0) and pr.next == 5


def test_progress_snapshot_state_pauses_until_resolved():
    pr = Progress(next_index=3, inflight_max=4)
    pr.become_snapshot(20)
    assert pr.is_paused() and pr.pending_snapshot == 20
    pr.become_probe()
    assert pr.next == 21, "after a successful snapshot probe from after it"

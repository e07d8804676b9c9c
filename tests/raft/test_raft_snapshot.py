"""Snapshots and log compaction (Raft 7): MsgSnap for compacted entries, restore,
snapshot status reports."""

from raft_harness import Cluster

from kvraft.raft import Message, MsgType, ProgressState, SnapshotTemporarilyUnavailableError

VOTERS = ("n1", "n2", "n3")


def lagging_cluster():
    c = Cluster(VOTERS)
    c.elect("n1")
    c.isolate("n3")
    for i in range(5):
        c.propose("n1", b"w%d" % i)
    c.stabilize()
    index = c.compact("n1", data=b"state@6")
    assert index == 6 and c.storage["n1"].first_index() == 7
    return c


def test_snapshot_sent_when_the_follower_needs_compacted_entries():
    c = lagging_cluster()
    c.heal()
    c.tick("n1")
    c.stabilize()
    (snap,) = c.snapshots_installed["n3"]
    assert (snap.metadata.index, snap.metadata.term, snap.data) == (6, 1, b"state@6")
    assert snap.metadata.conf_state.voters == VOTERS
    n3 = c.core("n3")
    assert (n3.log.committed, n3.log.applied, n3.log.first_index()) == (6, 6, 7)
    assert c.applied_data("n3") == [], "entries covered by the snapshot are not replayed"
    c.propose("n1", b"after")
    c.stabilize()
    assert c.applied_data("n3") == [b"after"]
    assert c.core("n1").tracker.progress["n3"].state == ProgressState.Replicate


def test_snapshot_progress_waits_in_snapshot_state_until_reported():
    c = lagging_cluster()
    c.heal()
    c.intercept = lambda m: None if m.type == MsgType.MsgSnap else m  # lost in transit
    c.tick("n1")
    c.stabilize()
    pr = c.core("n1").tracker.progress["n3"]
    assert (pr.state, pr.pending_snapshot) == (ProgressState.Snapshot, 6)
    c.core("n1").report_snapshot("n3", ok=False)
    assert pr.state == ProgressState.Probe and pr.is_paused()
    assert pr.next == pr.match + 1, "a failed snapshot probes from match again"
    c.intercept = None
    c.tick("n1")
    c.stabilize()
    assert c.core("n3").log.committed == 6


def test_snapshot_not_sent_while_temporarily_unavailable():
    c = lagging_cluster()
    storage = c.storage["n1"]

    def busy():
        raise SnapshotTemporarilyUnavailableError("a snapshot is being written")

    storage.snapshot = busy
    c.heal()
    c.tick("n1")
    c.stabilize()
    assert c.snapshots_installed["n3"] == []
    assert c.core("n1").tracker.progress["n3"].state == ProgressState.Probe
    del storage.snapshot  # back to the class method
    c.tick("n1")
    c.stabilize()
    assert len(c.snapshots_installed["n3"]) == 1


def test_snapshot_older_than_commit_is_ignored_but_acknowledged():
    c = Cluster(VOTERS)
    c.elect("n1")
    c.propose("n1", b"x")
    c.stabilize()
    snap = c.storage["n1"].create_snapshot(1, c.core("n1").tracker.conf_state(), b"")
    n2 = c.core("n2")
    n2.step(Message(type=MsgType.MsgSnap, frm="n1", to="n2", term=1, snapshot=snap))
    rd = n2.ready()
    assert rd.snapshot is None
    assert [(m.type, m.index) for m in rd.messages_after_persist] == [(MsgType.MsgAppResp, 2)]


def test_snapshot_restarted_node_resumes_after_its_snapshot():
    c = lagging_cluster()
    c.heal()
    c.tick("n1")
    c.stabilize()
    c.restart("n3")
    n3 = c.core("n3")
    assert (n3.log.first_index(), n3.log.committed) == (7, 6)
    c.propose("n1", b"more")
    c.tick("n1")
    c.stabilize()
    assert c.applied_data("n3") == [b"more"]

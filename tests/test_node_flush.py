"""A leader's log flush through a flusher (Linux AIO in production, ``FakeFlusher`` here).

The leader starts its fdatasync and goes on serving: it applies and answers what is
committed and durable while the disk works. What must not change is Raft's promise
(Figure 2, §5.3-5.4): a write is acknowledged only once a majority has it on disk, and
the leader counts itself in that majority only once its own flush is done.
"""

import errno

import pytest
from test_node_support import NodeCluster


class Answers:
    def __init__(self):
        self.got: dict = {}

    def __call__(self, token, result):
        assert token not in self.got, f"{token!r} answered twice"
        self.got[token] = result


@pytest.fixture
def cluster(tmp_path):
    # No proposal hold: a second write is proposed while the first is still applying.
    c = NodeCluster(tmp_path, size=3, flusher=True, raft={"proposal_hold_ms": 0})
    c.wait_leader()
    yield c
    c.close()


def _setup(cluster):
    leader_id = cluster.leader()
    leader = cluster.nodes[leader_id]
    followers = [n for n in cluster.nodes if n != leader_id]
    return leader_id, leader, cluster.flushers[leader_id], followers


def test_the_leader_flushes_through_its_flusher_and_followers_inline(cluster):
    leader_id, leader, flusher, followers = _setup(cluster)
    before = flusher.submitted
    follower_submits = [cluster.flushers[f].submitted for f in followers]
    answers = Answers()
    leader.submit_write([b"SET", b"a", b"1"], answers, "w")
    cluster.run_until(lambda: "w" in answers.got, what="the write answered")
    assert str(answers.got["w"]) == "OK"
    assert flusher.submitted > before
    # A follower's acknowledgement waits for its fsync anyway; it applies after sending
    # it, so it gains nothing from flushing in the background.
    assert [cluster.flushers[f].submitted for f in followers] == follower_submits
    assert leader.fsync_mode == "aio"


def test_a_write_waits_for_a_majority_on_disk_counting_the_leader_after_its_flush(cluster):
    leader_id, leader, flusher, followers = _setup(cluster)
    cluster.net.isolate(followers[1])  # a majority now needs the leader's own disk
    flusher.hold = True
    answers = Answers()
    leader.submit_write([b"SET", b"k", b"v"], answers, "w")
    cluster.run_until(lambda: flusher.pending, what="the leader's flush started")
    index = leader.core.log.last_index()
    cluster.run(1.0)  # the remaining follower has it on disk and acknowledged it
    assert cluster.nodes[followers[0]].storage.log.last_index() >= index
    assert leader.core.log.committed < index, \
        "committed with one disk of three: the leader counted its unflushed write"
    assert "w" not in answers.got
    flusher.release()
    cluster.run_until(lambda: "w" in answers.got, what="the write answered after the flush")
    assert str(answers.got["w"]) == "OK"
    assert leader.core.log.committed >= index


def test_the_leader_answers_committed_writes_while_its_next_flush_is_in_flight(cluster):
    leader_id, leader, flusher, followers = _setup(cluster)
    flusher.hold = True
    # Delay (not drop) the followers' messages to the leader until w2's flush is in
    # flight: their acknowledgements of w1 then arrive during it.
    delayed = []

    def delay_to_leader(msg):
        if msg.to == leader_id:
            delayed.append(msg)
            return None
        return msg

    cluster.net.filter = delay_to_leader
    answers = Answers()
    leader.submit_write([b"SET", b"w1", b"1"], answers, "w1")
    cluster.run_until(lambda: flusher.pending, what="w1's flush started")
    flusher.release()
    cluster.run(0.2)
    assert "w1" not in answers.got, "w1 answered without a follower's acknowledgement"
    leader.submit_write([b"SET", b"w2", b"2"], answers, "w2")
    cluster.run_until(lambda: flusher.pending, what="w2's flush started")
    cluster.net.filter = None
    for msg in delayed:
        cluster.net.deliver(msg.frm, msg)
    cluster.run_until(lambda: "w1" in answers.got, what="w1 answered")
    assert flusher.pending, "w1 must be answered while w2's flush is still in flight"
    assert "w2" not in answers.got
    assert leader.machine.query([b"GET", b"w1"]) == b"1"
    assert leader.machine.query([b"GET", b"w2"]) is None, "w2 applied before its flush"
    flusher.release()
    cluster.run_until(lambda: "w2" in answers.got, what="w2 answered after its flush")
    assert str(answers.got["w2"]) == "OK"


def test_a_failed_flush_stops_the_leader_without_acknowledging_the_write(cluster):
    leader_id, leader, flusher, followers = _setup(cluster)
    cluster.net.isolate(followers[1])
    flusher.hold = True
    answers = Answers()
    leader.submit_write([b"SET", b"k", b"v"], answers, "w")
    cluster.run_until(lambda: flusher.pending, what="the leader's flush started")
    flusher.release(OSError(errno.EIO, "Input/output error"))
    cluster.run(0.5)
    assert leader._stopping, "the node goes on after its disk failed a write"
    assert "w" not in answers.got or str(answers.got["w"]) != "OK"
    assert leader.machine.query([b"GET", b"k"]) is None


def test_a_stopping_leader_waits_for_its_flush_then_closes_the_flusher(cluster):
    leader_id, leader, flusher, followers = _setup(cluster)
    flusher.hold = True
    answers = Answers()
    leader.submit_write([b"SET", b"k", b"v"], answers, "w")
    cluster.run_until(lambda: flusher.pending, what="the leader's flush started")
    d = leader.stopService()
    cluster.run(0.2)
    assert not d.called, "storage closed under a flush in flight"
    assert not flusher.closed
    flusher.release()
    cluster.run(0.2)
    assert d.called and flusher.closed
    cluster.nodes.pop(leader_id)
    cluster.net.transports.pop(leader_id, None)


def test_storage_fsync_aio_false_keeps_the_flush_on_the_reactor_thread(tmp_path):
    c = NodeCluster(tmp_path, size=3, flusher=True, storage={"fsync_aio": False})
    try:
        leader_id = c.wait_leader()
        c.write(leader_id, b"SET", b"k", b"v")
        assert c.flushers == {}
        assert all(n.fsync_mode == "reactor" for n in c.nodes.values())
    finally:
        c.close()


def test_without_aio_the_reason_is_logged_and_the_flush_stays_inline(tmp_path, log_events):
    c = NodeCluster(tmp_path, size=3,
                    flusher=lambda on_done: (None, "io_setup failed: Function not implemented"))
    try:
        leader_id = c.wait_leader()
        assert str(c.write(leader_id, b"SET", b"k", b"v")) == "OK"
        assert all(n.fsync_mode == "reactor" for n in c.nodes.values())
    finally:
        c.close()
    warnings = [e for e in log_events if "blocks the reactor thread" in e.get("log_format", "")]
    assert len(warnings) == 3 and "io_setup failed" in warnings[0]["reason"]

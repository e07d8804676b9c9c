"""``RaftNodeService.submit_write``/``submit_read``: the client port's Deferred-free path.

Every request is answered exactly once, by ``done(token, result)``, with the result or a
BackendError; the Deferred API (``write``/``read``) is built on it and behaves as before.
Runs on the deterministic in-process cluster of tests/test_node_support.py.
"""

import pytest
from test_node_support import NodeCluster

from kvraft import node as node_module
from kvraft.client.errors import NoLeaderError, OutcomeUnknownError, OverloadedError
from kvraft.raft import Role


class Answers:
    """A ``done`` that records (token, result) and checks each token is answered once
    (the node catches what ``done`` raises, so ``calls`` counts every call too)."""

    def __init__(self):
        self.got: dict = {}
        self.order: list = []
        self.calls = 0

    def __call__(self, token, result):
        self.calls += 1
        assert token not in self.got, f"{token!r} answered twice"
        self.got[token] = result
        self.order.append(token)


@pytest.fixture(params=["fsync-inline", "fsync-in-thread", "fsync-flusher"])
def cluster(tmp_path, request):
    in_thread = request.param == "fsync-in-thread"
    flusher = request.param == "fsync-flusher"
    c = NodeCluster(tmp_path, size=3, storage={"fsync_in_thread": in_thread},
                    flusher=flusher)
    assert all(n.fsync_in_thread is in_thread for n in c.nodes.values())
    expected_mode = {"fsync-inline": "reactor", "fsync-in-thread": "thread",
                     "fsync-flusher": "aio"}[request.param]
    assert all(n.fsync_mode == expected_mode for n in c.nodes.values())
    c.run_until(lambda: any(n.role == Role.Leader for n in c.nodes.values()),
                what="a leader")
    yield c
    c.close()


def _leader(c):
    return next(n for n in c.nodes.values() if n.role == Role.Leader)


def test_writes_and_reads_are_answered_once_in_order(cluster):
    leader = _leader(cluster)
    answers = Answers()
    for i in range(20):
        leader.submit_write([b"SET", b"k%d" % i, b"v%d" % i], answers, ("w", i))
    cluster.run_until(lambda: len(answers.got) == 20, what="20 writes answered")
    assert answers.order == [("w", i) for i in range(20)]
    assert all(str(answers.got["w", i]) == "OK" for i in range(20))
    for i in range(20):
        leader.submit_read([b"GET", b"k%d" % i], True, answers, ("r", i))
    cluster.run_until(lambda: len(answers.got) == 40, what="20 reads answered")
    assert [answers.got["r", i] for i in range(20)] == [b"v%d" % i for i in range(20)]


def test_a_follower_serves_a_local_read_at_once_and_forwards_writes(cluster):
    follower = next(n for n in cluster.nodes.values() if n.role != Role.Leader)
    answers = Answers()
    follower.submit_write([b"SET", b"a", b"1"], answers, "w")
    cluster.run_until(lambda: "w" in answers.got, what="the forwarded write")
    cluster.run_until(lambda: follower.machine.last_applied >= _leader(cluster)
                      .machine.last_applied, what="the follower applying it")
    follower.submit_read([b"GET", b"a"], False, answers, "stale")
    assert answers.got["stale"] == b"1", "READONLY reads are answered synchronously"


def test_overload_is_answered_synchronously(cluster, monkeypatch):
    leader = _leader(cluster)
    monkeypatch.setattr(node_module, "pending_writes_max", 2)
    monkeypatch.setattr(node_module, "pending_reads_max", 1)
    answers = Answers()
    for i in range(3):
        leader.submit_write([b"SET", b"x", b"%d" % i], answers, ("w", i))
    assert isinstance(answers.got.get(("w", 2)), OverloadedError)
    leader.submit_read([b"GET", b"x"], True, answers, ("r", 0))
    leader.submit_read([b"GET", b"x"], True, answers, ("r", 1))
    assert isinstance(answers.got.get(("r", 1)), OverloadedError)
    cluster.run_until(lambda: len(answers.got) == 5, what="the rest answered")


def test_a_write_that_times_out_is_answered_once_even_if_it_commits_later(cluster):
    leader = _leader(cluster)
    answers = Answers()
    cluster.net.isolate(leader.node_id)
    leader.submit_write([b"SET", b"late", b"1"], answers, "w")
    cluster.run_until(lambda: "w" in answers.got, seconds=leader.request_timeout_s + 5,
                      what="the timeout")
    assert isinstance(answers.got["w"], OutcomeUnknownError)
    cluster.net.heal()
    cluster.run(5)  # a new leader; the entry is kept or dropped, never answered again
    assert answers.order == ["w"]


def test_a_read_that_cannot_be_confirmed_times_out_once(tmp_path):
    # A request timeout shorter than the election timeout: the read's deadline passes
    # while the cut-off leader still leads (check-quorum has not deposed it yet).
    cluster = NodeCluster(tmp_path, size=3, raft={"request_timeout_ms": 300})
    cluster.run_until(lambda: any(n.role == Role.Leader for n in cluster.nodes.values()),
                      what="a leader")
    leader = _leader(cluster)
    answers = Answers()
    cluster.net.isolate(leader.node_id)
    started = cluster.reactor.seconds()
    leader.submit_read([b"GET", b"x"], True, answers, "r")
    cluster.run_until(lambda: "r" in answers.got, seconds=leader.request_timeout_s + 5,
                      what="the timeout")
    assert isinstance(answers.got["r"], OutcomeUnknownError)
    assert cluster.reactor.seconds() - started >= leader.request_timeout_s
    cluster.net.heal()
    cluster.run(3)
    assert answers.order == ["r"] and answers.calls == 1
    cluster.close()


@pytest.mark.parametrize("where", ["leader", "follower"])
def test_a_read_waiting_for_confirmation_fails_fast_when_the_leader_changes(cluster, where):
    # The old leader is cut off: its check-quorum makes it step down, the others elect a
    # new one. Either way the pending ReadIndex round cannot be confirmed any more, and
    # the read is answered then (retryable), not at its deadline.
    leader = _leader(cluster)
    node = leader if where == "leader" else next(
        n for n in cluster.nodes.values() if n.role != Role.Leader)
    answers = Answers()
    cluster.net.isolate(leader.node_id)
    started = cluster.reactor.seconds()
    node.submit_read([b"GET", b"x"], True, answers, "r")
    cluster.run_until(lambda: "r" in answers.got, seconds=leader.request_timeout_s + 5,
                      what="an answer")
    assert isinstance(answers.got["r"], NoLeaderError), answers.got["r"]
    assert cluster.reactor.seconds() - started < leader.request_timeout_s
    cluster.net.heal()
    cluster.run(leader.request_timeout_s + 1)
    assert answers.calls == 1


def test_requests_in_flight_hold_no_reactor_timers(cluster):
    # Timeouts are deadlines checked each tick, not a timer per batch: the reactor's
    # timer heap does not grow with the requests in flight.
    leader = _leader(cluster)
    answers = Answers()
    idle_timers = len(cluster.reactor.getDelayedCalls())
    for i in range(30):
        leader.submit_write([b"SET", b"k%d" % i, b"v"], answers, ("w", i))
        leader.submit_read([b"GET", b"k%d" % i], True, answers, ("r", i))
        cluster.reactor.advance(0)  # each its own batch and round
    assert len(cluster.reactor.getDelayedCalls()) <= idle_timers + 5
    cluster.run_until(lambda: len(answers.got) == 60, what="all answered")
    cluster.run(leader.request_timeout_s + 1)  # no late timeout answers anything twice
    assert len(answers.order) == answers.calls == 60


def test_a_done_that_raises_does_not_stop_the_node(cluster):
    leader = _leader(cluster)
    answers = Answers()

    def broken(token, result):
        raise RuntimeError("a client connection bug")

    leader.submit_write([b"SET", b"b", b"1"], broken, "boom")
    leader.submit_write([b"SET", b"b", b"2"], answers, "after")
    cluster.run_until(lambda: "after" in answers.got, what="the next write")
    leader.submit_read([b"GET", b"b"], True, answers, "read")
    cluster.run_until(lambda: "read" in answers.got, what="a read")
    assert answers.got["read"] == b"2"
    assert leader.running


def test_the_deferred_api_still_works(cluster):
    leader = _leader(cluster)
    assert str(cluster.result(leader.write([b"SET", b"d", b"1"]))) == "OK"
    assert cluster.result(leader.read([b"GET", b"d"])) == b"1"

"""A leader's write batching: while its last batch is not yet committed, the writes that
arrive wait (up to ``raft.proposal_hold_ms``) and then go out together as one entry."""

import msgpack
import pytest
from test_node_support import NodeCluster

from kvraft.client.errors import BackendError, NoLeaderError
from kvraft.raft import Role


def _leader(cluster):
    cluster.run_until(lambda: any(n.role == Role.Leader for n in cluster.nodes.values()),
                      what="a leader")
    return next(n for n in cluster.nodes.values() if n.role == Role.Leader)


def _cut_off_followers(cluster, leader):
    for other in cluster.nodes:
        if other != leader.node_id:
            cluster.net.blocked.add((leader.node_id, other))


def _first_batch_stuck(cluster, leader, answers) -> int:
    """Propose write "a" with the followers cut off, so that it cannot commit for now;
    the leader's last log index after it."""
    _cut_off_followers(cluster, leader)
    leader.submit_write([b"SET", b"a", b"1"], answers, "a")
    cluster.reactor.advance(0)
    return leader.core.log.last_index()


@pytest.fixture
def answers():
    got = {}

    def done(token, result):
        assert token not in got, f"{token} answered twice"
        got[token] = result
    done.got = got
    return done


def test_writes_that_arrive_while_the_last_batch_commits_wait_and_go_out_as_one_entry(
        tmp_path, answers):
    cluster = NodeCluster(tmp_path, raft={"proposal_hold_ms": 50})
    try:
        leader = _leader(cluster)
        first = _first_batch_stuck(cluster, leader, answers)
        for i in range(5):
            leader.submit_write([b"SET", b"k%d" % i, b"v"], answers, i)
            cluster.reactor.advance(0.005)
        assert leader.core.log.last_index() == first  # held behind "a"
        cluster.reactor.advance(0.05)  # the hold ends: one entry for all five
        assert leader.core.log.last_index() == first + 1
        cluster.net.heal()
        cluster.run_until(lambda: len(answers.got) == 6, what="all answered")
        assert all(str(result) == "OK" for result in answers.got.values())
    finally:
        cluster.close()


def test_the_next_batch_goes_out_as_soon_as_the_last_one_is_applied(tmp_path, answers):
    cluster = NodeCluster(tmp_path, raft={"proposal_hold_ms": 10_000})
    try:
        leader = _leader(cluster)
        leader.submit_write([b"SET", b"a", b"1"], answers, "a")
        leader.submit_write([b"SET", b"b", b"1"], answers, "b")
        cluster.reactor.advance(0)  # commits at once here: no hold is waited out
        leader.submit_write([b"SET", b"c", b"1"], answers, "c")
        cluster.reactor.advance(0)
        assert set(answers.got) == {"a", "b", "c"}
    finally:
        cluster.close()


def test_the_next_batch_leaves_before_the_committed_one_is_applied(tmp_path):
    cluster = NodeCluster(tmp_path, raft={"proposal_hold_ms": 10_000})
    try:
        leader = _leader(cluster)
        held = []  # the followers' messages to the leader, delivered later
        cluster.net.filter = lambda m: held.append(m) if m.to == leader.node_id else m
        seen = {}

        def done(token, result):
            seen[token] = (str(result), leader.core.log.last_index())

        leader.submit_write([b"SET", b"a", b"1"], done, "a")
        cluster.reactor.advance(0)
        a_index = leader.core.log.last_index()
        leader.submit_write([b"SET", b"b", b"1"], done, "b")
        cluster.reactor.advance(0)
        assert leader.core.log.last_index() == a_index, "b not held while a commits"
        cluster.net.filter = None
        for m in held:
            cluster.net.deliver(m.frm, m)
        cluster.run_until(lambda: "a" in seen, what="a answered")
        # When a's client hears OK, b is in the log already: proposed (and sent) in
        # the turn that committed a, before a was applied.
        assert seen["a"] == ("OK", a_index + 1)
        cluster.run_until(lambda: "b" in seen, what="b answered")
        assert seen["b"][0] == "OK"
    finally:
        cluster.close()


def test_no_hold_proposes_each_turn(tmp_path, answers):
    cluster = NodeCluster(tmp_path, raft={"proposal_hold_ms": 0})
    try:
        leader = _leader(cluster)
        first = _first_batch_stuck(cluster, leader, answers)
        for i in range(3):
            leader.submit_write([b"SET", b"k%d" % i, b"v"], answers, i)
            cluster.reactor.advance(0)
        assert leader.core.log.last_index() == first + 3
        cluster.net.heal()
        cluster.run_until(lambda: len(answers.got) == 4, what="all answered")
    finally:
        cluster.close()


def _entry_sizes(leader, after: int) -> list[int]:
    """Commands per entry in the leader's log after index ``after``."""
    log = leader.core.log
    entries = log.slice(after + 1, log.last_index() + 1)
    return [len(msgpack.unpackb(e.data, raw=False)[2]) for e in entries if e.data]


@pytest.fixture
def make_cluster(tmp_path):
    """``make_cluster(**raft)``: a NodeCluster closed when the test ends."""
    made = []

    def make(**raft):
        made.append(NodeCluster(tmp_path, raft=raft))
        return made[-1]
    yield make
    for cluster in made:
        cluster.close()


def _a_follower(cluster, leader):
    return next(n for n in cluster.nodes.values() if n is not leader)


def test_a_group_of_writes_is_answered_once_with_every_result_in_order(make_cluster, answers):
    cluster = make_cluster()
    leader = _leader(cluster)
    leader.submit_write([b"SET", b"x", b"1"], answers, "single")
    leader.submit_writes([[b"SET", b"x", b"2"], [b"INCRBY", b"x", b"5"],
                          [b"SET", b"x", b"3", b"NX"]], answers, "group")
    leader.submit_write([b"INCRBY", b"x", b"1"], answers, "after")
    cluster.run_until(lambda: len(answers.got) == 3, what="all answered")
    assert str(answers.got["single"]) == "OK"
    group = answers.got["group"]
    assert [str(group[0]), group[1], group[2]] == ["OK", 7, None]
    assert answers.got["after"] == 8  # in the log after the whole group


def test_a_batch_is_cut_before_a_group_that_would_pass_batch_commands_max(
        make_cluster, answers):
    cluster = make_cluster(batch_commands_max=4)
    leader = _leader(cluster)
    first = _first_batch_stuck(cluster, leader, answers)  # later writes wait
    leader.submit_writes([[b"SET", b"a%d" % i, b"v"] for i in range(3)], answers, "g1")
    leader.submit_writes([[b"SET", b"b%d" % i, b"v"] for i in range(3)], answers, "g2")
    cluster.net.heal()
    cluster.run_until(lambda: len(answers.got) == 3, what="all answered")
    assert _entry_sizes(leader, first) == [3, 3]  # never 4 + 2: a group stays whole
    assert [str(r) for r in answers.got["g2"]] == ["OK"] * 3


def test_writes_beyond_batch_bytes_max_go_into_several_entries_and_all_succeed(
        make_cluster, answers):
    # Twenty 100 kB values (2 MB) in one turn: one entry would pass max_msg_bytes
    # (1 MiB) and the core would refuse it whole ("too-large").
    cluster = make_cluster(batch_bytes_max=300_000)
    leader = _leader(cluster)
    first = leader.core.log.last_index()
    for i in range(20):
        leader.submit_write([b"SET", b"big%d" % i, b"v" * 100_000], answers, i)
    cluster.run_until(lambda: len(answers.got) == 20, what="all answered")
    assert all(str(result) == "OK" for result in answers.got.values()), answers.got
    sizes = _entry_sizes(leader, first)
    assert sum(sizes) == 20 and max(sizes) <= 3


def test_a_refused_group_gets_one_error_for_all_its_commands(make_cluster, answers):
    cluster = make_cluster()
    leader = _leader(cluster)
    follower = _a_follower(cluster, leader)
    for other in cluster.nodes:
        cluster.net.isolate(other)
    cluster.run_until(lambda: follower.core.lead == "", seconds=60,
                      what="the follower to lose its leader")
    follower.submit_writes([[b"SET", b"a", b"1"], [b"SET", b"b", b"1"]], answers, "g")
    cluster.run_until(lambda: "g" in answers.got, seconds=60, what="an answer")
    assert isinstance(answers.got["g"], NoLeaderError)


def test_a_group_of_reads_is_answered_once_after_its_readindex_round(make_cluster, answers):
    cluster = make_cluster()
    leader = _leader(cluster)
    leader.submit_writes([[b"SET", b"a", b"1"], [b"SET", b"b", b"2"]], answers, "w")
    cluster.run_until(lambda: "w" in answers.got, what="the writes")
    follower = _a_follower(cluster, leader)
    follower.submit_reads([[b"GET", b"a"], [b"GET", b"missing"], [b"GET", b"b"]], True,
                          answers, "r")
    cluster.run_until(lambda: "r" in answers.got, what="the reads")
    assert answers.got["r"] == [b"1", None, b"2"]


def test_a_read_the_machine_fails_on_is_answered_with_an_error_and_the_rest_normally(
        make_cluster, answers, monkeypatch):
    cluster = make_cluster()
    leader = _leader(cluster)
    query = leader.machine.query

    def broken(command):
        if command[1] == b"bad":
            raise RuntimeError("a state machine bug")
        return query(command)
    monkeypatch.setattr(leader.machine, "query", broken)
    leader.submit_read([b"GET", b"a"], True, answers, "a")
    leader.submit_reads([[b"GET", b"bad"], [b"GET", b"b"]], True, answers, "group")
    cluster.run_until(lambda: len(answers.got) == 2, what="both answered")
    assert answers.got["a"] is None
    bad, b = answers.got["group"]
    assert isinstance(bad, BackendError) and b is None


def test_a_stale_read_group_the_machine_fails_on_is_answered_too(make_cluster, answers,
                                                                 monkeypatch):
    cluster = make_cluster()
    leader = _leader(cluster)
    monkeypatch.setattr(leader.machine, "query", lambda command: 1 / 0)
    leader.submit_reads([[b"GET", b"a"]], False, answers, "stale")  # READONLY: at once
    (error,) = answers.got["stale"]
    assert isinstance(error, BackendError)

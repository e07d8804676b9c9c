"""A leader's write batching: while its last batch is not yet applied, the writes that
arrive wait (up to ``raft.proposal_hold_ms``) and then go out together as one entry."""

import pytest
from test_node_support import NodeCluster

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

"""A write the leader appended but could not commit before it was deposed: once another
entry is committed at its log index, the write is known not to be applied (entries never
move, and a batch is proposed once), so its client hears "not applied, retry" at once
instead of an unknown outcome when request_timeout_ms passes."""

from test_node_support import NodeCluster

from kvraft.client.errors import NoLeaderError
from kvraft.raft import Role

LOST_ANSWER_S_MAX = 5
"""How soon (simulated seconds) a lost write is answered; far below its 60 s timeout."""


def test_a_write_overwritten_by_the_next_leader_fails_at_once_as_not_applied(tmp_path):
    cluster = NodeCluster(tmp_path, raft={"request_timeout_ms": 60_000})
    try:
        old = cluster.nodes[cluster.run_until(cluster.leader, what="a leader")]
        others = [n for n in cluster.nodes if n != old.node_id]
        for other in others:  # the leader's messages no longer arrive: a new election
            cluster.net.blocked.add((old.node_id, other))
        got = {}
        old.submit_write([b"SET", b"lost", b"1"], lambda token, result: got.update(w=result),
                         None)
        cluster.reactor.advance(0)
        lost_at = old.core.log.last_index()  # appended to the deposed leader's log only
        new = cluster.run_until(
            lambda: next((cluster.nodes[n] for n in others
                          if cluster.nodes[n].core.role == Role.Leader), None),
            what="a new leader among the others")
        cluster.run_until(lambda: new.machine.last_applied >= lost_at,
                          what="the new leader's entry at that index applied")
        assert got == {}  # the old leader has not heard of it yet
        started = cluster.reactor.seconds()
        cluster.net.blocked.clear()
        cluster.run_until(lambda: "w" in got, what="an answer to the write")
        assert isinstance(got["w"], NoLeaderError), got
        assert "not applied" in str(got["w"])
        assert cluster.reactor.seconds() - started < LOST_ANSWER_S_MAX
        cluster.run_until(lambda: all(n.machine.last_applied >= lost_at
                                      for n in cluster.nodes.values()), what="all applied")
        assert all(n.machine.query([b"GET", b"lost"]) is None for n in cluster.nodes.values())
        assert old.metrics.proposals_failed["lost"] == 1
    finally:
        cluster.close()


def test_a_write_committed_by_the_next_leader_is_answered_with_its_result(tmp_path):
    # The deposed leader's entry reached a follower, which then won the election: the
    # same entry is committed at the same index; its client gets OK, not "lost".
    cluster = NodeCluster(tmp_path, raft={"request_timeout_ms": 60_000})
    try:
        old = cluster.nodes[cluster.run_until(cluster.leader, what="a leader")]
        keeper, other = [n for n in cluster.nodes if n != old.node_id]
        cluster.net.blocked.add((old.node_id, other))  # only `keeper` gets the entry
        cluster.net.blocked.add((keeper, old.node_id))  # and its answer is lost
        got = {}
        old.submit_write([b"SET", b"kept", b"1"], lambda token, result: got.update(w=result),
                         None)
        cluster.reactor.advance(0)
        kept_at = old.core.log.last_index()
        cluster.run_until(lambda: cluster.nodes[keeper].core.log.last_index() >= kept_at,
                          what="the entry on the keeper")
        cluster.net.blocked.add((old.node_id, keeper))  # now the old leader is cut off
        cluster.run_until(lambda: cluster.nodes[keeper].core.role == Role.Leader,
                          seconds=60, what="the keeper elected")
        cluster.net.blocked.clear()
        cluster.run_until(lambda: "w" in got, what="an answer to the write")
        assert str(got["w"]) == "OK"
        assert old.metrics.proposals_failed["lost"] == 0
    finally:
        cluster.close()

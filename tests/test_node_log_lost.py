"""A node whose log lost entries it had acknowledged stops, saying what happened and
what to do (Raft's safety rests on that durability; etcd panics here)."""

from test_node_support import NodeCluster
from twisted.logger import globalLogPublisher

from kvraft.raft import Message, MsgType, Role


def test_a_heartbeat_committing_beyond_the_log_stops_the_follower(tmp_path):
    events = []
    cluster = NodeCluster(tmp_path)
    globalLogPublisher.addObserver(events.append)
    try:
        cluster.run_until(lambda: any(n.role == Role.Leader for n in cluster.nodes.values()),
                          what="a leader")
        leader = next(n for n in cluster.nodes.values() if n.role == Role.Leader)
        follower = next(n for n in cluster.nodes.values() if n.role != Role.Leader)
        cluster.run(0.5)
        last = follower.core.log.last_index()
        # What the leader sends once the follower's log has lost its acknowledged tail.
        follower.receive(Message(type=MsgType.MsgHeartbeat, to=follower.node_id,
                                 frm=leader.node_id, term=leader.core.term, commit=last + 3))
        assert follower._stopping
        cluster.run(0.5)  # and it stays out: no ticks, no answers
        assert follower.core.log.committed <= last
    finally:
        globalLogPublisher.removeObserver(events.append)
        cluster.close()
    critical = [e for e in events if e.get("log_level") is not None
                and e["log_level"].name == "critical" and e.get("node_id") == follower.node_id]
    assert critical, "no critical log line"
    text = critical[0]["log_format"]
    assert "kvraft member remove" in text and "data_dir" in text


def test_a_bad_message_from_a_peer_is_dropped_not_fatal(tmp_path):
    cluster = NodeCluster(tmp_path)
    try:
        cluster.run_until(lambda: any(n.role == Role.Leader for n in cluster.nodes.values()),
                          what="a leader")
        follower = next(n for n in cluster.nodes.values() if n.role != Role.Leader)
        # A vote answer nobody asked for, from a stranger: refused, the node runs on.
        follower.receive(Message(type=MsgType.MsgAppResp, to=follower.node_id, frm="n9",
                                 term=follower.core.term, index=10 ** 9))
        assert not follower._stopping
        cluster.run(0.5)
        assert not follower._stopping
    finally:
        cluster.close()

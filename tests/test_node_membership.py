"""Membership changes in the node service (Raft thesis 4.3): learners first, joint
consensus for voter changes, removing the leader, transfer, the preferred leader, and
the RAFT.* admin commands."""

import pytest
from test_node_support import NodeCluster
from twisted.python.usage import UsageError

from kvraft.membership import CHANGE_PENDING
from kvraft.raft import MsgType, Role
from kvraft.results import OK, CommandError

RAFT = {"promote_lag_entries_max": 5}


def members(c, node_id):
    """RAFT.MEMBERS as {id: {field: value}}."""
    rows = c.admin(node_id, "RAFT.MEMBERS")
    out = {}
    for row in rows:
        fields = dict(zip(row[::2], row[1::2], strict=True))
        out[fields[b"id"].decode()] = {k.decode(): v for k, v in fields.items()}
    return out


def add_learner(c, leader, node_id="n4"):
    node, address = c.add(node_id)
    assert node.membership.joining and node.core.role == Role.Follower
    assert c.admin(leader, "RAFT.ADD", node_id, address) == OK
    c.run_until(lambda: c.caught_up(leader, node_id), what=f"{node_id} caught up")
    return node, address


def test_a_new_node_joins_as_a_learner_through_a_snapshot(tmp_path):
    c = NodeCluster(tmp_path, raft=RAFT)
    try:
        leader = c.wait_leader()
        c.write(leader, b"SET", b"before", b"1")
        node, address = add_learner(c, leader)
        assert not node.membership.joining
        cs = node.core.tracker.conf_state()
        assert cs.learners == ("n4",) and cs.voters == ("n1", "n2", "n3")
        assert node.machine.query([b"GET", b"before"]) == b"1"
        assert node.snapshotter.meta.index > 1, "it started from a snapshot that has it"
        view = members(c, leader)
        assert view["n4"]["role"] == b"learner" and view["n4"]["address"] == address.encode()
        assert view[leader]["leader"] == 1 and view["n4"]["lag"] == 0
        # Every member learned where n4 is; n4 learned where everyone is.
        for other in ("n1", "n2", "n3"):
            assert c.nodes[other].transport.peers["n4"] == ("127.0.0.1", 7004)
            assert c.nodes[other].membership.addresses["n4"] == address
        assert set(node.transport.peers) == {"n1", "n2", "n3"}
        # A learner never votes: an election among the voters gets no vote request to it.
        c.net.sent.clear()
        c.stop(leader)
        c.wait_leader()
        assert not [m for m in c.net.sent if m.to == "n4" and m.type in
                    (MsgType.MsgVote, MsgType.MsgPreVote)]
        assert node.core.role == Role.Follower
    finally:
        c.close()


def test_learner_reads_locally_and_linearizably(tmp_path):
    c = NodeCluster(tmp_path, raft=RAFT)
    try:
        leader = c.wait_leader()
        node, _ = add_learner(c, leader)
        # The learner hears the leader (heartbeats, ReadIndex) but gets no entries.
        c.net.filter = lambda m: None if m.type == MsgType.MsgApp and m.to == "n4" else m
        c.write(leader, b"SET", b"x", b"new")
        # READONLY: the learner's own, stale state, at once.
        assert c.result(node.read([b"GET", b"x"], linearizable=False)) is None
        # Linearizable: the read index comes from the leader, and the learner answers
        # only once it has applied up to it.
        pending = node.read([b"GET", b"x"], linearizable=True)
        c.run(0.5)
        assert not pending.called
        c.net.filter = None
        assert c.result(pending) == b"new"
    finally:
        c.close()


def test_promote_waits_for_catch_up_and_goes_through_joint_consensus(tmp_path):
    c = NodeCluster(tmp_path, raft=RAFT)
    try:
        leader = c.wait_leader()
        add_learner(c, leader)
        c.net.isolate("n4")
        for i in range(10):
            c.write(leader, b"SET", b"k%d" % i, b"v")
        refused = c.admin(leader, "RAFT.PROMOTE", "n4")
        assert isinstance(refused, CommandError) and "not caught up" in str(refused)
        c.net.heal()
        c.run_until(lambda: c.caught_up(leader, "n4"), what="n4 caught up")
        c.run(1.0)
        c.net.sent.clear()
        joint_seen = []
        d = c.nodes[leader].admin([b"RAFT.PROMOTE", b"n4"])
        # A second change while this one is pending is refused clearly.
        assert c.admin(leader, "RAFT.REMOVE", "n3") == CommandError(CHANGE_PENDING)
        c.run_until(lambda: joint_seen.append(
            c.nodes["n2"].core.tracker.is_joint()) or d.called, what="promote done")
        assert d.result == OK
        assert True in joint_seen, "C_old,new was in effect on a follower at some point"
        for node in c.nodes.values():
            cs = node.core.tracker.conf_state()
            assert cs.voters == ("n1", "n2", "n3", "n4") and not cs.is_joint()
        assert members(c, leader)["n4"]["role"] == b"voter"
    finally:
        c.close()


def test_removing_the_leader_hands_leadership_over(tmp_path):
    c = NodeCluster(tmp_path, raft=RAFT)
    try:
        old = c.wait_leader()
        c.net.sent.clear()
        assert c.admin(old, "RAFT.REMOVE", old) == OK
        # Answered once C_old,new is committed (C_new follows whoever leads).
        assert c.nodes[old].core.tracker.is_joint()
        new = c.run_until(lambda: c.leader() not in (None, old) and c.leader(), seconds=5,
                          what="a new leader")
        # Handed over while joint (no election timeout to wait for), then C_new.
        assert {m.to for m in c.net.sent if m.type == MsgType.MsgTimeoutNow} == {new}
        c.run_until(lambda: not any(n.core.tracker.is_joint() for i, n in c.nodes.items()
                                    if i != old), what="C_new everywhere")
        for node_id in c.nodes:
            if node_id != old:
                cs = c.nodes[node_id].core.tracker.conf_state()
                assert old not in cs.members() and not cs.is_joint()
                assert old not in c.nodes[node_id].transport.peers
        assert c.nodes[old].core.role == Role.Follower
        assert c.write(new, b"SET", b"after", b"1") == OK
        # Removed: it no longer takes part (nobody sends it the new entry).
        c.run(1.0)
        assert c.nodes[old].machine.query([b"GET", b"after"]) is None
    finally:
        c.close()


def test_a_change_survives_a_leader_crash_mid_way(tmp_path):
    c = NodeCluster(tmp_path, raft=RAFT)
    try:
        leader = c.wait_leader()
        add_learner(c, leader)
        c.run(1.0)
        c.nodes[leader].admin([b"RAFT.PROMOTE", b"n4"])
        others = [n for n in c.nodes if n != leader]
        c.run_until(lambda: all(c.nodes[n].core.tracker.is_joint() for n in others),
                    what="the joint configuration applied")
        c.stop(leader)  # before it could propose C_new
        c.wait_leader()
        c.run_until(lambda: all(not c.nodes[n].core.tracker.is_joint() for n in others),
                    what="the new leader left the joint configuration")
        for n in others:
            assert "n4" in c.nodes[n].core.tracker.voters
    finally:
        c.close()


def test_membership_and_addresses_survive_a_restart(tmp_path):
    c = NodeCluster(tmp_path, raft=RAFT)
    try:
        leader = c.wait_leader()
        _, address = add_learner(c, leader)
        follower = next(n for n in ("n1", "n2", "n3") if n != leader)
        c.stop(follower)
        node = c.start(follower)
        c.run_until(lambda: c.caught_up(leader, follower), what="restarted caught up")
        assert node.core.tracker.learners == frozenset({"n4"})
        assert node.membership.addresses["n4"] == address
        assert node.transport.peers["n4"] == ("127.0.0.1", 7004)
    finally:
        c.close()


def test_admin_errors_say_what_to_do(tmp_path):
    c = NodeCluster(tmp_path, raft=RAFT)
    try:
        leader = c.wait_leader()
        follower = next(n for n in c.nodes if n != leader)
        refused = c.admin(follower, "RAFT.ADD", "n4", "127.0.0.1:7004")
        assert str(refused).startswith(f"NOTLEADER {leader} ")
        assert "already a voter" in str(c.admin(leader, "RAFT.ADD", "n2", "127.0.0.1:1"))
        assert "port" in str(c.admin(leader, "RAFT.ADD", "n4", "127.0.0.1:0"))
        assert "node id" in str(c.admin(leader, "RAFT.ADD", "n 4", "127.0.0.1:7"))
        assert "not a member" in str(c.admin(leader, "RAFT.REMOVE", "n9"))
        assert "only learners" in str(c.admin(leader, "RAFT.PROMOTE", "n2"))
        assert "not a voter" in str(c.admin(leader, "RAFT.TRANSFER", "n9"))
    finally:
        c.close()


def test_transfer_from_any_node_and_the_preferred_leader_comes_back(tmp_path):
    c = NodeCluster(tmp_path, preferred_leader="n1")
    try:
        first = c.wait_leader()
        # Within a few election timeouts the preferred node leads (if it did not at once).
        c.run_until(lambda: c.leader() == "n1", seconds=15, what="n1 leads")
        # Asked on a follower, the transfer is forwarded to the leader.
        assert c.admin("n3", "RAFT.TRANSFER", "n2") == OK
        assert c.leader() == "n2"
        # n1 is healthy and caught up: after the hold time, leadership goes back to it.
        c.run_until(lambda: c.leader() == "n1", seconds=10, what="back to n1")
        assert first in c.nodes
    finally:
        c.close()


def test_a_joint_change_survives_a_full_restart(tmp_path):
    """C_old,new is in the log (and maybe a snapshot); after every node restarts, the
    configuration is rebuilt from the snapshot plus the log, and the new leader
    completes the change."""
    c = NodeCluster(tmp_path, raft=RAFT)
    try:
        leader = c.wait_leader()
        add_learner(c, leader)
        c.run(1.0)
        c.nodes[leader].admin([b"RAFT.PROMOTE", b"n4"])
        # Stop everyone the moment C_old,new is applied everywhere, before C_new.
        c.net.filter = lambda m: None if m.type in (MsgType.MsgApp, MsgType.MsgHeartbeat) \
            and all(n.core.tracker.is_joint() for n in c.nodes.values()) else m
        c.run_until(lambda: all(n.core.tracker.is_joint() for n in c.nodes.values()),
                    what="C_old,new everywhere")
        for node_id in list(c.nodes):
            c.stop(node_id)
        c.net.filter = None
        for node_id in ("n1", "n2", "n3", "n4"):
            c.start(node_id)
        c.wait_leader()
        c.run_until(lambda: all(not n.core.tracker.is_joint()
                                and n.core.tracker.voters == frozenset({"n1", "n2", "n3", "n4"})
                                for n in c.nodes.values()), what="C_new after the restart")
    finally:
        c.close()


def test_twistd_join_flag_sets_cluster_join(tmp_path):
    from kvraft.tap import Options
    path = tmp_path / "n4.toml"
    path.write_text('[node]\nid = "n4"\ndata_dir = "d"\n'
                    '[cluster]\nmembers = { n1 = "127.0.0.1:7001" }\n'
                    '[peer]\nlisten = "127.0.0.1:7004"\n'
                    '[tls]\nca = "ca.pem"\ncert = "n4.pem"\nkey = "n4-key.pem"\n')
    options = Options()
    options.parseOptions(["--config", str(path), "--join"])
    assert options["loaded"].join is True
    with pytest.raises(UsageError, match="not listed"):
        Options().parseOptions(["--config", str(path)])

"""SimCluster as a scripting harness: elections, partitions, crashes, restarts,
snapshots, and the persistence window, with the safety monitor watching throughout."""

from __future__ import annotations

import pytest

from kvraft.raft import Role
from kvraft.testing import NetworkFaults, NodeSettings, SimCluster


def converge(c: SimCluster, steps_max: int = 5000) -> None:
    """Run until a leader exists and every live node applied its whole log."""
    def done() -> bool:
        leader = c.leader()
        if leader is None:
            return False
        last = c.nodes[leader].core.status()["last_index"]
        return all(c.nodes[n].applied == last for n in c.names if c.nodes[n].alive)
    assert c.run_until_true(done, steps_max), c.describe_nodes()


@pytest.mark.parametrize("size", [3, 5, 7])
def test_a_leader_is_elected_and_writes_reach_every_node(size):
    c = SimCluster(size, seed=size)
    leader = c.run_until_leader()
    for i in range(10):
        assert c.propose_put(leader, f"k{i % 3}", i)
    converge(c)
    for name in c.names:
        assert c.kv_state(name) == {"k0": 9, "k1": 7, "k2": 8}
    assert c.monitor.elections >= 1 and c.monitor.commit_index >= 11


def test_isolated_leader_steps_down_and_the_majority_moves_on():
    """Raft 5.2 with check-quorum (thesis 6.2): the cut-off leader stops leading."""
    c = SimCluster(5, seed=2)
    old = c.run_until_leader()
    old_term = c.nodes[old].core.term
    c.isolate(old)
    new = c.run_until_true(lambda: c.leader() not in (None, old), 3000)
    assert new, c.describe_nodes()
    new_leader = c.leader()
    assert c.nodes[new_leader].core.term > old_term
    assert c.run_until_true(lambda: c.nodes[old].core.role != Role.Leader, 1000)
    assert c.propose_put(new_leader, "x", 1)
    assert not c.propose_put(old, "x", 2) or c.nodes[old].core.role != Role.Leader
    c.heal()
    converge(c)
    assert all(c.kv_state(n).get("x") == 1 for n in c.names)


def test_minority_partition_cannot_commit():
    c = SimCluster(5, seed=4)
    leader = c.run_until_leader()
    converge(c)
    minority = (leader, next(n for n in c.names if n != leader))
    c.partition(minority)
    before = c.nodes[leader].core.status()["commit_index"]
    c.propose_put(leader, "lost", 1)  # may or may not be accepted; must not commit
    c.run_for(1000)
    for name in minority:
        assert c.nodes[name].core.status()["commit_index"] == before
        assert "lost" not in c.kv_state(name)


def test_crashed_follower_catches_up_after_restart():
    c = SimCluster(3, seed=5)
    leader = c.run_until_leader()
    follower = next(n for n in c.names if n != leader)
    c.crash(follower)
    assert not c.nodes[follower].alive
    for i in range(20):
        assert c.propose_put(leader, "k", i)
    c.run_for(300)
    c.restart(follower)
    converge(c)
    assert c.kv_state(follower) == {"k": 19}
    assert c.stats["crashes"] == 1 and c.stats["restarts"] == 1


def test_lagging_follower_is_sent_a_snapshot():
    c = SimCluster(3, seed=6, settings=NodeSettings(snapshot_every=5))
    leader = c.run_until_leader()
    follower = next(n for n in c.names if n != leader)
    c.crash(follower)
    for i in range(40):
        assert c.propose_put(leader, f"k{i % 4}", i)
        c.run_for(20)
    c.restart(follower)
    converge(c)
    assert c.kv_state(follower) == c.kv_state(leader) == {"k0": 36, "k1": 37, "k2": 38,
                                                          "k3": 39}
    assert any("restore" in line and follower in line for line in c.recent_events()) \
        or c.nodes[follower].storage.durable.base_index > 0
    assert c.stats["snapshots"] > 0


def test_whole_cluster_restart_keeps_committed_writes():
    c = SimCluster(3, seed=7, settings=NodeSettings(snapshot_every=4))
    leader = c.run_until_leader()
    for i in range(12):
        c.propose_put(leader, "k", i)
    converge(c)
    for name in c.names:
        c.crash(name)
    for name in c.names:
        c.restart(name)
    c.run_until_leader()
    converge(c)
    assert all(c.kv_state(n) == {"k": 11} for n in c.names)


def test_crash_inside_the_persistence_window_loses_the_write():
    settings = NodeSettings(persist_steps_max=50, lose_unsynced_prefix=False)
    c = SimCluster(3, seed=8, settings=settings,
                   faults=NetworkFaults(delay_steps_min=1, delay_steps_max=1))
    leader = c.run_until_leader()
    converge(c)
    durable_before = c.nodes[leader].storage.durable.last_index
    c.isolate(leader)  # nobody else gets the entry either
    assert c.propose_put(leader, "x", 1)
    c.run_until_true(lambda: c.nodes[leader].storage.live.last_index > durable_before, 50,
                     poll_steps=1)
    assert c.nodes[leader].storage.unsynced, "the write should still be in flight"
    c.crash(leader)
    assert c.nodes[leader].storage.durable.last_index == durable_before
    c.heal()
    c.restart(leader)
    c.run_until_leader()
    converge(c)
    assert all("x" not in c.kv_state(n) for n in c.names)


def test_leadership_transfer():
    c = SimCluster(3, seed=9)
    leader = c.run_until_leader()
    converge(c)
    target = next(n for n in c.names if n != leader)
    c.transfer_leadership(leader, target)
    assert c.run_until_true(lambda: c.leader() == target, 1000), c.describe_nodes()


def test_one_way_and_bridge_partitions_keep_safety():
    c = SimCluster(5, seed=10)
    leader = c.run_until_leader()
    others = [n for n in c.names if n != leader]
    for other in others:
        c.block(leader, other)  # the leader can hear but not speak
    c.run_for(1500)
    c.heal()
    c.bridge(tuple(others[:2]), leader, tuple(others[2:]))
    c.run_for(1500)
    c.heal()
    new = c.run_until_leader()
    assert c.propose_put(new, "after", 1)
    converge(c)
    assert all(c.kv_state(n).get("after") == 1 for n in c.names)


def test_trace_is_readable():
    c = SimCluster(3, seed=11)
    c.run_until_leader()
    events = c.recent_events()
    assert any("MsgVote" in line for line in events)
    assert any(" leader " in line for line in events)

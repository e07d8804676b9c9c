"""Membership changes in the simulator: a scripted grow-and-shrink with clients running
(linearizability checked), the durability invariant over joint configurations, and
membership as a nemesis fault."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from kvraft.raft import ConfChange, ConfChangeSingle, ConfChangeType, ConfState, Entry, Role
from kvraft.testing import InvariantViolation, NetworkFaults, NodeSettings, SimCluster
from kvraft.testing.clients import ClientConfig, SimClient
from kvraft.testing.durable_storage import LogImage
from kvraft.testing.invariants import SafetyMonitor
from kvraft.testing.linearizability import check
from kvraft.testing.sim import SimConfig, describe_violation, run_seed


def _single(kind: ConfChangeType, node: str, joint: bool = False) -> ConfChange:
    return ConfChange((ConfChangeSingle(kind, node),), joint=joint)


def _change(c: SimCluster, cc: ConfChange, done: Callable[[], bool],
            attempts: int = 10) -> None:
    """Propose ``cc`` at the leader until ``done()`` holds (a proposal may be dropped or
    lost in a leader change)."""
    for _ in range(attempts):
        leader = c.run_until_leader()
        c.propose_conf_change(leader, cc)
        if c.run_until_true(done, 3000):
            return
    raise AssertionError(f"change {cc} never took effect: {c.describe_nodes()}")


def _settled(c: SimCluster) -> bool:
    return not c.conf.is_joint()


def _caught_up(c: SimCluster, node: str) -> bool:
    leader = c.leader()
    if leader is None:
        return False
    core = c.nodes[leader].core
    pr = core.tracker.progress.get(node)
    return pr is not None and pr.match >= core.log.committed


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_grow_three_to_five_through_learners_and_shrink_removing_the_leader(seed):
    c = SimCluster(3, seed=seed, faults=NetworkFaults(delay_steps_max=3, drop_rate=0.02),
                   settings=NodeSettings(persist_steps_max=3))
    history: list[dict] = []
    clients = [SimClient(i + 1, tuple(c.members()), c.rng, c, history, ClientConfig())
               for i in range(3)]
    for client in clients:
        c.add_client(client)
        c.client_wake(client, 1)
    c.run_until_leader()
    c.run_for(500)

    # Grow: each new node joins as a learner, catches up from a snapshot, is promoted
    # (one by a simple change, one by a joint change the driver leaves explicitly).
    for joint in (False, True):
        joiner = c.add_node()
        _change(c, _single(ConfChangeType.AddLearner, joiner),
                lambda j=joiner: j in c.conf.learners)
        assert c.run_until_true(lambda j=joiner: _caught_up(c, j), 3000)
        node = c.nodes[joiner]
        assert node.storage.durable.base_index > 0, "the learner did not start from a snapshot"
        assert joiner in node.core.tracker.learners
        _change(c, _single(ConfChangeType.AddVoter, joiner, joint),
                lambda j=joiner: j in c.conf.voters and _settled(c))
        assert set(client.nodes for client in clients) == {tuple(c.members())}
    assert len(c.conf.voters) == 5 and not c.conf.learners
    c.run_for(500)

    # Shrink: remove the leader (joint, left explicitly), then another voter (simple).
    leader = c.run_until_leader()
    commit_before = c.monitor.commit_index
    _change(c, _single(ConfChangeType.RemoveNode, leader, joint=True),
            lambda: leader not in c.conf.members() and _settled(c))
    assert c.run_until_true(lambda: c.nodes[leader].retired, 1000)
    new_leader = c.run_until_leader()
    assert new_leader != leader and new_leader in c.conf.voters
    other = next(n for n in c.conf.voters if n != new_leader)
    _change(c, _single(ConfChangeType.RemoveNode, other),
            lambda: other not in c.conf.members())
    assert len(c.conf.voters) == 3
    c.run_for(1000)
    assert c.monitor.commit_index > commit_before + 10, "writes stopped after the shrink"

    for client in clients:
        client.stop()
    c.run_for(3000)
    members = c.members()
    assert len({c.nodes[n].applied for n in members}) == 1, c.describe_nodes()
    assert all(c.kv_state(n) == c.kv_state(members[0]) for n in members)
    assert sum(1 for r in history if r["type"] == "ok") > 100
    result = check(history, timeout_s=30)
    assert result.ok, result.explanation


def test_a_new_node_never_campaigns_before_it_is_added():
    c = SimCluster(3, seed=4)
    c.run_until_leader()
    joiner = c.add_node()
    c.run_for(3000)  # many election timeouts
    node = c.nodes[joiner]
    assert node.alive and node.core.role == Role.Follower and node.core.term == 0
    assert joiner not in c.conf.members() and joiner not in c.members()


def test_removing_a_voter_may_not_lose_the_configuration_after_a_restart():
    """A removed-then-restarted cluster member rebuilds its configuration from its
    snapshot (taken with the configuration in effect) and the log after it."""
    c = SimCluster(5, seed=6, settings=NodeSettings(snapshot_every=5))
    leader = c.run_until_leader()
    for i in range(20):
        c.propose_put(leader, "k", i)
    victim = next(n for n in c.names if n != leader)
    _change(c, _single(ConfChangeType.RemoveNode, victim), lambda: victim not in c.conf.voters)
    for i in range(20):
        c.propose_put(c.run_until_leader(), "k", 100 + i)
    c.run_for(500)
    survivor = next(n for n in c.conf.voters if n != c.leader())
    c.crash(survivor)
    c.restart(survivor)
    assert c.run_until_true(
        lambda: c.nodes[survivor].core.tracker.conf_state().voters == c.conf.voters, 2000)
    assert c.nodes[survivor].core.tracker.conf_state().voters == c.conf.voters


# --- the durability invariant with configurations --------------------------------------

def _ents(term: int, lo: int, hi: int) -> list[Entry]:
    return [Entry(term=term, index=i, data=f"{term}/{i}".encode()) for i in range(lo, hi + 1)]


def test_durability_counts_both_halves_of_a_joint_configuration():
    names = ("n1", "n2", "n3", "n4", "n5")
    m = SafetyMonitor(names[:3])
    logs = {n: LogImage() for n in names}
    for n in ("n1", "n2", "n4"):
        logs[n].append(_ents(1, 1, 3))
    # Joint {n1,n2,n3} & {n1,n4,n5}: n1,n2 are a majority of the outgoing half and n1,n4
    # of the incoming one.
    joint = ConfState(voters=("n1", "n4", "n5"), voters_outgoing=("n1", "n2", "n3"))
    m.note_commit("n1", 3, 1, joint)
    m.check_committed_durable(logs)
    logs["n4"] = LogImage()  # the incoming half loses its majority
    with pytest.raises(InvariantViolation, match=r"voters \['n1', 'n4', 'n5'\]"):
        m.check_committed_durable(logs)


def test_durability_uses_the_committing_configuration_not_the_initial_nodes():
    m = SafetyMonitor(("n1", "n2", "n3"))
    logs = {n: LogImage() for n in ("n1", "n2", "n3", "n4", "n5")}
    for n in ("n1", "n2"):
        logs[n].append(_ents(1, 1, 2))
    m.note_commit("n1", 2, 1, ConfState(voters=("n1", "n2", "n3", "n4", "n5")))
    with pytest.raises(InvariantViolation, match="fewer than a quorum of 3"):
        m.check_committed_durable(logs)  # 2 of 5 is no quorum, though 2 of 3 would be
    logs["n5"].append(_ents(1, 1, 2))
    m.check_committed_durable(logs)


# --- membership as a nemesis fault ----------------------------------------------------------

def test_membership_fault_runs_alone_and_with_everything():
    for faults in (frozenset({"membership"}),
                   frozenset({"membership", "crash", "snapshot", "drop"})):
        config = SimConfig(nodes=3, steps=6000, settle_steps=2000, faults=faults)
        changes = 0
        for seed in range(1, 5):
            report = run_seed(seed, config, raise_violation=False)
            assert report.violation is None, describe_violation(report, config)
            assert report.converged
            changes += report.faults["conf_changes"]
        assert changes >= 8, f"too few configuration changes: {changes}"

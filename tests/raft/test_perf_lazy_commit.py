"""``RaftConfig.lazy_commit_announce``: no empty MsgApp just to announce a commit index;
followers learn it from the next MsgApp with entries or the next heartbeat (Raft 5.3:
followers learn the commit index from AppendEntries, heartbeats included)."""

import random

import pytest
from raft_harness import Cluster

from kvraft.raft import MsgType

VOTERS = ("n1", "n2", "n3")


def _sent_after_commit(lazy: bool) -> list:
    c = Cluster(VOTERS, lazy_commit_announce=lazy)
    c.elect("n1")
    c.propose("n1", b"x")
    c.drain("n1")  # the leader's Ready: entry x and its MsgApps
    c.deliver()
    for node in ("n2", "n3"):
        c.drain(node)  # followers persist x and acknowledge it
    c.deliver()  # the acknowledgements reach the leader: x commits
    c.drain("n1")
    return [m for m in c.inflight if m.frm == "n1"]


def test_without_the_option_the_leader_announces_a_commit_with_empty_appends():
    sent = _sent_after_commit(lazy=False)
    assert {(m.type, m.to) for m in sent if not m.entries} >= {
        (MsgType.MsgApp, "n2"), (MsgType.MsgApp, "n3")}


def test_with_the_option_no_empty_append_announces_a_commit():
    sent = _sent_after_commit(lazy=True)
    assert [m for m in sent if m.type == MsgType.MsgApp and not m.entries] == []


def test_followers_learn_the_commit_from_the_next_heartbeat():
    c = Cluster(VOTERS, lazy_commit_announce=True)
    c.elect("n1")
    c.propose("n1", b"x")
    c.stabilize()
    assert c.applied_data("n1") == [b"x"]
    assert c.applied_data("n2") == [], "not announced yet"
    for _ in range(c.core("n1").config.heartbeat_ticks):
        c.tick("n1")
    c.stabilize()
    assert c.applied_data("n2") == c.applied_data("n3") == [b"x"]


def test_followers_learn_the_commit_from_the_next_append():
    c = Cluster(VOTERS, lazy_commit_announce=True)
    c.elect("n1")
    c.propose("n1", b"x")
    c.stabilize()
    c.propose("n1", b"y")
    c.stabilize()
    assert c.applied_data("n2") == [b"x"], "y's MsgApp carried x's commit"


@pytest.mark.parametrize("seed", range(6))
def test_lossy_network_still_replicates_and_commits_everything(seed):
    rng = random.Random(seed)
    c = Cluster(VOTERS, lazy_commit_announce=True)
    c.elect("n1")
    proposed = []
    c.intercept = lambda m: None if rng.random() < 0.2 else m
    for i in range(40):
        leader = c.leaders()[0] if c.leaders() else None
        if leader is not None and rng.random() < 0.6:
            try:
                c.propose(leader, b"w%d" % i)
                proposed.append(b"w%d" % i)
            except Exception:
                pass
        for node in c.ids:
            c.tick(node)
            c.drain(node)
        c.deliver()
    c.intercept = None
    for _ in range(30):
        for node in c.ids:
            c.tick(node)
        c.stabilize()
    logs = [c.applied_data(node) for node in c.ids]
    assert logs[0] == logs[1] == logs[2], "every node applied the same entries"
    committed = set(logs[0])
    assert committed <= set(proposed)


def test_a_committed_configuration_change_is_announced_at_once():
    from kvraft.raft import ConfChange, ConfChangeSingle, ConfChangeType
    c = Cluster(VOTERS, lazy_commit_announce=True)
    c.elect("n1")
    c.stabilize()
    c.core("n1").propose_conf_change(ConfChange(changes=(
        ConfChangeSingle(ConfChangeType.RemoveNode, "n3"),)))
    c.stabilize()
    cc_entries = [e for e in c.applied["n2"] if e.type.name == "ConfChange"]
    assert cc_entries, "the follower applied the change without waiting for a heartbeat"

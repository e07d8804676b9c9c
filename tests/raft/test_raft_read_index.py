"""ReadIndex (Raft thesis 6.4): linearizable reads without writing to the log."""

import pytest
from raft_harness import Cluster, make_core, storage_with

from kvraft.raft import MsgType, ProposalDropped, ReadState, Role
from kvraft.raft.types import ConfState

VOTERS = ("n1", "n2", "n3")


def heartbeats(msgs):
    return [m for m in msgs if m.type == MsgType.MsgHeartbeat]


def test_read_index_6_4_leader_confirms_with_a_heartbeat_round():
    c = Cluster(VOTERS)
    c.elect("n1")
    leader = c.core("n1")
    leader.read_index(b"r1")
    rd = leader.ready()
    beats = heartbeats(rd.messages)
    assert [m.to for m in beats] == ["n2"], "the leader and n2 make a quorum"
    assert len({m.context for m in beats}) == 1 and beats[0].context
    assert rd.read_states == []
    c.inflight.extend(rd.messages)
    leader.advance(rd)
    c.stabilize()
    assert c.read_states["n1"] == [ReadState(index=1, request_ctx=b"r1")]


def test_read_index_6_4_reads_in_the_same_round_share_one_confirmation():
    c = Cluster(VOTERS)
    c.elect("n1")
    leader = c.core("n1")
    for i in range(5):
        leader.read_index(b"r%d" % i)
    rd = leader.ready()
    assert len(heartbeats(rd.messages)) == 1, "one heartbeat for five reads"
    c.inflight.extend(rd.messages)
    leader.advance(rd)
    leader.read_index(b"late")  # after the round's heartbeats left: a new round
    rd2 = leader.ready()
    assert len(heartbeats(rd2.messages)) == 1
    assert heartbeats(rd2.messages)[0].context != heartbeats(rd.messages)[0].context
    c.inflight.extend(rd2.messages)
    leader.advance(rd2)
    c.stabilize()
    assert [r.request_ctx for r in c.read_states["n1"]] == \
        [b"r%d" % i for i in range(5)] + [b"late"]


def test_read_index_6_4_joining_read_raises_the_round_index_to_the_current_commit():
    c = Cluster(VOTERS)
    c.elect("n1")
    leader = c.core("n1")
    leader.propose(b"w")
    rd = leader.ready()  # MsgApp for index 2 out
    c.inflight.extend(rd.messages)
    c.storage["n1"].append(rd.entries)
    leader.advance(rd)
    c.deliver()
    c.drain("n2")
    leader.read_index(b"before-commit")  # opens a round at commit 1 (not yet sent)
    c.deliver()  # n2's ack commits index 2
    assert leader.log.committed == 2
    leader.read_index(b"after-commit")  # joins the still-open round
    c.stabilize()
    assert c.read_states["n1"] == [ReadState(2, b"before-commit"),
                                   ReadState(2, b"after-commit")]


def test_read_index_6_4_needs_a_quorum():
    c = Cluster(VOTERS, check_quorum=False)
    c.elect("n1")
    c.isolate("n1")
    c.core("n1").read_index(b"r")
    for _ in range(5):
        c.tick("n1")
        c.stabilize()
    assert c.read_states["n1"] == []
    c.heal()
    c.tick("n1")  # later heartbeats carry the pending round's context
    c.stabilize()
    assert c.read_states["n1"] == [ReadState(1, b"r")]


def test_read_index_6_4_follower_read_is_forwarded_and_answered():
    c = Cluster(VOTERS)
    c.elect("n1")
    c.propose("n1", b"w")
    c.stabilize()
    c.core("n3").read_index(b"f")
    (fwd,) = c.core("n3").ready().messages
    assert (fwd.type, fwd.to, fwd.context) == (MsgType.MsgReadIndex, "n1", b"f")
    c.inflight.append(fwd)
    c.core("n3").advance(c.core("n3")._outstanding)
    c.stabilize()
    assert c.read_states["n3"] == [ReadState(2, b"f")]
    assert c.read_states["n1"] == []


def test_read_index_6_4_new_leader_defers_reads_until_its_noop_commits():
    c = Cluster(VOTERS, pre_vote=False)
    leader = c.core("n1")
    leader.campaign()
    c.drain("n1")
    c.deliver()
    c.drain("n2")
    c.drain("n3")
    c.deliver()  # n1 wins; its no-op (index 1) is not yet committed
    assert leader.log.committed == 0
    leader.read_index(b"r")
    assert leader.read_only.last_ctx() == b"", "no round before the term's first commit"
    assert not heartbeats(leader._msgs)
    c.stabilize()
    assert c.read_states["n1"] == [ReadState(1, b"r")]


def test_read_index_6_4_single_node_answers_at_once():
    c = Cluster(["n1"])
    c.elect("n1")
    c.core("n1").read_index(b"solo")
    assert c.core("n1").ready().read_states == [ReadState(1, b"solo")]


def test_read_index_6_4_restarted_single_node_waits_for_its_noop():
    # Entries 2 and 3 were committed before the crash, but the commit index is persisted
    # lazily: the saved one says 1. Answering at once would serve a read at index 1.
    storage = storage_with([(1, 1), (2, 1), (3, 1)], term=1, vote="n1", commit=1)
    core = make_core("n1", ["n1"], storage)
    core.campaign()
    rd = core.ready()
    storage.set_hard_state(rd.hard_state)
    core.advance(rd)  # our own vote is durable: leader, no-op 4 appended, commit still 1
    assert core.role == Role.Leader and core.log.committed == 1
    core.read_index(b"after-restart")
    answers = []
    while core.has_ready():
        rd = core.ready()
        answers.extend(rd.read_states)
        storage.append(rd.entries)
        if rd.hard_state is not None:
            storage.set_hard_state(rd.hard_state)
        core.advance(rd)
    assert answers == [ReadState(4, b"after-restart")]


def test_read_index_6_4_lease_option_answers_without_a_round_inside_the_lease():
    c = Cluster(VOTERS, read_only_option="lease")
    for _ in range(c.core("n1").config.election_ticks):  # the boot vote promise
        for node in VOTERS:
            c.tick(node)
    c.elect("n1")
    leader = c.core("n1")
    leader.read_index(b"before-any-ack")  # no heartbeat answered yet: a round
    rd = leader.ready()
    assert rd.read_states == [] and len(heartbeats(rd.messages)) == 1
    c.inflight.extend(rd.messages)
    leader.advance(rd)
    c.stabilize()
    assert c.read_states["n1"] == [ReadState(1, b"before-any-ack")]
    leader.read_index(b"inside")  # the round's answers started a lease
    rd = leader.ready()
    assert rd.read_states == [ReadState(1, b"inside")] and not heartbeats(rd.messages)


def test_read_index_6_4_no_leader_refuses():
    core = make_core("n1", VOTERS)
    with pytest.raises(ProposalDropped) as info:
        core.read_index(b"x")
    assert info.value.reason == "no-leader"


# -- whom a round asks ----------------------------------------------------------------

def test_read_index_6_4_a_round_asks_only_the_voters_a_quorum_needs():
    c = Cluster(("n1", "n2", "n3", "n4", "n5", "l6"), voters=("n1", "n2", "n3", "n4", "n5"),
                learners=("l6",))
    c.elect("n1")
    leader = c.core("n1")
    assert leader.tracker.learners == frozenset({"l6"})
    leader.read_index(b"r")
    rd = leader.ready()
    assert [m.to for m in heartbeats(rd.messages)] == ["n2", "n3"], \
        "two followers and the leader are three of five; a learner does not count"
    c.inflight.extend(rd.messages)
    leader.advance(rd)
    c.stabilize()
    assert c.read_states["n1"] == [ReadState(1, b"r")]


def test_read_index_6_4_a_round_in_a_joint_configuration_asks_a_quorum_of_both_halves():
    c = Cluster(("n1", "n2", "n3", "n4", "n5"))
    c.elect("n1")
    leader = c.core("n1")
    leader.tracker.set_config(ConfState(voters=("n1", "n4", "n5"),
                                        voters_outgoing=("n1", "n2", "n3")),
                              leader.log.last_index())
    leader.read_index(b"j")
    asked = [m.to for m in heartbeats(leader.ready().messages)]
    assert asked == ["n2", "n4"], "one more voter of each half, none it does not need"


def test_read_index_6_4_a_follower_read_asks_the_follower_itself():
    c = Cluster(VOTERS)
    c.elect("n1")
    follower = c.core("n3")
    follower.read_index(b"f")
    c.drain("n3")  # its MsgReadIndex to n1
    c.deliver()
    leader = c.core("n1")
    (beat,) = heartbeats(leader.ready().messages)
    assert beat.to == "n3", "the asker and the leader are a quorum; n3 waits on it anyway"
    c.inflight.append(beat)
    leader.advance(leader._outstanding)
    c.stabilize()
    assert c.read_states["n3"] == [ReadState(1, b"f")]


def test_read_index_6_4_a_quiet_asked_voter_delays_a_round_by_one_heartbeat_at_most():
    c = Cluster(VOTERS)
    c.elect("n1")
    leader = c.core("n1")
    c.partition(["n1", "n3"], ["n2"])  # n2 is asked first (by id) but cannot answer
    leader.read_index(b"r")
    c.stabilize()
    assert c.read_states["n1"] == [], "only n2 was asked"
    c.tick("n1", leader.config.heartbeat_ticks)  # the periodic heartbeat asks n3 too
    c.stabilize()
    assert c.read_states["n1"] == [ReadState(1, b"r")]
    leader.read_index(b"next")
    (beat,) = heartbeats(leader.ready().messages)
    assert beat.to == "n3", "the voter that completed the round is asked first"

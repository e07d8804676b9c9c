"""The ordering rule (DESIGN.md §1): nothing speaks for state that is not yet durable."""

import pytest
from raft_harness import Cluster, make_core, persist_and_advance, storage_with

from kvraft.raft import AFTER_PERSIST_TYPES, Entry, Message, MsgType, Role

VOTERS = ("n1", "n2", "n3")


def test_ordering_append_acknowledgement_waits_for_persistence():
    core = make_core("n2", VOTERS)
    core.step(Message(type=MsgType.MsgApp, frm="n1", to="n2", term=1, index=0, log_term=0,
                      entries=[Entry(term=1, index=1)], commit=0))
    rd = core.ready()
    assert rd.entries and rd.must_sync
    assert [m.type for m in rd.messages] == []
    assert [m.type for m in rd.messages_after_persist] == [MsgType.MsgAppResp]


@pytest.mark.parametrize("kind, resp", [(MsgType.MsgVote, MsgType.MsgVoteResp),
                                        (MsgType.MsgPreVote, MsgType.MsgPreVoteResp)])
def test_ordering_vote_answers_wait_for_persistence(kind, resp):
    core = make_core("n2", VOTERS, check_quorum=False)
    core.step(Message(type=kind, frm="n1", to="n2", term=1))
    rd = core.ready()
    assert [m.type for m in rd.messages_after_persist] == [resp]
    assert rd.messages == []
    if kind == MsgType.MsgVote:
        assert rd.hard_state.vote == "n1" and rd.must_sync


def test_ordering_leader_appends_go_out_before_its_own_write():
    c = Cluster(VOTERS)
    c.elect("n1")
    leader = c.core("n1")
    leader.propose(b"x")
    rd = leader.ready()
    assert [e.data for e in rd.entries] == [b"x"]
    assert {m.type for m in rd.messages} == {MsgType.MsgApp}
    assert rd.messages_after_persist == []
    leader.advance(rd)


def test_ordering_every_after_persist_kind_is_a_durable_answer():
    assert AFTER_PERSIST_TYPES == {MsgType.MsgAppResp, MsgType.MsgVoteResp,
                                   MsgType.MsgPreVoteResp}
    c = Cluster(VOTERS)
    c.elect("n1")
    for i in range(5):
        c.propose("n1", b"%d" % i)
        c.tick("n1")
        for node in c.ids:
            core = c.core(node)
            while core.has_ready():
                rd = core.ready()
                assert all(m.type not in AFTER_PERSIST_TYPES for m in rd.messages)
                assert all(m.type in AFTER_PERSIST_TYPES for m in rd.messages_after_persist)
                c.storage[node].append(rd.entries)
                if rd.hard_state:
                    c.storage[node].set_hard_state(rd.hard_state)
                c.inflight.extend(rd.messages + rd.messages_after_persist)
                core.advance(rd)
        c.deliver()


def test_ordering_single_node_leader_commits_only_after_advance():
    c = Cluster(["n1"])
    c.elect("n1")
    leader = c.core("n1")
    leader.propose(b"x")
    rd = leader.ready()
    assert rd.committed_entries == [] and leader.log.committed == 1
    assert leader.tracker.progress["n1"].match == 1, "own match waits for durability"
    c.storage["n1"].append(rd.entries)
    leader.advance(rd)
    assert leader.log.committed == 2
    assert [e.data for e in leader.ready().committed_entries] == [b"x"]


def test_ordering_leader_does_not_count_its_unwritten_entry():
    c = Cluster(VOTERS)
    c.elect("n1")
    leader = c.core("n1")
    leader.propose(b"x")
    rd = leader.ready()  # the leader's own write is now "in flight"
    c.inflight.extend(rd.messages)
    c.deliver([m for m in c.inflight if m.to == "n2"])
    c.inflight = []
    c.drain("n2")  # n2 persists and acknowledges
    c.deliver()
    assert leader.tracker.progress["n2"].match == 2
    assert leader.tracker.progress["n1"].match == 1
    # n1 (unwritten) + n2 would be a majority only if n1 counted itself early.
    # With three voters, n2 alone is not a quorum: commit must not move.
    assert leader.log.committed == 1
    c.storage["n1"].append(rd.entries)
    leader.advance(rd)
    assert leader.log.committed == 2


def test_ordering_followers_may_commit_what_the_leader_still_writes():
    c = Cluster(VOTERS)
    c.elect("n1")
    leader = c.core("n1")
    leader.propose(b"x")
    rd = leader.ready()
    c.inflight.extend(rd.messages)
    c.deliver()
    c.drain("n2")
    c.drain("n3")
    c.deliver()
    assert leader.log.committed == 2, "two durable followers are a quorum of three"
    c.storage["n1"].append(rd.entries)
    leader.advance(rd)
    assert [e.data for e in leader.ready().committed_entries] == [b"x"]


def test_ordering_one_ready_at_a_time():
    c = Cluster(["n1"])
    c.elect("n1")
    leader = c.core("n1")
    leader.propose(b"a")
    rd = leader.ready()
    leader.propose(b"b")
    assert not leader.has_ready(), "no second Ready before advance()"
    with pytest.raises(AssertionError, match="before advance"):
        leader.ready()
    with pytest.raises(AssertionError, match="last ready"):
        leader.advance(type(rd)())
    c.storage["n1"].append(rd.entries)
    leader.advance(rd)
    assert leader.has_ready()


def test_ordering_proposals_during_a_write_form_the_next_group_commit():
    c = Cluster(VOTERS)
    c.elect("n1")
    leader = c.core("n1")
    leader.propose(b"first")
    rd = leader.ready()
    for i in range(20):
        leader.propose(b"g%d" % i)
    c.storage["n1"].append(rd.entries)
    leader.advance(rd)
    nxt = leader.ready()
    assert [e.data for e in nxt.entries] == [b"g%d" % i for i in range(20)]
    assert nxt.must_sync
    leader.advance(nxt)


def test_ordering_restart_from_durable_state_only():
    s = storage_with([(1, 1), (2, 1)], term=1, vote="n1", commit=2)
    core = make_core("n1", VOTERS, s, applied=2)
    status = core.status()
    assert (status["term"], status["vote"], status["commit_index"],
            status["applied_index"], status["role"]) == (1, "n1", 2, 2, Role.Follower)
    assert not core.has_ready()
    with pytest.raises(ValueError, match="beyond the last"):
        make_core("n1", VOTERS, storage_with([(1, 1)], term=1, commit=5))
    sent = persist_and_advance(core, s)
    assert sent == []


def test_ordering_step_refuses_internal_and_misrouted_messages():
    core = make_core("n1", VOTERS)
    with pytest.raises(ValueError, match="internal"):
        core.step(Message(type=MsgType.MsgHup, frm="n1"))
    with pytest.raises(ValueError, match="routing"):
        core.step(Message(type=MsgType.MsgHeartbeat, frm="n2", to="n3", term=1))
    core.step(Message(type=MsgType.MsgAppResp, frm="n9", to="n1", term=1, index=5))
    assert not core.has_ready(), "a response from a non-member is ignored"

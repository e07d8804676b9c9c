"""Leader election (Raft 5.2, 5.4.1), pre-vote (thesis 9.6), check-quorum (thesis 6.2)."""

import pytest
from raft_harness import Cluster, make_core, persist_and_advance, storage_with

from kvraft.raft import TRANSFER_CONTEXT, Message, MsgType, Role

VOTERS = ("n1", "n2", "n3")


def vote_request(frm, to, term, index=0, log_term=0, kind=MsgType.MsgVote, context=b""):
    return Message(type=kind, frm=frm, to=to, term=term, index=index, log_term=log_term,
                   context=context)


# -- 5.2 -------------------------------------------------------------------------------

def test_election_5_2_candidate_with_majority_becomes_leader():
    c = Cluster(VOTERS, pre_vote=False)
    c.elect("n1")
    assert c.core("n1").term == 1
    for node in ("n2", "n3"):
        core = c.core(node)
        assert (core.role, core.lead, core.vote, core.term) == (Role.Follower, "n1", "n1", 1)
    assert c.leaders() == ["n1"]


def test_election_5_2_leader_appends_a_noop_of_its_term():
    c = Cluster(VOTERS)
    c.elect("n2")
    entry = c.storage["n3"].entries(1, 2)[0]
    assert (entry.term, entry.index, entry.data) == (1, 1, b"")
    assert [e.index for e in c.applied["n3"]] == [1]


def test_election_5_2_randomized_timeout_in_range():
    seen = set()
    for seed in range(60):
        core = make_core("n1", VOTERS, seed=seed)
        assert 10 <= core.randomized_election_timeout < 20
        seen.add(core.randomized_election_timeout)
    assert len(seen) >= 5, "timeouts must actually be spread"


def test_election_5_2_follower_times_out_and_campaigns():
    core = make_core("n1", VOTERS, pre_vote=False)
    timeout = core.randomized_election_timeout
    for _ in range(timeout - 1):
        core.tick()
    assert core.role == Role.Follower
    core.tick()
    assert (core.role, core.term, core.vote) == (Role.Candidate, 1, "n1")
    sent = core.ready().messages
    assert sorted((m.to, m.type, m.term) for m in sent) == [
        ("n2", MsgType.MsgVote, 1), ("n3", MsgType.MsgVote, 1)]


def test_election_5_2_one_vote_per_term():
    core = make_core("n1", VOTERS, pre_vote=False, check_quorum=False)
    core.step(vote_request("n2", "n1", term=1))
    core.step(vote_request("n3", "n1", term=1))
    core.step(vote_request("n2", "n1", term=1))  # a retransmission is granted again
    answers = [(m.to, m.reject) for m in core.ready().messages_after_persist]
    assert answers == [("n2", False), ("n3", True), ("n2", False)]
    assert core.vote == "n2"


def test_election_5_4_1_voter_rejects_a_less_up_to_date_log():
    core = make_core("n1", VOTERS, storage_with([(1, 1), (2, 2)], term=2),
                     pre_vote=False, check_quorum=False)
    core.step(vote_request("n2", "n1", term=3, index=5, log_term=1))  # older last term
    core.step(vote_request("n3", "n1", term=3, index=1, log_term=2))  # same term, shorter
    assert [m.reject for m in core.ready().messages_after_persist] == [True, True]
    assert core.vote == ""


def test_election_5_2_candidate_loses_on_majority_rejection():
    core = make_core("n1", VOTERS, pre_vote=False)
    core.campaign()
    persist_and_advance(core, core.log.storage)
    core.step(Message(type=MsgType.MsgVoteResp, frm="n2", to="n1", term=1, reject=True))
    assert core.role == Role.Candidate, "one rejection of three is not yet a loss"
    core.step(Message(type=MsgType.MsgVoteResp, frm="n3", to="n1", term=1, reject=True))
    assert (core.role, core.term) == (Role.Follower, 1)


def test_election_5_2_candidate_returns_to_follower_on_leader_append():
    core = make_core("n1", VOTERS, pre_vote=False)
    core.campaign()
    core.step(Message(type=MsgType.MsgApp, frm="n2", to="n1", term=1))
    assert (core.role, core.lead) == (Role.Follower, "n2")


def test_election_5_2_higher_term_deposes_the_leader():
    c = Cluster(VOTERS, pre_vote=False, check_quorum=False)
    c.elect("n1")
    c.core("n1").step(Message(type=MsgType.MsgApp, frm="n2", to="n1", term=5))
    assert (c.core("n1").role, c.core("n1").term, c.core("n1").lead) == \
        (Role.Follower, 5, "n2")


def test_election_5_2_split_vote_resolves_by_retrying():
    c = Cluster(VOTERS, pre_vote=False, check_quorum=False)
    c.core("n1").campaign()
    c.core("n2").campaign()
    c.stabilize()
    for _ in range(200):
        if c.leaders():
            break
        for node in c.ids:
            c.tick(node)
        c.stabilize()
    assert len(c.leaders()) == 1


def test_election_5_2_learner_never_campaigns():
    core = make_core("n4", VOTERS, learners=("n4",))
    for _ in range(100):
        core.tick()
    core.campaign()
    assert (core.role, core.term) == (Role.Follower, 0)


def test_election_5_2_single_node_elects_itself():
    c = Cluster(["n1"])
    c.tick("n1", 25)
    c.stabilize()
    assert c.leaders() == ["n1"]


# -- thesis 9.6: pre-vote ----------------------------------------------------------------

def test_prevote_9_6_request_carries_next_term_without_changing_state():
    core = make_core("n1", VOTERS, storage_with([(1, 1)], term=1))
    core.campaign()
    assert (core.role, core.term, core.vote) == (Role.PreCandidate, 1, "")
    sent = core.ready().messages
    assert {(m.type, m.term, m.index, m.log_term) for m in sent} == {
        (MsgType.MsgPreVote, 2, 1, 1)}


def test_prevote_9_6_voter_keeps_its_term_and_vote():
    core = make_core("n1", VOTERS, storage_with([(1, 1)], term=1), check_quorum=False)
    core.step(vote_request("n2", "n1", term=2, index=1, log_term=1, kind=MsgType.MsgPreVote))
    (answer,) = core.ready().messages_after_persist
    assert (answer.type, answer.term, answer.reject) == (MsgType.MsgPreVoteResp, 2, False)
    assert (core.term, core.vote) == (1, "")


def test_prevote_9_6_won_prevote_starts_a_real_election():
    c = Cluster(VOTERS)
    c.elect("n1")
    assert c.core("n1").term == 1, "pre-vote itself never bumps the term"


def test_prevote_9_6_partitioned_node_does_not_bump_terms():
    c = Cluster(VOTERS)
    c.elect("n1")
    c.isolate("n3")
    for _ in range(100):
        c.tick("n3")
        c.stabilize()
    assert (c.core("n3").term, c.core("n3").role) == (1, Role.PreCandidate)
    c.heal()
    for _ in range(3):
        c.tick("n1")
        c.stabilize()
    assert c.leaders() == ["n1"]
    assert [c.core(n).term for n in c.ids] == [1, 1, 1]
    assert c.core("n3").lead == "n1"


def test_prevote_9_6_without_prevote_a_rejoining_node_disrupts():
    c = Cluster(VOTERS, pre_vote=False, check_quorum=False)
    c.elect("n1")
    c.isolate("n3")
    for _ in range(60):
        c.tick("n3")
        c.stabilize()
    assert c.core("n3").term > 3
    c.heal()
    for _ in range(20):  # n3's next election timeout
        c.tick("n3")
        c.stabilize()
    assert c.core("n1").term > 3, "the contrast case: the whole cluster's term was bumped"


# -- check-quorum (thesis 6.2, 9.6 leader stickiness) -----------------------------------

def test_check_quorum_isolated_leader_steps_down():
    c = Cluster(VOTERS)
    c.elect("n1")
    c.isolate("n1")
    for _ in range(2 * 10):
        c.tick("n1")
        c.stabilize()
    assert (c.core("n1").role, c.core("n1").lead) == (Role.Follower, "")


def test_check_quorum_connected_leader_stays():
    c = Cluster(VOTERS)
    c.elect("n1")
    for _ in range(50):
        c.tick("n1")
        c.stabilize()
    assert c.leaders() == ["n1"] and c.core("n1").term == 1


def test_check_quorum_follower_in_lease_ignores_vote_requests():
    c = Cluster(VOTERS, pre_vote=False)
    c.elect("n1")
    follower = c.core("n2")
    follower.step(vote_request("n3", "n2", term=2, index=9, log_term=9))
    assert (follower.term, follower.vote, follower.lead) == (1, "n1", "n1")
    assert not c.core("n2").ready().messages_after_persist, "no answer at all"


def test_check_quorum_transfer_vote_overrides_the_lease():
    c = Cluster(VOTERS, pre_vote=False)
    c.elect("n1")
    follower = c.core("n2")
    follower.step(vote_request("n3", "n2", term=2, index=9, log_term=9,
                               context=TRANSFER_CONTEXT))
    assert (follower.term, follower.vote) == (2, "n3")


def test_check_quorum_stale_leader_learns_the_new_term_and_steps_down():
    c = Cluster(VOTERS)
    c.elect("n1")
    c.isolate("n1")
    for _ in range(30):  # n1 does not tick: it still believes it leads
        c.tick("n2")
        c.tick("n3")
        c.stabilize()
    (new_leader,) = [n for n in ("n2", "n3") if c.core(n).role == Role.Leader]
    new_term = c.core(new_leader).term
    assert new_term == 2 and c.core("n1").role == Role.Leader
    c.heal()
    c.tick("n1")  # heartbeats with the old term; the answers carry the new term
    c.stabilize()
    assert (c.core("n1").role, c.core("n1").term) == (Role.Follower, new_term)
    assert c.leaders() == [new_leader]


def test_check_quorum_lower_term_append_gets_our_term_back():
    core = make_core("n2", VOTERS, storage_with([], term=5))
    core.step(Message(type=MsgType.MsgHeartbeat, frm="n1", to="n2", term=3))
    (answer,) = core.ready().messages_after_persist
    assert (answer.type, answer.to, answer.term) == (MsgType.MsgAppResp, "n1", 5)


@pytest.mark.parametrize("pre_vote", [True, False])
def test_election_5_2_candidate_counts_itself_only_after_persisting(pre_vote):
    c = Cluster(["n1"], pre_vote=pre_vote)
    core = c.core("n1")
    core.campaign()
    assert core.role == Role.Candidate, "single voter: pre-vote wins at once"
    rd = core.ready()
    assert rd.hard_state is not None and rd.hard_state.vote == "n1" and rd.must_sync
    assert core.role == Role.Candidate, "own vote not yet durable"
    core.advance(rd)
    assert core.role == Role.Leader

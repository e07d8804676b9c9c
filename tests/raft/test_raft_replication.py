"""Log replication (Raft 5.3): matching, repair with fast backtracking, flow control,
batching and forwarding."""

import pytest
from raft_harness import Cluster, make_core, persist_and_advance, storage_with

from kvraft.raft import Entry, Message, MsgType, ProgressState, ProposalDropped, Role

VOTERS = ("n1", "n2", "n3")


def leader_of(c, node="n1"):
    c.elect(node)
    return c.core(node)


def test_replication_5_3_commit_after_majority_and_followers_learn_it():
    c = Cluster(VOTERS)
    leader = leader_of(c)
    c.isolate("n3")
    c.propose("n1", b"a")
    c.stabilize()
    assert leader.log.committed == 2, "n1 + n2 are a majority"
    assert c.applied_data("n2") == [b"a"]
    assert c.applied_data("n3") == []
    c.heal()
    c.tick("n1")
    c.stabilize()
    assert c.applied_data("n3") == [b"a"]


def test_replication_5_3_follower_rejects_mismatched_previous_entry_with_a_hint():
    core = make_core("n2", VOTERS, storage_with([(1, 1), (2, 1), (3, 2)], term=2))
    core.step(Message(type=MsgType.MsgApp, frm="n1", to="n2", term=3, index=3, log_term=3,
                      entries=[Entry(term=3, index=4)]))
    (resp,) = core.ready().messages_after_persist
    assert (resp.type, resp.reject, resp.index) == (MsgType.MsgAppResp, True, 3)
    assert (resp.reject_hint, resp.log_term) == (3, 2), "our last index of term <= 3"
    assert core.log.last_index() == 3


def test_replication_5_3_follower_truncates_a_conflicting_suffix():
    core = make_core("n2", VOTERS, storage_with([(1, 1), (2, 1), (3, 1)], term=1))
    core.step(Message(type=MsgType.MsgApp, frm="n1", to="n2", term=2, index=1, log_term=1,
                      entries=[Entry(term=2, index=2, data=b"new")], commit=2))
    rd = core.ready()
    assert [(e.index, e.term) for e in rd.entries] == [(2, 2)]
    assert rd.hard_state.commit == 2
    assert [m.index for m in rd.messages_after_persist] == [2]
    core.log.storage.append(rd.entries)
    core.advance(rd)
    assert core.log.storage.last_index() == 2 and core.log.term(2) == 2


def test_replication_5_3_fast_backtracking_skips_a_divergent_term_in_one_step():
    # n1 will lead term 5 with [1..5 @1, 6..10 @3]; n2 holds [1..5 @1, 6..40 @2].
    lead_log = [(i, 1) for i in range(1, 6)] + [(i, 3) for i in range(6, 11)]
    n2_log = [(i, 1) for i in range(1, 6)] + [(i, 2) for i in range(6, 41)]
    c = Cluster(VOTERS, pre_vote=False)
    for node, log, term in (("n1", lead_log, 4), ("n2", n2_log, 2), ("n3", lead_log, 4)):
        c.storage[node] = storage_with(log, term=term)
        c.cores[node] = make_core(node, VOTERS, c.storage[node], pre_vote=False)
    rejections = []
    c.intercept = lambda m: (rejections.append(m) if m.type == MsgType.MsgAppResp
                             and m.reject else None) or m
    c.elect("n1")
    c.propose("n1", b"x")
    c.stabilize()
    assert len(rejections) <= 2, f"{len(rejections)} round trips for 35 divergent entries"
    assert c.storage["n2"].last_index() == 12
    assert c.storage["n2"].term(6) == 3
    assert c.applied_data("n2")[-1] == b"x"


def test_replication_5_3_probe_after_rejection_then_replicate():
    c = Cluster(VOTERS)
    leader = leader_of(c)
    pr = leader.tracker.progress["n2"]
    assert pr.state == ProgressState.Replicate
    c.propose("n1", b"a")
    c.drain("n1")
    c.propose("n1", b"b")
    c.drain("n1")
    assert (pr.match, pr.next) == (1, 4), "pipelined: next runs ahead of match"
    stale = Message(type=MsgType.MsgAppResp, frm="n2", to="n1", term=1, index=1,
                    reject=True, reject_hint=0)
    leader.step(stale)
    assert pr.state == ProgressState.Replicate, "a rejection at or below match is stale"
    # The follower lost the MsgApp carrying entry 2, so it rejects the one after it.
    leader.step(Message(type=MsgType.MsgAppResp, frm="n2", to="n1", term=1, index=2,
                        reject=True, reject_hint=1, log_term=1))
    assert pr.state == ProgressState.Probe and pr.next == 2
    c.inflight = [m for m in c.inflight if not (m.to == "n2" and m.index == 1)]
    c.stabilize()
    assert pr.state == ProgressState.Replicate and pr.match == 3
    assert c.applied_data("n2") == [b"a", b"b"]


def test_replication_5_3_pipelining_is_bounded_by_the_inflight_window():
    c = Cluster(VOTERS, max_inflight_msgs=2)
    leader = leader_of(c)
    for i in range(5):
        c.propose("n1", b"p%d" % i)
        c.drain("n1")
    apps = [m for m in c.inflight if m.type == MsgType.MsgApp and m.to == "n2"]
    assert len(apps) == 2, "the window holds two MsgApps"
    assert leader.tracker.progress["n2"].is_paused()
    c.stabilize()
    assert c.applied_data("n2") == [b"p%d" % i for i in range(5)]


def test_replication_5_3_max_msg_bytes_splits_messages():
    c = Cluster(VOTERS, max_msg_bytes=40)
    leader_of(c)
    c.isolate("n2")
    for i in range(4):
        c.propose("n1", b"0123456789" + bytes([48 + i]))
    c.stabilize()
    seen = []
    c.intercept = lambda m: (seen.append(len(m.entries)) if m.type == MsgType.MsgApp
                             and m.to == "n2" else None) or m
    c.heal()
    c.tick("n1")
    c.stabilize()
    assert sum(seen) == 4 and max(seen) == 1, "each 27-byte entry travels alone"
    assert len(c.applied_data("n2")) == 4


def test_replication_5_3_paused_probe_resumes_on_heartbeat_response():
    c = Cluster(VOTERS)
    leader = leader_of(c)
    leader.step(Message(type=MsgType.MsgUnreachable, frm="n2"))
    pr = leader.tracker.progress["n2"]
    assert pr.state == ProgressState.Probe
    c.cut = {("n1", "n2")}
    c.propose("n1", b"lost")
    c.stabilize()
    assert pr.is_paused(), "the probe went out and got no answer"
    c.heal()
    c.tick("n1")  # heartbeat -> response unpauses -> probe again
    c.stabilize()
    assert c.applied_data("n2") == [b"lost"]
    assert pr.state == ProgressState.Replicate


def test_replication_batching_one_ready_carries_every_proposal():
    c = Cluster(VOTERS)
    leader = leader_of(c)
    for i in range(10):
        leader.propose(b"b%d" % i)
    rd = leader.ready()
    assert [e.data for e in rd.entries] == [b"b%d" % i for i in range(10)]
    assert [e.index for e in rd.entries] == list(range(2, 12))
    leader.advance(rd)


def test_replication_proposal_forwarding_and_no_leader():
    core = make_core("n2", VOTERS)
    with pytest.raises(ProposalDropped) as info:
        core.propose(b"x")
    assert info.value.reason == "no-leader" and "retry" in str(info.value)
    c = Cluster(VOTERS)
    leader_of(c)
    c.propose("n3", b"via-n3")
    (fwd,) = [m for m in c.core("n3").ready().messages if m.type == MsgType.MsgProp]
    assert (fwd.to, fwd.entries[0].data) == ("n1", b"via-n3")


def test_replication_forwarding_can_be_disabled():
    c = Cluster(VOTERS, disable_proposal_forwarding=True)
    leader_of(c)
    with pytest.raises(ProposalDropped, match="does not forward"):
        c.propose("n2", b"x")


def test_replication_max_uncommitted_bytes_drops_with_queue_full():
    c = Cluster(VOTERS, max_uncommitted_bytes=100)
    leader = leader_of(c)
    c.isolate("n1")
    leader.propose(b"x" * 80)  # accepted: nothing uncommitted yet
    with pytest.raises(ProposalDropped) as info:
        leader.propose(b"y" * 30)
    assert info.value.reason == "queue-full"
    c.heal()
    c.stabilize()
    assert leader.uncommitted_bytes == 0
    leader.propose(b"y" * 30)


def test_replication_candidate_drops_proposals():
    core = make_core("n1", VOTERS, pre_vote=False)
    core.campaign()
    assert core.role == Role.Candidate
    with pytest.raises(ProposalDropped, match="election"):
        core.propose(b"x")


def test_replication_stale_append_below_commit_is_acknowledged_with_commit():
    c = Cluster(VOTERS)
    leader_of(c)
    c.propose("n1", b"a")
    c.stabilize()
    follower = c.core("n2")
    follower.step(Message(type=MsgType.MsgApp, frm="n1", to="n2", term=1, index=0,
                          log_term=0, entries=[Entry(term=1, index=1)]))
    sent = persist_and_advance(follower, c.storage["n2"])
    assert [(m.type, m.index, m.reject) for m in sent] == [(MsgType.MsgAppResp, 2, False)]


def test_replication_proposal_larger_than_a_message_is_refused():
    c = Cluster(VOTERS, max_msg_bytes=1000)
    leader = leader_of(c)
    with pytest.raises(ProposalDropped) as info:
        leader.propose(b"z" * 1000)
    assert info.value.reason == "too-large" and "split" in str(info.value)
    leader.propose(b"z" * 900)


def test_replication_follower_refuses_too_large_before_forwarding():
    c = Cluster(VOTERS, max_msg_bytes=1000)
    leader_of(c)
    with pytest.raises(ProposalDropped, match="max_msg_bytes"):
        c.propose("n2", b"z" * 2000)

"""Leadership transfer (Raft thesis 3.10)."""

import pytest
from raft_harness import Cluster

from kvraft.raft import MsgType, ProposalDropped, Role

VOTERS = ("n1", "n2", "n3")


def test_leader_transfer_3_10_to_an_up_to_date_follower():
    c = Cluster(VOTERS)
    c.elect("n1")
    c.core("n1").transfer_leadership("n2")
    assert [m.type for m in c.core("n1")._msgs] == [MsgType.MsgTimeoutNow]
    c.stabilize()
    assert c.leaders() == ["n2"] and c.core("n2").term == 2
    assert c.core("n1").lead == "n2"


def test_leader_transfer_3_10_catches_a_lagging_follower_up_first():
    c = Cluster(VOTERS)
    c.elect("n1")
    c.isolate("n3")
    for i in range(3):
        c.propose("n1", b"w%d" % i)
    c.stabilize()
    c.heal()
    c.core("n1").transfer_leadership("n3")
    sent = [m.type for m in c.core("n1")._msgs]
    assert MsgType.MsgTimeoutNow not in sent, "n3 lacks entries: catch it up first"
    assert c.core("n1").lead_transferee == "n3"
    c.stabilize()
    assert c.leaders() == ["n3"]
    assert c.applied_data("n3") == [b"w0", b"w1", b"w2"]


def test_leader_transfer_3_10_refuses_proposals_while_transferring():
    c = Cluster(VOTERS)
    c.elect("n1")
    c.isolate("n3")
    c.propose("n1", b"x")
    c.stabilize()
    c.core("n1").transfer_leadership("n3")
    with pytest.raises(ProposalDropped) as info:
        c.propose("n1", b"y")
    assert info.value.reason == "transferring" and "n3" in str(info.value)


def test_leader_transfer_3_10_aborts_after_an_election_timeout():
    c = Cluster(VOTERS)
    c.elect("n1")
    c.isolate("n3")
    c.propose("n1", b"x")
    c.stabilize()
    c.core("n1").transfer_leadership("n3")
    for _ in range(10):
        c.tick("n1")
        c.tick("n2")
        c.stabilize()
    assert c.core("n1").lead_transferee == ""
    assert c.leaders() == ["n1"]
    c.propose("n1", b"accepted again")


def test_leader_transfer_3_10_target_must_be_a_voter():
    c = Cluster(VOTERS + ("n4",), voters=VOTERS, learners=("n4",))
    c.elect("n1")
    with pytest.raises(ValueError, match="not a voter"):
        c.core("n1").transfer_leadership("n4")
    with pytest.raises(ValueError, match="not a voter"):
        c.core("n1").transfer_leadership("n9")


def test_leader_transfer_3_10_to_self_is_a_no_op():
    c = Cluster(VOTERS)
    c.elect("n1")
    c.core("n1").transfer_leadership("n1")
    assert c.core("n1").lead_transferee == "" and not c.core("n1")._msgs


def test_leader_transfer_3_10_request_at_a_follower_is_forwarded():
    c = Cluster(VOTERS)
    c.elect("n1")
    c.core("n3").transfer_leadership("n2")
    c.stabilize()
    assert c.leaders() == ["n2"]


def test_leader_transfer_3_10_overrides_leader_stickiness():
    c = Cluster(VOTERS, check_quorum=True, pre_vote=True)
    c.elect("n1")
    c.tick("n3")  # n3 heard from the leader recently: it would ignore a normal vote
    c.core("n1").transfer_leadership("n2")
    c.stabilize()
    assert c.leaders() == ["n2"]
    assert c.core("n3").vote == "n2"


def test_leader_transfer_3_10_new_leader_keeps_committed_entries():
    c = Cluster(VOTERS)
    c.elect("n1")
    c.propose("n1", b"keep")
    c.stabilize()
    c.core("n1").transfer_leadership("n3")
    c.stabilize()
    c.propose("n3", b"next")
    c.stabilize()
    for node in VOTERS:
        assert c.applied_data(node) == [b"keep", b"next"]
        assert c.core(node).role == (Role.Leader if node == "n3" else Role.Follower)

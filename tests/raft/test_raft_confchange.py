"""Membership changes (Raft thesis 4): simple changes, joint consensus, learners."""

import pytest
from raft_harness import Cluster

from kvraft.raft import (
    ConfChange,
    ConfChangeError,
    ConfChangeSingle,
    ConfChangeType,
    ConfState,
    ProposalDropped,
    Role,
    apply_conf_change,
    decode_conf_change,
    encode_conf_change,
)

VOTERS = ("n1", "n2", "n3")
ADD, LEARN, REMOVE = ConfChangeType.AddVoter, ConfChangeType.AddLearner, \
    ConfChangeType.RemoveNode


def cc(*changes, joint=False):
    return ConfChange(changes=tuple(ConfChangeSingle(t, n) for t, n in changes), joint=joint)


# -- pure configuration math ---------------------------------------------------------

def test_confchange_simple_add_and_remove():
    cs = ConfState(voters=VOTERS)
    assert apply_conf_change(cs, cc((ADD, "n4"))).voters == ("n1", "n2", "n3", "n4")
    assert apply_conf_change(cs, cc((REMOVE, "n3"))).voters == ("n1", "n2")
    learner = apply_conf_change(cs, cc((LEARN, "n4")))
    assert (learner.voters, learner.learners) == (VOTERS, ("n4",))
    promoted = apply_conf_change(learner, cc((ADD, "n4")))
    assert (promoted.voters, promoted.learners) == (VOTERS + ("n4",), ())


@pytest.mark.parametrize("cs, change, words", [
    (ConfState(voters=("n1",)), cc((REMOVE, "n1")), "every voter"),
    (ConfState(voters=VOTERS, voters_outgoing=VOTERS), cc((ADD, "n4")), "joint"),
    (ConfState(voters=VOTERS), cc(), "not in one"),
    (ConfState(voters=VOTERS, voters_outgoing=VOTERS), cc((ADD, "n5"), (ADD, "n4")),
     "already in a joint"),
])
def test_confchange_refuses_impossible_changes(cs, change, words):
    with pytest.raises(ConfChangeError, match=words):
        apply_conf_change(cs, change)


def test_confchange_joint_enter_and_leave():
    cs = ConfState(voters=VOTERS)
    joint = apply_conf_change(cs, cc((ADD, "n4"), (REMOVE, "n1")))
    assert joint.voters == ("n2", "n3", "n4") and joint.voters_outgoing == VOTERS
    assert joint.auto_leave
    explicit = apply_conf_change(cs, cc((ADD, "n4"), joint=True))
    assert explicit.is_joint() and not explicit.auto_leave
    left = apply_conf_change(joint, cc())
    assert (left.voters, left.voters_outgoing, left.auto_leave) == (("n2", "n3", "n4"), (),
                                                                   False)


def test_confchange_demoted_voter_becomes_learner_on_leaving():
    joint = apply_conf_change(ConfState(voters=VOTERS), cc((LEARN, "n3"), (ADD, "n4")))
    assert joint.learners_next == ("n3",) and "n3" in joint.voters_outgoing
    left = apply_conf_change(joint, cc())
    assert (left.voters, left.learners) == (("n1", "n2", "n4"), ("n3",))


def test_confchange_codec_round_trip_and_errors():
    change = ConfChange(changes=(ConfChangeSingle(ADD, "n4", b"addr"),), joint=True,
                        context=b"ctx")
    assert decode_conf_change(encode_conf_change(change)) == change
    with pytest.raises(ConfChangeError, match="malformed"):
        decode_conf_change(b"\x01garbage")


# -- in a cluster -----------------------------------------------------------------------

def test_confchange_add_a_voter_which_catches_up_and_counts():
    c = Cluster(VOTERS)
    c.elect("n1")
    c.propose("n1", b"before")
    c.stabilize()
    c.add_node("n4", voters=VOTERS)
    c.core("n1").propose_conf_change(cc((ADD, "n4")))
    c.stabilize()
    assert c.core("n1").tracker.conf_state().voters == VOTERS + ("n4",)
    assert c.applied_data("n4") == [b"before"]
    assert c.core("n4").tracker.is_voter("n4")
    # Four voters: a quorum is three; with n3 and n4 cut, nothing commits.
    c.partition(["n1", "n2"], ["n3"], ["n4"])
    c.propose("n1", b"needs-three")
    c.stabilize()
    assert b"needs-three" not in c.applied_data("n1")


def test_confchange_one_pending_change_at_a_time():
    c = Cluster(VOTERS)
    c.elect("n1")
    c.isolate("n1")
    c.core("n1").propose_conf_change(cc((ADD, "n4")))
    with pytest.raises(ProposalDropped) as info:
        c.core("n1").propose_conf_change(cc((ADD, "n5")))
    assert info.value.reason == "conf-change-pending"


def test_confchange_joint_change_leaves_automatically():
    c = Cluster(VOTERS)
    c.elect("n1")
    c.add_node("n4", voters=VOTERS)
    c.core("n1").propose_conf_change(cc((ADD, "n4"), (REMOVE, "n3")))
    c.stabilize()
    for node in ("n1", "n2", "n4"):
        cs = c.core(node).tracker.conf_state()
        assert (cs.voters, cs.voters_outgoing) == (("n1", "n2", "n4"), ()), node
    c.propose("n1", b"after")
    c.stabilize()
    assert c.applied_data("n4") == [b"after"]


def test_confchange_joint_quorum_needs_both_halves():
    c = Cluster(VOTERS)
    c.elect("n1")
    c.add_node("n4", voters=VOTERS)
    c.add_node("n5", voters=VOTERS)
    c.core("n1").propose_conf_change(cc((ADD, "n4"), (ADD, "n5"), joint=True))
    c.stabilize()
    leader = c.core("n1")
    assert leader.tracker.is_joint()
    # n1, n4, n5 are a majority of the new config but only n1 of the old one.
    c.partition(["n1", "n4", "n5"], ["n2", "n3"])
    c.propose("n1", b"joint")
    c.stabilize()
    assert b"joint" not in c.applied_data("n1")
    c.heal()
    c.tick("n1")
    c.stabilize()
    assert b"joint" in c.applied_data("n1")


def test_confchange_learner_receives_the_log_but_never_counts():
    c = Cluster(VOTERS + ("n4",), voters=VOTERS, learners=("n4",))
    c.elect("n1")
    c.partition(["n1", "n4"], ["n2"], ["n3"])
    c.propose("n1", b"x")
    c.stabilize()
    assert c.core("n1").tracker.progress["n4"].match == 2
    assert c.core("n1").log.committed == 1, "a learner's copy is not a quorum"
    c.heal()
    c.tick("n1")
    c.stabilize()
    assert c.applied_data("n4") == [b"x"]
    for _ in range(50):
        c.tick("n4")
    assert c.core("n4").role == Role.Follower


def test_confchange_removed_leader_steps_down():
    c = Cluster(VOTERS)
    c.elect("n1")
    c.core("n1").propose_conf_change(cc((REMOVE, "n1")))
    c.stabilize()
    assert c.core("n1").role == Role.Follower
    for _ in range(30):
        c.tick("n2")
        c.tick("n3")
        c.stabilize()
    assert c.leaders() in (["n2"], ["n3"])

"""Quorum math against naive definitions (Hypothesis)."""

from hypothesis import given
from hypothesis import strategies as st

from kvraft.raft import quorum
from kvraft.raft.quorum import INDEX_MAX, VoteResult

ids = st.sets(st.sampled_from([f"n{i}" for i in range(1, 10)]), max_size=7)


def naive_committed(voters, match):
    if not voters:
        return INDEX_MAX
    need = len(voters) // 2 + 1
    best = 0
    for candidate in {match.get(v, 0) for v in voters}:
        if sum(1 for v in voters if match.get(v, 0) >= candidate) >= need:
            best = max(best, candidate)
    return best


def naive_vote(voters, votes):
    if not voters:
        return VoteResult.Won
    need = len(voters) // 2 + 1
    yes = sum(1 for v in voters if votes.get(v) is True)
    undecided = sum(1 for v in voters if v not in votes)
    if yes >= need:
        return VoteResult.Won
    if yes + undecided >= need:
        return VoteResult.Pending
    return VoteResult.Lost


@st.composite
def matches(draw):
    voters = draw(ids)
    extra = draw(ids)
    match = {v: draw(st.integers(0, 20)) for v in voters | extra}
    return voters, match


@st.composite
def ballots(draw):
    voters = draw(ids)
    votes = {v: draw(st.booleans()) for v in draw(st.sets(st.sampled_from(
        sorted(voters | {"x1", "x2"})))) } if voters else {}
    return voters, votes


@given(matches())
def test_quorum_committed_index_matches_naive(case):
    voters, match = case
    assert quorum.committed_index(voters, lambda v: match.get(v, 0)) == \
        naive_committed(voters, match)


@given(ballots())
def test_quorum_vote_result_matches_naive(case):
    voters, votes = case
    assert quorum.vote_result(voters, votes) == naive_vote(voters, votes)


@given(matches(), ids)
def test_quorum_joint_committed_is_min_of_halves(case, outgoing):
    incoming, match = case
    got = quorum.joint_committed_index(incoming, outgoing, lambda v: match.get(v, 0))
    assert got == min(naive_committed(incoming, match), naive_committed(outgoing, match))


@given(ballots(), ids)
def test_quorum_joint_vote_needs_both_halves(case, outgoing):
    incoming, votes = case
    a, b = naive_vote(incoming, votes), naive_vote(outgoing, votes)
    expected = (VoteResult.Won if a == b == VoteResult.Won
                else VoteResult.Lost if VoteResult.Lost in (a, b) else VoteResult.Pending)
    assert quorum.joint_vote_result(incoming, outgoing, votes) == expected


def test_quorum_examples():
    m = {"n1": 5, "n2": 3, "n3": 1}.get
    assert quorum.committed_index(["n1", "n2", "n3"], m) == 3
    assert quorum.committed_index(["n1", "n2", "n3", "n4"], lambda v: m(v) or 0) == 1
    assert quorum.joint_committed_index(["n1", "n2", "n3"], ["n3"], m) == 1
    assert quorum.vote_result(["n1", "n2", "n3"], {"n1": True, "n2": False}) == \
        VoteResult.Pending
    assert quorum.vote_result(["n1", "n2", "n3"], {"n2": False, "n3": False}) == \
        VoteResult.Lost

"""Quorum math: majority and joint (two-majority) commit indexes and vote results.

Pure functions over plain collections, tested against naive versions with Hypothesis.
A configuration is a collection of voter ids; a joint configuration is two of them
(incoming, outgoing), and a decision needs a majority in both. An empty configuration
agrees to everything (its committed index is ``INDEX_MAX`` and it wins every vote), so
a non-joint configuration is just a joint one with an empty outgoing half.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection, Mapping

from kvraft.raft.types import NodeId

INDEX_MAX = (1 << 63) - 1
"""What an empty configuration reports as committed: "no objection"."""


class VoteResult(enum.Enum):
    """The outcome of an election (or of any yes/no poll) so far."""

    Pending = "pending"  # neither a win nor a loss is certain yet
    Lost = "lost"  # a quorum can no longer be reached
    Won = "won"  # a quorum voted yes


def majority(n: int) -> int:
    """Votes needed out of ``n`` voters."""
    return n // 2 + 1


def committed_index(voters: Collection[NodeId], match: Callable[[NodeId], int]) -> int:
    """The largest index that a majority of ``voters`` has acknowledged.

    ``match(id)`` gives each voter's acknowledged index (0 if unknown).
    """
    n = len(voters)
    if n == 0:
        return INDEX_MAX
    if n == 1:
        for v in voters:
            return match(v)
    acked = sorted((match(v) for v in voters), reverse=True)
    return acked[majority(n) - 1]


def vote_result(voters: Collection[NodeId], votes: Mapping[NodeId, bool]) -> VoteResult:
    """Won once a majority voted yes, Lost once a majority cannot be reached."""
    if not voters:
        return VoteResult.Won
    yes = missing = 0
    for v in voters:
        vote = votes.get(v)
        if vote is None:
            missing += 1
        elif vote:
            yes += 1
    q = majority(len(voters))
    if yes >= q:
        return VoteResult.Won
    if yes + missing >= q:
        return VoteResult.Pending
    return VoteResult.Lost


def joint_committed_index(incoming: Collection[NodeId], outgoing: Collection[NodeId],
                          match: Callable[[NodeId], int]) -> int:
    """Committed in a joint configuration: committed in both halves."""
    return min(committed_index(incoming, match), committed_index(outgoing, match))


def joint_vote_result(incoming: Collection[NodeId], outgoing: Collection[NodeId],
                      votes: Mapping[NodeId, bool]) -> VoteResult:
    """Won only if both halves won; Lost if either lost."""
    r1 = vote_result(incoming, votes)
    r2 = vote_result(outgoing, votes)
    if r1 == r2:
        return r1
    if VoteResult.Lost in (r1, r2):
        return VoteResult.Lost
    return VoteResult.Pending

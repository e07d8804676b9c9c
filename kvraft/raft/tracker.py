"""ProgressTracker: the active configuration, every member's Progress, and the votes."""

from __future__ import annotations

from kvraft.raft import quorum
from kvraft.raft.progress import Progress
from kvraft.raft.quorum import VoteResult
from kvraft.raft.types import ConfState, NodeId


class ProgressTracker:
    """Membership (possibly joint) plus per-member progress and election votes.

    ``voters`` is the incoming majority config, ``voters_outgoing`` the outgoing one
    (non-empty only during a joint change). ``learners`` receive the log but never vote;
    ``learners_next`` are outgoing voters that become learners when the joint change is
    left. ``progress`` holds every member, in sorted id order for determinism.
    """

    def __init__(self, inflight_max: int, inflight_bytes_max: int = 0):
        self.inflight_max = inflight_max
        self.inflight_bytes_max = inflight_bytes_max
        self.voters: frozenset[NodeId] = frozenset()
        self.voters_outgoing: frozenset[NodeId] = frozenset()
        self.learners: frozenset[NodeId] = frozenset()
        self.learners_next: frozenset[NodeId] = frozenset()
        self.auto_leave = False
        self.progress: dict[NodeId, Progress] = {}
        self.votes: dict[NodeId, bool] = {}

    # -- configuration ------------------------------------------------------------------

    def conf_state(self) -> ConfState:
        """The configuration as a ConfState (sorted tuples)."""
        return ConfState(voters=tuple(sorted(self.voters)),
                         learners=tuple(sorted(self.learners)),
                         voters_outgoing=tuple(sorted(self.voters_outgoing)),
                         learners_next=tuple(sorted(self.learners_next)),
                         auto_leave=self.auto_leave)

    def set_config(self, cs: ConfState, last_index: int) -> None:
        """Switch to configuration ``cs``: keep the progress of remaining members, start
        new members probing at ``last_index``, forget removed ones."""
        self.voters = frozenset(cs.voters)
        self.voters_outgoing = frozenset(cs.voters_outgoing)
        self.learners = frozenset(cs.learners)
        self.learners_next = frozenset(cs.learners_next)
        self.auto_leave = cs.auto_leave
        old = self.progress
        progress: dict[NodeId, Progress] = {}
        for node in sorted(set(cs.members())):
            pr = old.get(node)
            if pr is None:
                # Probe from the last index: the first probe may well match at once.
                pr = self.new_progress(max(last_index, 1), is_learner=False)
                pr.recent_active = True  # do not fail check-quorum before it could answer
            pr.is_learner = node in self.learners
            progress[node] = pr
        self.progress = progress

    def new_progress(self, next_index: int, is_learner: bool) -> Progress:
        """A Progress with this tracker's window limits."""
        return Progress(next_index, self.inflight_max, is_learner=is_learner,
                        inflight_bytes_max=self.inflight_bytes_max)

    def is_joint(self) -> bool:
        """True during a joint-consensus membership change."""
        return bool(self.voters_outgoing)

    def voter_ids(self) -> list[NodeId]:
        """Every voter of either half, sorted."""
        return sorted(self.voters | self.voters_outgoing)

    def is_voter(self, node: NodeId) -> bool:
        """True if ``node`` votes in either half."""
        return node in self.voters or node in self.voters_outgoing

    def is_singleton(self) -> bool:
        """True for a one-voter, non-joint configuration (no round trips needed)."""
        return len(self.voters) == 1 and not self.voters_outgoing

    # -- quorum questions ---------------------------------------------------------------

    def committed(self) -> int:
        """The largest index durable on a quorum (of both halves when joint)."""
        progress = self.progress

        def match(node: NodeId) -> int:
            pr = progress.get(node)
            return pr.match if pr is not None else 0

        return quorum.joint_committed_index(self.voters, self.voters_outgoing, match)

    def quorum_active(self) -> bool:
        """True if a quorum was recently active (check-quorum, thesis 6.2)."""
        active = {node: pr.recent_active for node, pr in self.progress.items()
                  if not pr.is_learner}
        return quorum.joint_vote_result(
            self.voters, self.voters_outgoing, active) == VoteResult.Won

    def has_quorum(self, acks: set[NodeId] | dict[NodeId, bool]) -> bool:
        """True if the given voters form a quorum (ReadIndex acknowledgements)."""
        votes = {node: True for node in acks}
        return quorum.joint_vote_result(
            self.voters, self.voters_outgoing, votes) == VoteResult.Won

    # -- votes --------------------------------------------------------------------------

    def reset_votes(self) -> None:
        """Forget the votes of the last election."""
        self.votes = {}

    def record_vote(self, node: NodeId, granted: bool) -> None:
        """Record ``node``'s first answer; later answers from it are ignored."""
        self.votes.setdefault(node, granted)

    def tally_votes(self) -> tuple[int, int, VoteResult]:
        """(granted, rejected, result) over the current voters."""
        granted = rejected = 0
        for node in self.voter_ids():
            vote = self.votes.get(node)
            if vote is True:
                granted += 1
            elif vote is False:
                rejected += 1
        result = quorum.joint_vote_result(self.voters, self.voters_outgoing, self.votes)
        return granted, rejected, result

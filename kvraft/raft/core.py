"""RaftCore: one Raft node as a pure, deterministic state machine (etcd RawNode style).

See the ``kvraft.raft`` package docstring for the driving contract. Roles are handler
swaps: ``_become_x`` sets ``_step_role`` and ``_tick_role``; illegal transitions raise.
The leader's handlers live in ``leader.py`` and the follower's and candidate's in
``follower.py`` (mixins) to keep this file short.
"""

from __future__ import annotations

from kvraft.raft.confchange import apply_conf_change, encode_conf_change
from kvraft.raft.config import READ_ONLY_LEASE, RaftConfig
from kvraft.raft.early import EarlyOutputMixin
from kvraft.raft.follower import CAMPAIGN_ELECTION, CAMPAIGN_TRANSFER, FollowerMixin
from kvraft.raft.leader import LeaderMixin
from kvraft.raft.log import RaftLog
from kvraft.raft.quorum import VoteResult
from kvraft.raft.read_only import ReadOnly
from kvraft.raft.tracker import ProgressTracker
from kvraft.raft.types import (
    NONE,
    ConfChange,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MsgType,
    ProposalDropped,
    ReadState,
    Ready,
    Role,
    SoftState,
)

CAMPAIGN_PRE_ELECTION = "pre-election"

TRANSFER_CONTEXT = b"transfer"
"""``context`` of a vote request sent on MsgTimeoutNow: it overrides leader stickiness."""

AFTER_PERSIST_TYPES = frozenset({MsgType.MsgAppResp, MsgType.MsgVoteResp,
                                 MsgType.MsgPreVoteResp})
"""Messages that speak for durable state: they wait for ``Ready.messages_after_persist``."""

_FROM_LEADER = frozenset({MsgType.MsgApp, MsgType.MsgHeartbeat, MsgType.MsgSnap})
_DRIVER_FORBIDDEN = frozenset({MsgType.MsgHup, MsgType.MsgBeat, MsgType.MsgCheckQuorum})
_VOTE_RESPONSE = {MsgType.MsgVote: MsgType.MsgVoteResp,
                  MsgType.MsgPreVote: MsgType.MsgPreVoteResp}


class RaftCore(FollowerMixin, LeaderMixin, EarlyOutputMixin):
    """One Raft peer. Drive it with ``tick``/``step``/``propose``...; drain it with
    ``has_ready``/``ready``/``advance`` in the order of the package docstring."""

    def __init__(self, config: RaftConfig, storage):
        config.validate()
        self.config = config
        self.id = config.id
        self._rng = config.make_rng()
        self.log = RaftLog(storage, config.max_committed_bytes_per_ready)
        hard_state, conf_state = storage.initial_state()
        if conf_state is None or not (conf_state.voters or conf_state.voters_outgoing):
            if not config.voters:
                raise ValueError("no cluster configuration: storage holds none and "
                                 "RaftConfig.voters is empty; list the initial voters (a "
                                 "node joining a cluster lists the current voters)")
            conf_state = ConfState(voters=config.voters, learners=config.learners)
        self.tracker = ProgressTracker(config.max_inflight_msgs)
        self.tracker.set_config(conf_state, self.log.last_index())

        self.term = 0
        self.vote = NONE
        self.lead = NONE
        self.role = Role.Follower
        self.lead_transferee = NONE
        self.pending_conf_index = 0  # index of the newest conf change the leader proposed
        self.uncommitted_bytes = 0  # payload bytes the leader appended but not applied
        self.election_elapsed = 0  # ticks since the last election or leader contact
        self.heartbeat_elapsed = 0  # leader: ticks since the last heartbeat
        self.randomized_election_timeout = config.election_ticks
        self.read_only = ReadOnly(self.id)
        self.ticks = 0  # tick() calls since construction: the lease clock
        # Lease mode: the tick of the last message from a leader (start counts as one,
        # since a restarted node forgot whom it heard from); no vote for
        # ``election_ticks`` ticks after it (read_only.py says why).
        self._lease_mode = config.read_only_option == READ_ONLY_LEASE
        self._heard_leader_tick = 0

        self._msgs: list[Message] = []
        self._msgs_after_persist: list[Message] = []
        # Messages to ourselves (own vote, own append acknowledgement), stepped by
        # advance() of the Ready that made the state they speak for durable.
        self._self_after_persist: list[Message] = []
        self._read_states: list[ReadState] = []
        self._pending_read_index: list[Message] = []

        if not hard_state.is_empty():
            self._load_state(hard_state)
        if config.applied > 0:
            self._restore_applied(config.applied)
        self._become_follower(self.term, NONE)

        self._prev_soft = (self.lead, self.role)
        self._prev_hard = (self.term, self.vote, self.log.committed)
        self._outstanding: Ready | None = None
        self._outstanding_self: list[Message] = []

    def _load_state(self, hs: HardState) -> None:
        last = self.log.last_index()
        if hs.commit > last:
            raise ValueError(f"saved commit index {hs.commit} is beyond the last log index "
                             f"{last}: the log was truncated or lost; restore this node "
                             "from a backup or remove and re-add it")
        self.log.committed = max(self.log.committed, hs.commit)
        self.term = hs.term
        self.vote = hs.vote

    def _restore_applied(self, applied: int) -> None:
        log = self.log
        if applied < log.applied:
            raise ValueError(f"RaftConfig.applied={applied} is below the snapshot index "
                             f"{log.applied}: restore the state machine from the snapshot")
        if applied > log.last_index():
            raise ValueError(f"RaftConfig.applied={applied} is beyond the last log index "
                             f"{log.last_index()}: the log was truncated or lost")
        # The commit index is persisted lazily; what was applied was committed.
        log.commit_to(applied)
        log.applied_to(applied)

    # -- public API: inputs -------------------------------------------------------------

    def tick(self) -> None:
        """Advance logical time by one tick (elections, heartbeats, check-quorum).

        With ``read_only_option="lease"``, ticks are also the lease clock: call this at
        the same rate on every node, and catch up on ticks missed during a pause before
        stepping what arrived after it (the clock assumption on RaftConfig).
        """
        self.ticks += 1
        self._tick_role()

    def step(self, m: Message) -> None:
        """Feed a message from a peer (or MsgSnapStatus/MsgUnreachable from the driver).

        A forwarded proposal or read the leader cannot take is dropped silently (the
        asker times out); responses from non-members are ignored.
        """
        if m.type in _DRIVER_FORBIDDEN:
            raise ValueError(f"{m.type.name} is internal; use tick() or campaign()")
        if m.to not in (NONE, self.id):
            raise ValueError(f"a message for {m.to!r} was delivered to {self.id!r}; check "
                             "the transport's routing")
        if m.type in (MsgType.MsgAppResp, MsgType.MsgVoteResp, MsgType.MsgPreVoteResp,
                      MsgType.MsgHeartbeatResp, MsgType.MsgSnapStatus,
                      MsgType.MsgUnreachable) and m.frm not in self.tracker.progress:
            return
        try:
            self._step(m)
        except ProposalDropped:
            pass
        if (self._lease_mode and m.type in _FROM_LEADER and m.term == self.term
                and self.lead == m.frm):
            self._heard_leader_tick = self.ticks

    def propose(self, data: bytes) -> None:
        """Propose one entry; raises ProposalDropped (with ``reason``) if not accepted.

        Reasons: "no-leader", "transferring", "queue-full", "too-large" (over
        ``max_msg_bytes``), "not-member".
        """
        self._step(Message(type=MsgType.MsgProp, frm=self.id,
                           entries=[Entry(term=0, index=0, data=data)]))

    def propose_conf_change(self, cc: ConfChange) -> None:
        """Propose a membership change; raises ProposalDropped if not accepted."""
        self._step(Message(type=MsgType.MsgProp, frm=self.id, entries=[Entry(
            term=0, index=0, type=EntryType.ConfChange, data=encode_conf_change(cc))]))

    def apply_conf_change(self, cc: ConfChange) -> ConfState:
        """Apply a committed ConfChange (the driver calls this when it applies the entry)
        and return the new configuration. Raises ConfChangeError, leaving the
        configuration unchanged, if ``cc`` does not apply (every node refuses alike)."""
        cs = apply_conf_change(self.tracker.conf_state(), cc)
        self._switch_to_config(cs)
        return cs

    def read_index(self, ctx: bytes) -> None:
        """Ask for a linearizable read point; ``ReadState(index, ctx)`` arrives in a
        Ready. Raises ProposalDropped("no-leader") if no leader is known."""
        if self.role != Role.Leader and self.lead == NONE:
            raise ProposalDropped("no-leader", "no leader is known; retry when a leader "
                                  "is elected")
        self._step(Message(type=MsgType.MsgReadIndex, frm=self.id, context=ctx))

    def transfer_leadership(self, to: str) -> None:
        """Ask the leader to hand leadership to voter ``to`` (thesis 3.10)."""
        if not self.tracker.is_voter(to):
            raise ValueError(f"cannot transfer leadership to {to!r}: it is not a voter")
        self._step(Message(type=MsgType.MsgTransferLeader, frm=to))

    def campaign(self) -> None:
        """Start an election now (pre-vote first when enabled).

        With ``read_only_option="lease"`` this does nothing within ``election_ticks``
        ticks of this node's start or of its last message from a leader: voting for
        itself then could depose a leader that still serves reads from its lease. (Use
        ``transfer_leadership`` at the leader to move leadership at once.)
        """
        if self._vote_promised():
            return
        self._step(Message(type=MsgType.MsgHup, frm=self.id))

    def report_unreachable(self, node: str) -> None:
        """The driver could not deliver to ``node``: stop streaming to it."""
        self.step(Message(type=MsgType.MsgUnreachable, frm=node))

    def report_snapshot(self, node: str, ok: bool) -> None:
        """A snapshot sent to ``node`` arrived (``ok``) or failed."""
        self.step(Message(type=MsgType.MsgSnapStatus, frm=node, reject=not ok))

    # -- public API: outputs ------------------------------------------------------------

    def has_ready(self) -> bool:
        """True if ``ready()`` has work; always False while a Ready is outstanding."""
        if self._outstanding is not None:
            return False
        log = self.log
        return bool(
            self._msgs or self._msgs_after_persist or self._self_after_persist
            or self._read_states
            or (self.lead, self.role) != self._prev_soft
            or (self.term, self.vote, log.committed) != self._prev_hard
            or log.has_next_unstable_entries()
            or log.unstable.next_snapshot() is not None
            or log.has_next_committed_entries())

    def ready(self) -> Ready:
        """Everything to persist, send and apply since the last Ready. Call ``advance``
        with it before asking for the next one."""
        if self._outstanding is not None:
            raise AssertionError("ready() called again before advance(): persist the "
                                 "outstanding Ready, then advance() it")
        log = self.log
        rd = Ready(entries=log.next_unstable_entries(),
                   snapshot=log.unstable.next_snapshot(),
                   committed_entries=log.next_committed_entries())
        if rd.committed_entries:
            log.accept_applying(rd.committed_entries[-1].index)
        soft = (self.lead, self.role)
        if soft != self._prev_soft:
            rd.soft_state = SoftState(leader_id=self.lead, role=self.role)
            self._prev_soft = soft
        hard = (self.term, self.vote, log.committed)
        if hard != self._prev_hard:
            rd.hard_state = HardState(term=hard[0], vote=hard[1], commit=hard[2])
            term_or_vote = hard[:2] != self._prev_hard[:2]
            self._prev_hard = hard
        else:
            term_or_vote = False
        rd.must_sync = bool(rd.entries) or rd.snapshot is not None or term_or_vote
        rd.messages, self._msgs = self._msgs, []
        rd.messages_after_persist, self._msgs_after_persist = self._msgs_after_persist, []
        rd.read_states, self._read_states = self._read_states, []
        log.unstable.accept_in_progress()
        self.read_only.seal()
        self._outstanding = rd
        self._outstanding_self, self._self_after_persist = self._self_after_persist, []
        return rd

    def advance(self, rd: Ready) -> None:
        """The driver persisted, sent and applied ``rd``: record it, then count the votes
        and acknowledgements this node gave itself for what just became durable."""
        if rd is not self._outstanding:
            raise AssertionError("advance() must get the Ready returned by the last ready()")
        self._outstanding = None
        log = self.log
        if rd.snapshot is not None:
            log.unstable.stable_snap_to(rd.snapshot.metadata.index)
        if rd.entries:
            last = rd.entries[-1]
            log.unstable.stable_to(last.index, last.term)
        if rd.committed_entries:
            self._applied(rd.committed_entries)
        elif rd.snapshot is not None:
            log.applied_to(rd.snapshot.metadata.index)
        own, self._outstanding_self = self._outstanding_self, []
        for m in own:
            self._step(m)
        self._maybe_auto_leave()

    def _applied(self, entries: list[Entry]) -> None:
        """The driver applied ``entries`` (committed, in order): move ``applied`` (entries
        taken with ``take_committed_entries`` may already be past them)."""
        last = entries[-1].index
        if last > self.log.applied:
            self.log.applied_to(last)
        if self.role == Role.Leader:
            done = sum(len(e.data) for e in entries)
            self.uncommitted_bytes = max(0, self.uncommitted_bytes - done)

    def _maybe_auto_leave(self) -> None:
        if (self.role == Role.Leader and self.tracker.auto_leave
                and self.log.applied >= self.pending_conf_index):
            self._propose_leave_joint()

    def _propose_leave_joint(self) -> None:
        entry = Entry(term=0, index=0, type=EntryType.ConfChange,
                      data=encode_conf_change(ConfChange(changes=())))
        self._append_entry([entry], force=True)
        self.pending_conf_index = self.log.last_index()
        self._bcast_append()

    # -- observation --------------------------------------------------------------------

    def status(self) -> dict:
        """A snapshot of this node's state (for logs, metrics, admin and tests)."""
        log = self.log
        out = {
            "id": self.id, "role": self.role, "term": self.term, "vote": self.vote,
            "leader_id": self.lead, "commit_index": log.committed,
            "applied_index": log.applied, "last_index": log.last_index(),
            "first_index": log.first_index(), "lead_transferee": self.lead_transferee,
            "conf_state": self.tracker.conf_state(),
        }
        if self.role == Role.Leader:
            out["progress"] = {node: pr.describe()
                               for node, pr in self.tracker.progress.items()}
        return out

    def check_invariants(self) -> None:
        """Raise AssertionError if an internal invariant is broken."""
        log = self.log
        last = log.last_index()
        u = log.unstable

        def ensure(ok: bool, what: str) -> None:
            if not ok:
                raise AssertionError(f"{self.id}: invariant broken: {what}")

        ensure(log.applied <= log.applying <= log.committed <= last,
               f"applied {log.applied} <= applying {log.applying} <= committed "
               f"{log.committed} <= last {last}")
        ensure(u.offset <= u.offset_in_progress <= u.offset + len(u.entries),
               f"unstable offset {u.offset} <= in progress {u.offset_in_progress}")
        for i, e in enumerate(u.entries):
            ensure(e.index == u.offset + i, f"unstable entry {e.index} at slot {i}")
        ensure(self.term >= self._prev_hard[0], "term never goes back")
        ensure(self.uncommitted_bytes >= 0, "uncommitted bytes >= 0")
        ensure((self.role == Role.Leader) == (self.lead == self.id),
               f"role {self.role.value} consistent with leader {self.lead!r}")
        if self.role == Role.Candidate:
            ensure(self.vote == self.id, "a candidate votes for itself")
        if self.role != Role.Leader:
            ensure(self.lead_transferee == NONE, "only a leader transfers leadership")
            return
        ensure(self.id in self.tracker.progress, "the leader tracks its own progress")
        ensure(all(t <= self.ticks for t in self.read_only.acked_send_ticks.values()),
               "no heartbeat was acknowledged before it was sent")
        for node, pr in self.tracker.progress.items():
            ensure(0 <= pr.match < pr.next <= last + 1,
                   f"{node}: 0 <= match {pr.match} < next {pr.next} <= last+1 {last + 1}")
            ensure(len(pr.inflights) <= self.config.max_inflight_msgs,
                   f"{node}: inflight {len(pr.inflights)} within the window")
            ensure(pr.is_learner == (node in self.tracker.learners),
                   f"{node}: learner flag matches the configuration")

    # -- step ---------------------------------------------------------------------------

    def _step(self, m: Message) -> None:
        if m.term == 0:
            pass  # a local message (or a forwarded proposal/read)
        elif m.term > self.term:
            if not self._step_higher_term(m):
                return
        elif m.term < self.term:
            self._step_lower_term(m)
            return
        t = m.type
        if t == MsgType.MsgHup:
            self._hup(CAMPAIGN_PRE_ELECTION if self.config.pre_vote else CAMPAIGN_ELECTION)
        elif t in (MsgType.MsgVote, MsgType.MsgPreVote):
            self._handle_vote_request(m)
        else:
            self._step_role(m)

    def _step_higher_term(self, m: Message) -> bool:
        """React to a message from a newer term; False if it is to be ignored."""
        t = m.type
        if t in (MsgType.MsgVote, MsgType.MsgPreVote):
            in_lease = (self.config.check_quorum and self.lead != NONE
                        and self.election_elapsed < self.config.election_ticks)
            if (in_lease or self._vote_promised()) and m.context != TRANSFER_CONTEXT:
                # Leader stickiness (thesis 4.2.3): we heard from a live leader within
                # the election timeout, so this candidate is probably partitioned.
                return False
        if t == MsgType.MsgPreVote:
            return True  # never change term for a pre-vote
        if t == MsgType.MsgPreVoteResp and not m.reject:
            return True  # granted pre-votes carry the future term; we bump it on winning
        if t in (MsgType.MsgApp, MsgType.MsgHeartbeat, MsgType.MsgSnap):
            self._become_follower(m.term, m.frm)
        else:
            self._become_follower(m.term, NONE)
        return True

    def _step_lower_term(self, m: Message) -> None:
        if (self.config.check_quorum or self.config.pre_vote) and m.type in (
                MsgType.MsgHeartbeat, MsgType.MsgApp):
            # A deposed leader cut off for a while: tell it our term so it steps down
            # (with pre-vote/check-quorum, our term would not reach it otherwise).
            self._send(Message(type=MsgType.MsgAppResp, to=m.frm))
        elif m.type == MsgType.MsgPreVote:
            self._send(Message(type=MsgType.MsgPreVoteResp, to=m.frm, term=self.term,
                               reject=True))

    def _vote_promised(self) -> bool:
        """Lease mode: this node promised no vote yet (it started, or heard from a
        leader, less than ``election_ticks`` ticks ago); a leader's lease relies on it.
        Unlike plain stickiness, it survives a term change without a leader."""
        return (self._lease_mode
                and self.ticks - self._heard_leader_tick < self.config.election_ticks)

    def _handle_vote_request(self, m: Message) -> None:
        can_vote = (self.vote == m.frm
                    or (self.vote == NONE and self.lead == NONE)
                    or (m.type == MsgType.MsgPreVote and m.term > self.term))
        if (can_vote and m.type == MsgType.MsgVote and self.vote != m.frm
                and m.context != TRANSFER_CONTEXT and self._vote_promised()):
            can_vote = False
        resp = _VOTE_RESPONSE[m.type]
        if can_vote and self.log.is_up_to_date(m.index, m.log_term):
            # Granted pre-votes answer in the candidate's future term so it does not
            # discard them; the answer leaves only once our vote is durable.
            self._send(Message(type=resp, to=m.frm, term=m.term))
            if m.type == MsgType.MsgVote:
                self.election_elapsed = 0
                self.vote = m.frm
        else:
            self._send(Message(type=resp, to=m.frm, term=self.term, reject=True))

    def _send(self, m: Message) -> None:
        if not m.frm:
            m.frm = self.id
        if m.type in (MsgType.MsgVote, MsgType.MsgVoteResp, MsgType.MsgPreVote,
                      MsgType.MsgPreVoteResp):
            if m.term == 0:
                raise AssertionError(f"{m.type.name} must carry a term")
        else:
            if m.term != 0:
                raise AssertionError(f"{m.type.name} term is set by _send")
            if m.type not in (MsgType.MsgProp, MsgType.MsgReadIndex):
                m.term = self.term
        if m.to == self.id:
            raise AssertionError("messages to self go through _self_after_persist")
        if m.type in AFTER_PERSIST_TYPES:
            self._msgs_after_persist.append(m)
        else:
            self._msgs.append(m)

    # -- roles --------------------------------------------------------------------------

    def _reset(self, term: int) -> None:
        if self.term != term:
            self.term = term
            self.vote = NONE
        self.lead = NONE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = self._rng.randrange(
            self.config.election_ticks, 2 * self.config.election_ticks)
        self._abort_leader_transfer()
        self.tracker.reset_votes()
        last = self.log.last_index()
        durable = self._durable_last_index()
        progress = self.tracker.progress
        for node, pr in progress.items():
            fresh = self.tracker.new_progress(last + 1, pr.is_learner)
            if node == self.id:
                fresh.match = durable
            progress[node] = fresh
        self.pending_conf_index = 0
        self.uncommitted_bytes = 0
        self.read_only = ReadOnly(self.id)
        self._pending_read_index = []

    def _durable_last_index(self) -> int:
        """The last index known durable (advance() confirmed it)."""
        u = self.log.unstable
        if u.snapshot is not None:
            return 0
        if u.entries:
            return u.offset - 1
        return self.log.last_index()

    def _become_follower(self, term: int, lead: str) -> None:
        self._step_role = self._step_follower
        self._tick_role = self._tick_election
        self._reset(term)
        self.lead = lead
        self.role = Role.Follower

    def _become_pre_candidate(self) -> None:
        if self.role == Role.Leader:
            raise AssertionError("invalid transition [leader -> pre-candidate]")
        # Pre-vote changes neither term nor vote (thesis 9.6).
        self._step_role = self._step_candidate
        self._tick_role = self._tick_election
        self.tracker.reset_votes()
        self.lead = NONE
        self.role = Role.PreCandidate

    def _become_candidate(self) -> None:
        if self.role == Role.Leader:
            raise AssertionError("invalid transition [leader -> candidate]")
        self._step_role = self._step_candidate
        self._tick_role = self._tick_election
        self._reset(self.term + 1)
        self.vote = self.id
        self.role = Role.Candidate

    def _become_leader(self) -> None:
        if self.role == Role.Follower:
            raise AssertionError("invalid transition [follower -> leader]")
        self._step_role = self._step_leader
        self._tick_role = self._tick_heartbeat
        self._reset(self.term)
        self.lead = self.id
        self.role = Role.Leader
        own = self.tracker.progress[self.id]
        own.become_replicate()
        own.recent_active = True
        # Conservative: any conf change in the log may still be unapplied.
        self.pending_conf_index = self.log.last_index()
        # The no-op of the new term: committing it commits everything before (5.4.2).
        self._append_entry([Entry(term=0, index=0)], force=True)

    def _promotable(self) -> bool:
        pr = self.tracker.progress.get(self.id)
        return (pr is not None and not pr.is_learner
                and not self.log.has_next_or_in_progress_snapshot())

    # -- ticks --------------------------------------------------------------------------

    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self._promotable() and self.election_elapsed >= self.randomized_election_timeout:
            self.election_elapsed = 0
            self._step(Message(type=MsgType.MsgHup, frm=self.id))

    def _tick_heartbeat(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.config.election_ticks:
            self.election_elapsed = 0
            if self.config.check_quorum:
                self._step(Message(type=MsgType.MsgCheckQuorum, frm=self.id))
            if self.role == Role.Leader and self.lead_transferee != NONE:
                # Thesis 3.10: give up a transfer that did not finish in time.
                self._abort_leader_transfer()
        if self.role != Role.Leader:
            return
        if self.heartbeat_elapsed >= self.config.heartbeat_ticks:
            self.heartbeat_elapsed = 0
            self._step(Message(type=MsgType.MsgBeat, frm=self.id))

    # -- elections ----------------------------------------------------------------------

    def _hup(self, kind: str) -> None:
        if self.role == Role.Leader or not self._promotable():
            return
        if self._has_unapplied_conf_changes():
            return  # the configuration we would campaign in may be stale
        self._campaign(kind)

    def _has_unapplied_conf_changes(self) -> bool:
        log = self.log
        if log.applied >= log.committed:
            return False
        return any(e.type == EntryType.ConfChange
                   for e in log.slice(log.applied + 1, log.committed + 1))

    def _campaign(self, kind: str) -> None:
        if kind == CAMPAIGN_PRE_ELECTION:
            self._become_pre_candidate()
            vote_type, term = MsgType.MsgPreVote, self.term + 1
            # A pre-vote promises nothing durable: count our own at once.
            self.tracker.record_vote(self.id, True)
            if self.tracker.tally_votes()[2] == VoteResult.Won:
                self._campaign(CAMPAIGN_ELECTION)
                return
        else:
            self._become_candidate()
            vote_type, term = MsgType.MsgVote, self.term
            # Our own vote counts once our term and vote are durable (ordering rule).
            self._self_after_persist.append(Message(
                type=MsgType.MsgVoteResp, to=self.id, frm=self.id, term=term))
        ctx = TRANSFER_CONTEXT if kind == CAMPAIGN_TRANSFER else b""
        last_index, last_term = self.log.last_index(), self.log.last_term()
        for node in self.tracker.voter_ids():
            if node != self.id:
                self._send(Message(type=vote_type, to=node, term=term, index=last_index,
                                   log_term=last_term, context=ctx))

    # -- membership ---------------------------------------------------------------------

    def _switch_to_config(self, cs: ConfState) -> None:
        self.tracker.set_config(cs, self.log.last_index())
        own = self.tracker.progress.get(self.id)
        if self.role != Role.Leader:
            return
        if own is None or own.is_learner:
            # Removed (or demoted): stop leading; the remaining voters elect a leader.
            self._become_follower(self.term, NONE)
            return
        if self.lead_transferee != NONE and not self.tracker.is_voter(self.lead_transferee):
            self._abort_leader_transfer()
        if self._maybe_commit():
            self._bcast_append()
        else:
            for node in self.tracker.progress:
                if node != self.id:
                    self._maybe_send_append(node, False)

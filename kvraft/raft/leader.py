"""The leader's half of RaftCore: replication, commit, heartbeats, ReadIndex, transfer.

A mixin so that ``core.py`` stays readable; it uses RaftCore's fields (``log``,
``tracker``, ``term``, ``id``...) and its ``_send``/``_step``/``_become_follower``.
"""

from __future__ import annotations

from kvraft.raft import quorum
from kvraft.raft.confchange import KIND_LEAVE_JOINT, conf_change_kind, decode_conf_change
from kvraft.raft.config import READ_ONLY_LEASE
from kvraft.raft.errors import (
    CompactedError,
    ConfChangeError,
    SnapshotTemporarilyUnavailableError,
)
from kvraft.raft.progress import Progress, ProgressState
from kvraft.raft.read_only import lease_context, split_lease_context
from kvraft.raft.types import (
    NONE,
    Entry,
    EntryType,
    Message,
    MsgType,
    NodeId,
    ProposalDropped,
    ReadState,
)


class LeaderMixin:
    """Leader behaviour (etcd raft.go stepLeader and friends)."""

    # -- step ---------------------------------------------------------------------------

    def _step_leader(self, m: Message) -> None:
        t = m.type
        if t == MsgType.MsgBeat:
            self._bcast_heartbeat()
            return
        if t == MsgType.MsgCheckQuorum:
            if not self.tracker.quorum_active():
                # Thesis 6.2: a leader cut off from a quorum stops serving.
                self._become_follower(self.term, NONE)
            for node, pr in self.tracker.progress.items():
                if node != self.id:
                    pr.recent_active = False
            return
        if t == MsgType.MsgProp:
            self._handle_propose(m)
            return
        if t == MsgType.MsgReadIndex:
            self._handle_read_index(m)
            return
        if t == MsgType.MsgForgetLeader:
            return
        pr = self.tracker.progress.get(m.frm)
        if pr is None:
            return
        if t == MsgType.MsgAppResp:
            self._handle_append_response(m, pr)
        elif t == MsgType.MsgHeartbeatResp:
            self._handle_heartbeat_response(m, pr)
        elif t == MsgType.MsgSnapStatus:
            if pr.state != ProgressState.Snapshot:
                return
            if m.reject:
                # Probe from match, not from a snapshot that never arrived.
                pr.pending_snapshot = 0
            pr.become_probe()
            # Wait for the follower's MsgAppResp (or a heartbeat response) before the
            # next MsgApp.
            pr.msg_app_flow_paused = True
        elif t == MsgType.MsgUnreachable:
            if pr.state == ProgressState.Replicate:
                pr.become_probe()
        elif t == MsgType.MsgTransferLeader:
            self._handle_transfer_leader(m, pr)

    # -- proposals ----------------------------------------------------------------------

    def _handle_propose(self, m: Message) -> None:
        if not m.entries:
            raise AssertionError("MsgProp without entries")
        if self.id not in self.tracker.progress:
            raise ProposalDropped("not-member", "this node was removed from the cluster; "
                                  "send the request to a member")
        if self.lead_transferee != NONE:
            raise ProposalDropped(
                "transferring", f"leadership is moving to {self.lead_transferee}; retry "
                "when the new leader is elected")
        self._check_entry_sizes(m.entries)
        pending_conf = 0
        for i, e in enumerate(m.entries):
            if e.type != EntryType.ConfChange:
                continue
            refused = self._refuse_conf_change(e)
            if refused:
                if m.frm == self.id:
                    raise ProposalDropped("conf-change-pending", refused)
                # A forwarded batch stays; only the refused change becomes a no-op.
                m.entries[i] = Entry(term=0, index=0)
            else:
                pending_conf = self.log.last_index() + i + 1
        if not self._append_entry(m.entries):
            raise ProposalDropped(
                "queue-full", f"more than {self.config.max_uncommitted_bytes} bytes are "
                "proposed but not yet committed; retry shortly")
        if pending_conf:
            self.pending_conf_index = pending_conf
        self._bcast_append()

    def _check_entry_sizes(self, entries: list[Entry]) -> None:
        limit = self.config.max_msg_bytes
        for e in entries:
            if e.size() > limit:
                # It could never be sent: every MsgApp must fit max_msg_bytes.
                raise ProposalDropped(
                    "too-large", f"a proposal of {e.size()} bytes exceeds max_msg_bytes "
                    f"({limit}); split it into smaller proposals")

    def _refuse_conf_change(self, e: Entry) -> str:
        """Why the leader cannot accept this conf change now ("" if it can)."""
        try:
            kind = conf_change_kind(decode_conf_change(e.data))
        except ConfChangeError as err:
            return str(err)
        if self.pending_conf_index > self.log.applied:
            return (f"a membership change at index {self.pending_conf_index} is not yet "
                    f"applied (applied {self.log.applied}); retry when it is")
        joint = self.tracker.is_joint()
        if joint and kind != KIND_LEAVE_JOINT:
            return "the cluster is in a joint configuration; leave it first"
        if not joint and kind == KIND_LEAVE_JOINT:
            return "the cluster is not in a joint configuration; nothing to leave"
        return ""

    def _append_entry(self, entries: list[Entry], force: bool = False) -> bool:
        """Stamp and append entries to the leader's log; queue the leader's own
        acknowledgement to be stepped once they are durable (ordering rule)."""
        li = self.log.last_index()
        term = self.term
        nbytes = 0
        for i, e in enumerate(entries):
            e.term = term
            e.index = li + 1 + i
            nbytes += len(e.data)
        limit = self.config.max_uncommitted_bytes
        if (not force and limit > 0 and self.uncommitted_bytes > 0
                and self.uncommitted_bytes + nbytes > limit):
            return False
        self.uncommitted_bytes += nbytes
        li = self.log.append(entries)
        self._queue_self_ack(li)
        return True

    def _queue_self_ack(self, index: int) -> None:
        queue = self._self_after_persist
        if queue and queue[-1].type == MsgType.MsgAppResp and queue[-1].term == self.term:
            queue[-1].index = index
        else:
            queue.append(Message(type=MsgType.MsgAppResp, to=self.id, frm=self.id,
                                 term=self.term, index=index))

    # -- replication --------------------------------------------------------------------

    def _bcast_append(self) -> None:
        for node in self.tracker.progress:
            if node != self.id:
                self._maybe_send_append(node, True)

    def _bcast_commit(self, before: int) -> None:
        """The commit index moved up from ``before``: tell the followers (an empty MsgApp
        to those with no entries to receive). With ``RaftConfig.lazy_commit_announce``
        only entries some follower lacks are sent, and MsgApps and heartbeats carry the
        commit index, except when a configuration change just committed: every member
        adopts it at once."""
        if (not self.config.lazy_commit_announce
                or before < self.pending_conf_index <= self.log.committed):
            self._bcast_append()
            return
        for node in self.tracker.progress:
            if node != self.id:
                self._maybe_send_append(node, False)

    def _maybe_send_append(self, to: NodeId, send_if_empty: bool) -> bool:
        """Send ``to`` the entries it lacks (or an empty MsgApp carrying the commit index
        if ``send_if_empty``), or a snapshot if they were compacted; True if sent."""
        pr = self.tracker.progress[to]
        if pr.is_paused():
            return False
        prev = pr.next - 1
        try:
            prev_term = self.log.term(prev)
        except CompactedError:
            return self._maybe_send_snapshot(to, pr)
        entries: list[Entry] = []
        # A full window still sends an empty MsgApp when asked, so that a follower whose
        # MsgApps were all lost answers and frees the window.
        if pr.state != ProgressState.Replicate or not pr.inflights.full():
            try:
                entries = self.log.entries_from(pr.next, self.config.max_msg_bytes)
            except CompactedError:
                return self._maybe_send_snapshot(to, pr)
        if not entries and not send_if_empty:
            return False
        self._send(Message(type=MsgType.MsgApp, to=to, index=prev, log_term=prev_term,
                           entries=entries, commit=self.log.committed))
        pr.sent_entries(len(entries), sum(e.size() for e in entries) if entries else 0)
        return True

    def _maybe_send_snapshot(self, to: NodeId, pr: Progress) -> bool:
        if not pr.recent_active:
            return False  # it may be down; do not ship a snapshot into the void
        try:
            snapshot = self.log.snapshot()
        except SnapshotTemporarilyUnavailableError:
            return False
        if snapshot.is_empty():
            raise AssertionError(f"{to} needs compacted entries but storage has no snapshot")
        self._send(Message(type=MsgType.MsgSnap, to=to, snapshot=snapshot))
        pr.become_snapshot(snapshot.metadata.index)
        return True

    def _handle_append_response(self, m: Message, pr: Progress) -> None:
        pr.recent_active = True
        if m.frm == self.id:
            # The leader's own entries became durable (ordering rule): only now does it
            # count toward the commit quorum.
            before = self.log.committed
            if pr.maybe_update(m.index) and self._maybe_commit():
                self._bcast_commit(before)
            return
        if m.reject:
            next_probe = m.reject_hint
            if m.log_term > 0:
                next_probe, _ = self.log.find_conflict_by_term(m.reject_hint, m.log_term)
            if pr.maybe_decr_to(m.index, next_probe):
                if pr.state == ProgressState.Replicate:
                    pr.become_probe()
                self._maybe_send_append(m.frm, True)
            return
        was_paused = pr.is_paused()
        # A duplicate acknowledgement still moves a probing follower back to streaming:
        # it proves the logs match at ``match``.
        if not (pr.maybe_update(m.index)
                or (pr.match == m.index and pr.state == ProgressState.Probe)):
            return
        if pr.state == ProgressState.Probe:
            pr.become_replicate()
        elif pr.state == ProgressState.Snapshot and pr.match + 1 >= self.log.first_index():
            # The snapshot (or the entries after it) arrived: stream from here.
            pr.become_probe()
            pr.become_replicate()
        elif pr.state == ProgressState.Replicate:
            pr.inflights.free_le(m.index)
        before = self.log.committed
        if self._maybe_commit():
            self._bcast_commit(before)
        elif was_paused:
            self._maybe_send_append(m.frm, True)
        while self._maybe_send_append(m.frm, False):
            pass
        if m.frm == self.lead_transferee and pr.match == self.log.last_index():
            self._send_timeout_now(m.frm)

    def _maybe_commit(self) -> bool:
        """Advance the commit index to what a quorum holds, if it is of this term."""
        if not self.log.maybe_commit(self.tracker.committed(), self.term):
            return False
        if self._pending_read_index and self._committed_entry_in_current_term():
            pending, self._pending_read_index = self._pending_read_index, []
            for read in pending:
                self._send_read_index(read)
        return True

    def _committed_entry_in_current_term(self) -> bool:
        return self.log.zero_term_on_err(self.log.committed) == self.term

    # -- heartbeats and ReadIndex -------------------------------------------------------

    def _bcast_heartbeat(self) -> None:
        """The periodic heartbeat, to every follower and learner, with the context of the
        newest pending ReadIndex round (so a round whose own heartbeats were lost, or went
        to a voter that went quiet, still completes)."""
        self._send_heartbeats(self.read_only.last_ctx(),
                              [node for node in self.tracker.progress if node != self.id])

    def _send_heartbeats(self, ctx: bytes, nodes: list[NodeId]) -> None:
        if self.config.read_only_option == READ_ONLY_LEASE:
            # The send tick: its echo is what renews the lease (read_only.py).
            ctx = lease_context(self.ticks, ctx)
        committed = self.log.committed
        progress = self.tracker.progress
        for node in nodes:
            # Never tell a follower to commit beyond what it is known to hold.
            self._send(Message(type=MsgType.MsgHeartbeat, to=node,
                               commit=min(progress[node].match, committed), context=ctx))

    def _handle_heartbeat_response(self, m: Message, pr: Progress) -> None:
        pr.recent_active = True
        pr.msg_app_flow_paused = False  # a paused probe resumes on a heartbeat answer
        if pr.match < self.log.last_index() or pr.state == ProgressState.Probe:
            self._maybe_send_append(m.frm, True)
        ctx = m.context
        if self.config.read_only_option == READ_ONLY_LEASE:
            send_tick, ctx = split_lease_context(ctx)
            if send_tick is not None:
                self.read_only.record_lease_ack(m.frm, send_tick)
        if not ctx:
            return
        done = self.read_only.recv_ack(m.frm, ctx)
        if done is None or not self.tracker.has_quorum(done.acks):
            return
        self.read_only.completed_by(m.frm)
        for finished in self.read_only.advance(done):
            for asker, request_ctx in finished.requests:
                self._answer_read(asker, finished.index, request_ctx)

    def _handle_read_index(self, m: Message) -> None:
        if not self._committed_entry_in_current_term():
            # Thesis 6.4: until an entry of its term commits, the leader does not know
            # the latest commit index (even alone: its commit index is persisted lazily,
            # so after a restart it may lag what was committed); hold the read.
            self._pending_read_index.append(m)
            return
        self._send_read_index(m)

    def _send_read_index(self, m: Message) -> None:
        if self.tracker.is_singleton() or self._in_lease():
            self._answer_read(m.frm, self.log.committed, m.context)
            return
        read_round, new = self.read_only.add_request(self.log.committed, m.frm, m.context)
        asker = m.frm
        ask = self._read_round_voters(asker) if new else []
        if asker != self.id and asker in self.tracker.progress and \
                asker not in read_round.asked and asker not in ask:
            # A follower's read: it learns the commit index it must apply up to from
            # this heartbeat, not a heartbeat interval later.
            ask.append(asker)
        if ask:
            read_round.asked.update(ask)
            self._send_heartbeats(read_round.ctx, ask)

    def _read_round_voters(self, asker: NodeId) -> list[NodeId]:
        """The fewest voters that make a quorum with this leader, in the order
        read_only.py gives: a voter that asked for the read, those heard from since the
        last check-quorum, those that completed recent rounds first, then by id (to stay
        deterministic)."""
        tracker = self.tracker
        progress = tracker.progress
        rank = {node: i for i, node in enumerate(self.read_only.completers)}
        last = len(rank)
        candidates = sorted(
            (node for node in tracker.voter_ids() if node != self.id),
            key=lambda node: (node != asker, not progress[node].recent_active,
                              rank.get(node, last), node))
        halves = [half for half in (tracker.voters, tracker.voters_outgoing) if half]
        acks = {self.id}
        ask = []
        for node in candidates:
            short = [half for half in halves
                     if len(half & acks) < quorum.majority(len(half))]
            if not short:
                break
            if any(node in half for half in short):  # in a joint change, only if it helps
                acks.add(node)
                ask.append(node)
        return ask

    def _in_lease(self) -> bool:
        """True if this leader may answer a read without a heartbeat round: lease mode,
        an entry of its term committed, no MsgTimeoutNow sent this term, and a quorum
        acknowledged a heartbeat sent less than ``lease_ticks()`` ticks ago (the clock
        assumption on RaftConfig; the argument in read_only.py)."""
        config = self.config
        read_only = self.read_only
        if config.read_only_option != READ_ONLY_LEASE or read_only.lease_revoked:
            return False
        if not self._committed_entry_in_current_term():
            return False
        tracker = self.tracker
        since = read_only.lease_send_tick(tracker.voters, tracker.voters_outgoing, self.ticks)
        return self.ticks - since < config.lease_ticks()

    def _answer_read(self, asker: NodeId, index: int, request_ctx: bytes) -> None:
        if asker in (self.id, NONE):
            self._read_states.append(ReadState(index=index, request_ctx=request_ctx))
        else:
            self._send(Message(type=MsgType.MsgReadIndexResp, to=asker, index=index,
                               context=request_ctx))

    # -- leadership transfer (thesis 3.10) ----------------------------------------------

    def _handle_transfer_leader(self, m: Message, pr: Progress) -> None:
        transferee = m.frm
        if pr.is_learner or not self.tracker.is_voter(transferee):
            return
        if self.lead_transferee != NONE:
            if self.lead_transferee == transferee:
                return
            self._abort_leader_transfer()
        if transferee == self.id:
            return
        # The transfer must finish within an election timeout (checked on tick).
        self.election_elapsed = 0
        self.lead_transferee = transferee
        if pr.match == self.log.last_index():
            self._send_timeout_now(transferee)
        else:
            self._maybe_send_append(transferee, True)

    def _send_timeout_now(self, to: NodeId) -> None:
        # The transferee's election overrides the voters' stickiness, whenever the
        # message arrives: the lease can no longer be trusted this term.
        self.read_only.lease_revoked = True
        self._send(Message(type=MsgType.MsgTimeoutNow, to=to))

    def _abort_leader_transfer(self) -> None:
        self.lead_transferee = NONE

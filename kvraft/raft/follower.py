"""The follower's and candidate's halves of RaftCore: AppendEntries, heartbeats,
snapshots, forwarding, and counting votes.

A mixin, like ``leader.py``; it uses RaftCore's fields and its ``_send``/``_campaign``/
``_become_*`` methods.
"""

from __future__ import annotations

from kvraft.raft.quorum import VoteResult
from kvraft.raft.types import NONE, Message, MsgType, ProposalDropped, ReadState, Role, Snapshot

CAMPAIGN_ELECTION = "election"
CAMPAIGN_TRANSFER = "transfer"


class FollowerMixin:
    """Follower and candidate behaviour (etcd raft.go stepFollower/stepCandidate)."""

    def _step_candidate(self, m: Message) -> None:
        t = m.type
        own_resp = (MsgType.MsgPreVoteResp if self.role == Role.PreCandidate
                    else MsgType.MsgVoteResp)
        if t == MsgType.MsgProp:
            raise ProposalDropped("no-leader", "an election is in progress; retry when a "
                                  "leader is elected")
        if t == MsgType.MsgApp:
            self._become_follower(m.term, m.frm)
            self._handle_append_entries(m)
        elif t == MsgType.MsgHeartbeat:
            self._become_follower(m.term, m.frm)
            self._handle_heartbeat(m)
        elif t == MsgType.MsgSnap:
            self._become_follower(m.term, m.frm)
            self._handle_snapshot(m)
        elif t == own_resp:
            self.tracker.record_vote(m.frm, not m.reject)
            result = self.tracker.tally_votes()[2]
            if result == VoteResult.Won:
                if self.role == Role.PreCandidate:
                    self._campaign(CAMPAIGN_ELECTION)
                else:
                    self._become_leader()
                    self._bcast_append()
            elif result == VoteResult.Lost:
                # A rejection carries its sender's term; stay at ours otherwise.
                self._become_follower(self.term, NONE)

    def _step_follower(self, m: Message) -> None:
        t = m.type
        if t == MsgType.MsgProp:
            self._check_entry_sizes(m.entries)
            if self.lead == NONE:
                raise ProposalDropped("no-leader", "no leader is known; retry when a "
                                      "leader is elected")
            if self.config.disable_proposal_forwarding:
                raise ProposalDropped("no-leader", f"this node is not the leader (it is "
                                      f"{self.lead}) and does not forward proposals")
            m.to = self.lead
            self._send(m)
        elif t == MsgType.MsgApp:
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_append_entries(m)
        elif t == MsgType.MsgHeartbeat:
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_heartbeat(m)
        elif t == MsgType.MsgSnap:
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_snapshot(m)
        elif t == MsgType.MsgTransferLeader:
            if self.lead != NONE:
                m.to = self.lead
                m.term = 0
                self._send(m)
        elif t == MsgType.MsgForgetLeader:
            self.lead = NONE
        elif t == MsgType.MsgTimeoutNow:
            # Leadership transfer: skip pre-vote and override stickiness.
            self._hup(CAMPAIGN_TRANSFER)
        elif t == MsgType.MsgReadIndex:
            if self.lead == NONE:
                raise ProposalDropped("no-leader", "no leader is known; retry when a "
                                      "leader is elected")
            m.to = self.lead
            self._send(m)
        elif t == MsgType.MsgReadIndexResp:
            self._read_states.append(ReadState(index=m.index, request_ctx=m.context))

    def _handle_append_entries(self, m: Message) -> None:
        log = self.log
        if m.index < log.committed:
            self._send(Message(type=MsgType.MsgAppResp, to=m.frm, index=log.committed))
            return
        last_new = log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        if last_new is not None:
            self._send(Message(type=MsgType.MsgAppResp, to=m.frm, index=last_new))
            return
        # Fast backtracking (5.3): point the leader at the last index that may match.
        hint = min(m.index, log.last_index())
        hint, hint_term = log.find_conflict_by_term(hint, m.log_term)
        self._send(Message(type=MsgType.MsgAppResp, to=m.frm, index=m.index, reject=True,
                           reject_hint=hint, log_term=hint_term))

    def _handle_heartbeat(self, m: Message) -> None:
        self.log.commit_to(m.commit)
        self._send(Message(type=MsgType.MsgHeartbeatResp, to=m.frm, context=m.context))

    def _handle_snapshot(self, m: Message) -> None:
        snap = m.snapshot
        if snap is not None and self._restore(snap):
            index = self.log.last_index()
        else:
            index = self.log.committed
        self._send(Message(type=MsgType.MsgAppResp, to=m.frm, index=index))

    def _restore(self, snap: Snapshot) -> bool:
        meta = snap.metadata
        log = self.log
        if meta.index <= log.committed:
            return False
        if self.role != Role.Follower:
            # Only a leader of our term sends snapshots; be safe regardless.
            self._become_follower(self.term + 1, NONE)
            return False
        cs = meta.conf_state
        if self.id not in cs.members():
            return False
        if log.match_term(meta.index, meta.term):
            # We already hold the snapshot's last entry: just fast-forward the commit.
            log.commit_to(meta.index)
            return False
        log.restore(snap)
        self.tracker.set_config(cs, log.last_index())
        return True

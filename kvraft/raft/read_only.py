"""Read bookkeeping for the leader: ReadIndex rounds and the leader lease (Raft thesis
6.4 and 6.4.1, etcd read_only.go).

ReadIndex ("safe"). A read request records the leader's commit index, then the leader
confirms it is still leader by a heartbeat round whose ``context`` is the round id; once a
quorum answered, the read may be served when ``applied >= index``. Requests arriving
while a round's heartbeats have not yet left the node (the round is "open": no Ready took
them yet) join that round and raise its index to the current commit index, so one
heartbeat round confirms a whole batch of reads. A completed round also completes every
earlier one.

A round asks only as many voters as it needs: the fewest that make a quorum with the
leader. It asks, in this order, a follower that asked for the read (it learns from that
heartbeat the commit index it must apply up to; a follower whose read joins the round
later is asked too), voters heard from since the last check-quorum before the others, and
among those the ones whose answers completed recent rounds first. Asking everyone would
cost each further voter a wake-up, a message each way and the leader's handling of both,
per round, for an answer the round does not need. The others learn of the round from the
next periodic heartbeat, which carries the newest pending round's context; so if an asked
voter went quiet, the round completes at most a heartbeat interval later, through the
others, and the one that completes it is asked first from then on. Safety does not depend
on whom a round asks: a read is answered only once a quorum acknowledged the round.

Lease ("lease"). Every heartbeat of a lease-mode leader carries the leader's tick counter
at the time it was built (the SEND tick), before the round id; the follower echoes it, and
the leader keeps, per voter, the newest send tick it got back. A voter that answered a
heartbeat sent at tick ``s`` received it after ``s``, and then grants no vote (to anyone,
itself included, except for a leadership transfer) for ``election_ticks`` of its own
ticks: leader stickiness (thesis 4.2.3), and in lease mode also right after it starts,
since a restarted node forgot whom it heard from. So while a quorum (the leader counts
as acknowledging "now") acknowledged a send tick ``s`` with ``now - s <
RaftConfig.lease_ticks()``, no other leader can have been elected, and the leader may
answer a read with its commit index without a round. Outside the lease the read falls
back to a ReadIndex round. The lease is void:

* before the leader commits an entry of its term (it does not know the commit index
  yet, thesis 6.4; such reads wait, in either mode);
* for the rest of the term once the leader sent MsgTimeoutNow (a transfer election
  overrides stickiness, and the message may arrive arbitrarily late).

This is the fix for the flaw etcd-io/raft#166 describes: a lease that merely trusts
check-quorum lets a cut-off leader serve for up to two election timeouts after its last
quorum contact, while the others may elect a new leader after one. Unlike ReadIndex, the
lease rests on the clock assumption stated on ``RaftConfig``.
"""

from __future__ import annotations

from collections.abc import Collection

from kvraft.raft import quorum
from kvraft.raft.types import NodeId

SEND_TICK_BYTES = 8
"""Width of the send tick at the front of a lease-mode heartbeat ``context``."""

NEVER = -(1 << 62)
"""The send tick of a voter that acknowledged nothing yet this term."""


def lease_context(send_tick: int, round_ctx: bytes) -> bytes:
    """A lease-mode heartbeat context: the send tick (8 bytes, big-endian), then the
    ReadIndex round id (``b""`` if no round is pending)."""
    return send_tick.to_bytes(SEND_TICK_BYTES, "big") + round_ctx


def split_lease_context(ctx: bytes) -> tuple[int | None, bytes]:
    """(send tick, round id) of an echoed lease-mode context; (None, ctx) if it is too
    short to carry a send tick."""
    if len(ctx) < SEND_TICK_BYTES:
        return None, ctx
    return int.from_bytes(ctx[:SEND_TICK_BYTES], "big"), ctx[SEND_TICK_BYTES:]


class ReadRound:
    """One leadership confirmation shared by several read requests."""

    __slots__ = ("ctx", "index", "requests", "acks", "asked")

    def __init__(self, ctx: bytes, index: int, leader: NodeId):
        self.ctx = ctx  # heartbeat context identifying the round
        self.index = index  # commit index the reads must wait for
        self.requests: list[tuple[NodeId, bytes]] = []  # (asker, request ctx)
        self.acks: set[NodeId] = {leader}
        self.asked: set[NodeId] = set()  # the nodes this round's own heartbeats went to


class ReadOnly:
    """Pending ReadIndex rounds of one leader term, oldest first, and the lease of that
    term (a new term gets a new ReadOnly, so nothing carries over)."""

    def __init__(self, leader: NodeId):
        self._leader = leader
        self._rounds: dict[bytes, ReadRound] = {}
        self._open: ReadRound | None = None
        self._next_round = 1
        # Voters whose answer completed a round, the latest first: a new round asks
        # them first (LeaderMixin._read_round_voters).
        self.completers: list[NodeId] = []
        self.acked_send_ticks: dict[NodeId, int] = {}  # voter -> newest send tick echoed
        self.lease_revoked = False  # MsgTimeoutNow sent this term: no lease until it ends

    def __len__(self) -> int:
        return len(self._rounds)

    def add_request(self, committed: int, asker: NodeId, ctx: bytes) -> tuple[ReadRound, bool]:
        """Queue a read; return its round and whether the round is NEW (the caller must
        send its heartbeats) rather than the open one the read joined."""
        current = self._open
        if current is not None:
            current.index = max(current.index, committed)
            current.requests.append((asker, ctx))
            return current, False
        round_ctx = self._next_round.to_bytes(8, "big")
        self._next_round += 1
        current = ReadRound(round_ctx, committed, self._leader)
        current.requests.append((asker, ctx))
        self._rounds[round_ctx] = current
        self._open = current
        return current, True

    def seal(self) -> None:
        """The open round's heartbeats are leaving (a Ready took them): later reads start
        a new round, so they are confirmed by heartbeats sent after they arrived."""
        self._open = None

    def last_ctx(self) -> bytes:
        """Context of the newest pending round (b"" if none), carried by every heartbeat
        so a round whose heartbeats were lost still completes."""
        for ctx in reversed(self._rounds):
            return ctx
        return b""

    def recv_ack(self, frm: NodeId, ctx: bytes) -> ReadRound | None:
        """Record a heartbeat answer; return the round it acknowledges, if pending."""
        found = self._rounds.get(ctx)
        if found is not None:
            found.acks.add(frm)
        return found

    def completed_by(self, node: NodeId) -> None:
        """``node``'s answer gave a round its quorum: ask it first next time."""
        completers = self.completers
        if completers and completers[0] == node:
            return
        if node in completers:
            completers.remove(node)
        completers.insert(0, node)

    def advance(self, done: ReadRound) -> list[ReadRound]:
        """Remove and return every round up to and including ``done``, oldest first."""
        out = []
        for ctx in list(self._rounds):
            out.append(self._rounds.pop(ctx))
            if ctx == done.ctx:
                break
        if self._open is not None and self._open.ctx not in self._rounds:
            self._open = None
        return out

    # -- lease ----------------------------------------------------------------------------

    def record_lease_ack(self, frm: NodeId, send_tick: int) -> None:
        """``frm`` echoed a heartbeat sent at ``send_tick`` (answers may arrive out of
        order: keep the newest)."""
        if send_tick > self.acked_send_ticks.get(frm, NEVER):
            self.acked_send_ticks[frm] = send_tick

    def lease_send_tick(self, voters: Collection[NodeId], voters_outgoing: Collection[NodeId],
                        now: int) -> int:
        """The newest send tick acknowledged by a quorum (of both halves when joint),
        the leader counting as acknowledging ``now``; ``NEVER`` if no quorum did."""
        if not voters and not voters_outgoing:
            return NEVER  # no configuration to speak for (quorum math would say "all")
        acked = self.acked_send_ticks
        leader = self._leader

        def tick_of(node: NodeId) -> int:
            return now if node == leader else acked.get(node, NEVER)

        return quorum.joint_committed_index(voters, voters_outgoing, tick_of)

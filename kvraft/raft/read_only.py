"""ReadIndex bookkeeping for the leader (Raft thesis 6.4, etcd read_only.go).

A read request records the leader's commit index, then the leader confirms it is still
leader by a heartbeat round whose ``context`` is the round id; once a quorum answered, the
read may be served when ``applied >= index``. Requests arriving while a round's
heartbeats have not yet left the node (the round is "open": no Ready took them yet) join
that round and raise its index to the current commit index, so one heartbeat round
confirms a whole batch of reads. A completed round also completes every earlier one.
"""

from __future__ import annotations

from kvraft.raft.types import NodeId


class ReadRound:
    """One leadership confirmation shared by several read requests."""

    __slots__ = ("ctx", "index", "requests", "acks")

    def __init__(self, ctx: bytes, index: int, leader: NodeId):
        self.ctx = ctx  # heartbeat context identifying the round
        self.index = index  # commit index the reads must wait for
        self.requests: list[tuple[NodeId, bytes]] = []  # (asker, request ctx)
        self.acks: set[NodeId] = {leader}


class ReadOnly:
    """Pending ReadIndex rounds of one leader term, oldest first."""

    def __init__(self, leader: NodeId):
        self._leader = leader
        self._rounds: dict[bytes, ReadRound] = {}
        self._open: ReadRound | None = None
        self._next_round = 1

    def __len__(self) -> int:
        return len(self._rounds)

    def add_request(self, committed: int, asker: NodeId, ctx: bytes) -> ReadRound | None:
        """Queue a read; return a NEW round whose heartbeats the caller must broadcast,
        or None if the read joined the open round."""
        current = self._open
        if current is not None:
            current.index = max(current.index, committed)
            current.requests.append((asker, ctx))
            return None
        round_ctx = self._next_round.to_bytes(8, "big")
        self._next_round += 1
        current = ReadRound(round_ctx, committed, self._leader)
        current.requests.append((asker, ctx))
        self._rounds[round_ctx] = current
        self._open = current
        return current

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

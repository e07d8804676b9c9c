"""A small in-test network of RaftCores over MemoryStorage (the big simulator lives in
kvraft/testing). Messages are copied on delivery, so nodes never share objects."""

from __future__ import annotations

import copy
from collections.abc import Iterable

from kvraft.raft import (
    EntryType,
    MemoryStorage,
    Message,
    MsgType,
    RaftConfig,
    RaftCore,
    ReadState,
    Role,
    decode_conf_change,
    describe_message,
    describe_ready,
)


def make_core(node: str, voters: Iterable[str], storage: MemoryStorage | None = None,
              **overrides) -> RaftCore:
    """A core with test-friendly defaults (pre-vote/check-quorum on, seed by id)."""
    voters = tuple(voters)
    settings = dict(id=node, voters=voters, election_ticks=10, heartbeat_ticks=1,
                    pre_vote=True, check_quorum=True, seed=sum(map(ord, node)))
    settings.update(overrides)
    return RaftCore(RaftConfig(**settings), storage or MemoryStorage())


class Cluster:
    """Cores wired by a lossless, in-order network with partitions.

    ``stabilize()`` runs Ready loops and delivers messages until nothing moves.
    """

    def __init__(self, ids: Iterable[str], voters: Iterable[str] | None = None, **overrides):
        self.ids = list(ids)
        voters = tuple(voters) if voters is not None else tuple(self.ids)
        self.overrides = overrides
        self.storage = {i: MemoryStorage() for i in self.ids}
        self.cores = {i: make_core(i, voters, self.storage[i], **overrides)
                      for i in self.ids}
        self.inflight: list[Message] = []  # sent, not yet delivered
        self.applied: dict[str, list] = {i: [] for i in self.ids}
        self.read_states: dict[str, list[ReadState]] = {i: [] for i in self.ids}
        self.snapshots_installed: dict[str, list] = {i: [] for i in self.ids}
        self.cut: set[tuple[str, str]] = set()
        self.down: set[str] = set()
        self.trace: list[str] | None = None  # describe_* lines when set
        self.intercept = None  # optional Message -> Message | None, applied on delivery

    # -- topology -----------------------------------------------------------------------

    def partition(self, *groups: Iterable[str]) -> None:
        """Only nodes within the same group talk."""
        where = {}
        for n, group in enumerate(groups):
            for node in group:
                where[node] = n
        self.cut = {(a, b) for a in self.ids for b in self.ids
                    if a != b and where.get(a, -1) != where.get(b, -2)}

    def isolate(self, node: str) -> None:
        """Cut ``node`` from everyone."""
        self.partition([node], [i for i in self.ids if i != node])

    def heal(self) -> None:
        """Reconnect everyone."""
        self.cut = set()

    def add_node(self, node: str, voters: Iterable[str]) -> RaftCore:
        """A new, empty node (to be added with a conf change)."""
        self.ids.append(node)
        self.storage[node] = MemoryStorage()
        self.cores[node] = make_core(node, voters, self.storage[node], **self.overrides)
        self.applied[node] = []
        self.read_states[node] = []
        self.snapshots_installed[node] = []
        return self.cores[node]

    def restart(self, node: str) -> RaftCore:
        """Crash and restart ``node``: a new core over the same (durable) storage,
        resuming from the last applied index."""
        applied = max(self.applied[node][-1].index if self.applied[node] else 0,
                      self.storage[node].snapshot().metadata.index)
        voters = self.cores[node].config.voters
        self.cores[node] = make_core(node, voters, self.storage[node], applied=applied,
                                     **self.overrides)
        self.inflight = [m for m in self.inflight if m.frm != node]
        return self.cores[node]

    # -- driving ------------------------------------------------------------------------

    def core(self, node: str) -> RaftCore:
        return self.cores[node]

    def tick(self, node: str, n: int = 1) -> None:
        for _ in range(n):
            self.cores[node].tick()

    def drain(self, node: str) -> bool:
        """Run the Ready loop of ``node`` once per Ready until it has none; queue what it
        sends. True if anything happened."""
        core = self.cores[node]
        storage = self.storage[node]
        moved = False
        while core.has_ready():
            moved = True
            rd = core.ready()
            if self.trace is not None:
                self.trace.append(f"> {node} handling Ready")
                self.trace.extend("  " + line for line in describe_ready(rd).splitlines())
            self.inflight.extend(rd.messages)
            if rd.snapshot is not None:
                storage.apply_snapshot(rd.snapshot)
                self.snapshots_installed[node].append(rd.snapshot)
            if rd.entries:
                storage.append(rd.entries)
            if rd.hard_state is not None:
                storage.set_hard_state(rd.hard_state)
            self.inflight.extend(rd.messages_after_persist)
            for e in rd.committed_entries:
                if e.type == EntryType.ConfChange:
                    core.apply_conf_change(decode_conf_change(e.data))
                self.applied[node].append(e)
            self.read_states[node].extend(rd.read_states)
            core.advance(rd)
            core.check_invariants()
        return moved

    def deliver(self, msgs: list[Message] | None = None) -> bool:
        """Deliver queued messages, recipient by recipient in id order (each sender's
        order kept); drop those across a cut or to/from a down node, and pass the rest
        through ``intercept`` (which may return a changed message, or None to drop).
        True if any arrived."""
        batch = self.inflight if msgs is None else msgs
        if msgs is None:
            self.inflight = []
        delivered = False
        for node in self.ids:
            mine = [m for m in batch if m.to == node]
            if not mine:
                continue
            if self.trace is not None:
                self.trace.append(f"> {node} receiving messages")
            for original in mine:
                m = original
                dropped = ((m.frm, m.to) in self.cut or m.to in self.down
                           or m.frm in self.down)
                if not dropped and self.intercept is not None:
                    m = self.intercept(copy.deepcopy(m))
                    dropped = m is None
                if self.trace is not None:
                    prefix = "  dropped: " if dropped else "  "
                    self.trace.append(prefix + describe_message(original if dropped else m))
                if dropped:
                    continue
                self.cores[node].step(copy.deepcopy(m))
                delivered = True
        return delivered

    def stabilize(self, rounds_max: int = 1000) -> None:
        """Ready loops and deliveries until quiet."""
        for _ in range(rounds_max):
            moved = False
            for node in self.ids:
                if node not in self.down:
                    moved |= self.drain(node)
            moved |= self.deliver()
            if not moved:
                return
        raise AssertionError(f"cluster did not stabilize in {rounds_max} rounds")

    def elect(self, node: str) -> None:
        """Make ``node`` leader by campaigning and stabilizing."""
        self.cores[node].campaign()
        self.stabilize()
        assert self.cores[node].role == Role.Leader, self.cores[node].status()

    def leaders(self) -> list[str]:
        return [i for i in self.ids if i not in self.down
                and self.cores[i].role == Role.Leader]

    def propose(self, node: str, data: bytes) -> None:
        self.cores[node].propose(data)

    def applied_data(self, node: str) -> list[bytes]:
        """Payloads of applied normal, non-empty entries."""
        return [e.data for e in self.applied[node]
                if e.type == EntryType.Normal and e.data]

    def compact(self, node: str, data: bytes = b"") -> int:
        """Snapshot ``node`` at its applied index and compact its log there."""
        index = self.cores[node].log.applied
        storage = self.storage[node]
        storage.create_snapshot(index, self.cores[node].tracker.conf_state(), data)
        storage.compact(index)
        return index

    def msgs_of(self, kind: MsgType) -> list[Message]:
        return [m for m in self.inflight if m.type == kind]


def persist_and_advance(core: RaftCore, storage: MemoryStorage) -> list[Message]:
    """Handle every Ready of a lone core (persist, 'apply', advance); return everything it
    sent, messages before messages_after_persist, Ready by Ready."""
    sent: list[Message] = []
    while core.has_ready():
        rd = core.ready()
        sent.extend(rd.messages)
        if rd.snapshot is not None:
            storage.apply_snapshot(rd.snapshot)
        storage.append(rd.entries)
        if rd.hard_state is not None:
            storage.set_hard_state(rd.hard_state)
        sent.extend(rd.messages_after_persist)
        core.advance(rd)
        core.check_invariants()
    return sent


def storage_with(entries: list[tuple[int, int]], term: int = 0, vote: str = "",
                 commit: int = 0) -> MemoryStorage:
    """A MemoryStorage holding entries given as (index, term), and a hard state."""
    from kvraft.raft import Entry, HardState
    s = MemoryStorage()
    s.append([Entry(term=t, index=i, data=b"e%d" % i) for i, t in entries])
    s.set_hard_state(HardState(term=term, vote=vote, commit=commit))
    return s

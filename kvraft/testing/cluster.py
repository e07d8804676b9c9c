"""SimCluster: N RaftCores driven exactly per the kvraft.raft contract, over a simulated
network and simulated disks, on one deterministic event queue.

Everything random comes from one ``random.Random`` (each core gets its own Random seeded
from it), and events at the same time run in scheduling order, so a seed replays byte for
byte. ``trace_digest()`` summarises a run for determinism tests.

Driving a node (see the package docstring of ``kvraft.raft``): after every input
(tick, step, propose, read_index, ...) the node drains its Ready if none is in flight.
The Ready's writes go to the node's SimStorage at once (volatile), ``rd.messages`` leave
at once, and a "persist" event fires after a random delay: then the writes are synced
(if ``must_sync``), ``rd.messages_after_persist`` leave, committed entries are applied,
read states are served, and ``advance`` is called. A crash in between loses the writes.
Meanwhile the node keeps taking messages and ticks, as a real node would.

Scripted use (other tests)::

    c = SimCluster(3, seed=1)
    leader = c.run_until_leader()
    c.isolate(leader); c.run_for(500); c.heal()
    c.crash("n2"); c.restart("n2")
    c.propose(c.run_until_leader(), b"...")

Membership (kvraft.testing.membership): ``add_node()`` starts an empty joiner,
``propose_conf_change(leader, ConfChange(...))`` changes the configuration, ``conf`` is
the newest configuration applied anywhere, ``members()`` its live members; removed nodes
are retired (stopped for good) shortly after their removal is applied.
"""

from __future__ import annotations

import hashlib
import heapq
import random
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kvraft.raft import (
    ConfState,
    Entry,
    EntryType,
    MemoryStorage,
    Message,
    MsgType,
    ProposalDropped,
    RaftConfig,
    RaftCore,
    Ready,
    Role,
)
from kvraft.testing.clients import ClientRequest, SimClient
from kvraft.testing.durable_storage import SimStorage
from kvraft.testing.invariants import InvariantViolation, SafetyMonitor
from kvraft.testing.kvmodel import KVMachine, encode_batch
from kvraft.testing.membership import ClusterMembership
from kvraft.testing.network import NetworkFaults, SimNetwork
from kvraft.testing.serving import SCRIPT_CLIENT, ClientServing

try:  # the core's stable message text, when present
    from kvraft.raft import describe_message as _describe_message
except ImportError:  # pragma: no cover - older cores
    _describe_message = None

__all__ = ["SimCluster", "SimNode", "NodeSettings"]


@dataclass(slots=True)
class NodeSettings:
    """Per-node Raft and driver settings (times in simulation steps)."""

    election_ticks: int = 10
    heartbeat_ticks: int = 1
    pre_vote: bool = True
    check_quorum: bool = True
    tick_steps: int = 10  # steps between two ticks of a node
    tick_skew_steps: int = 1  # each node's tick period is tick_steps +- up to this
    persist_steps_max: int = 6  # a Ready's write takes 0..this many steps
    snapshot_every: int = 0  # compact the log every this many applied entries (0: never)
    lose_unsynced_prefix: bool = True  # a crash may keep a prefix of unsynced writes
    torn_writes: bool = True  # ... and tear the last of them
    report_unreachable: bool = True  # tell the sender when a partition cut a message


@dataclass(slots=True)
class SimNode:
    """One simulated node: its core, disk, state machine and driver state."""

    id: str
    storage: SimStorage
    core: Any = None
    kv: KVMachine = field(default_factory=KVMachine)
    alive: bool = False
    incarnation: int = 0
    tick_steps: int = 10
    inflight: Ready | None = None
    applied: int = 0  # last index applied in this incarnation
    pending_writes: dict[tuple[int, int], int] = field(default_factory=dict)
    pending_reads: dict[bytes, ClientRequest] = field(default_factory=dict)
    waiting_reads: list[tuple[int, ClientRequest]] = field(default_factory=list)
    completeness_due: tuple[int, int] | None = None  # (term, applied upto) to check
    conf: ConfState = field(default_factory=ConfState)  # configuration as applied
    join_voters: tuple[str, ...] = ()  # a joiner's placeholder configuration
    compact_due: bool = False  # compact after this apply (a member was added)
    retired: bool = False  # removed from the cluster and stopped for good


class SimCluster(ClientServing, ClusterMembership):
    """A cluster of ``nodes`` (a count, or names) on one deterministic event loop."""

    def __init__(self, nodes: int | tuple[str, ...] = 3, *, seed: int = 0,
                 rng: random.Random | None = None, faults: NetworkFaults | None = None,
                 settings: NodeSettings | None = None,
                 core_factory: Callable[[RaftConfig, Any], Any] = RaftCore,
                 client_delay_steps_max: int = 5, client_drop_rate: float = 0.0,
                 trace: Callable[[str], None] | None = None, trace_keep: int = 300,
                 digest: bool = True, start: bool = True):
        names = tuple(f"n{i + 1}" for i in range(nodes)) if isinstance(nodes, int) else nodes
        self.names = names
        self.seed = seed
        self.rng = rng if rng is not None else random.Random(seed)
        self.settings = settings or NodeSettings()
        self.core_factory = core_factory
        self.network = SimNetwork(names, self.rng, faults or NetworkFaults())
        self.monitor = SafetyMonitor(names)
        self.client_delay_steps_max = client_delay_steps_max
        self.client_drop_rate = client_drop_rate
        self.now = 0
        self._queue: list[tuple[int, int, str, tuple]] = []
        self._seq = 0
        self._digest = hashlib.sha256() if digest else None
        self._recent: deque[tuple[int, str, Any]] = deque(maxlen=trace_keep)
        self._trace_out = trace
        self.stats: Counter[str] = Counter()
        self.clients: dict[int, SimClient] = {}
        self._script_requests = 0
        self._script_reads: dict[int, Any] = {}
        conf = ConfState(voters=names)
        self.initial_names = names
        self.conf = conf  # the newest configuration applied anywhere (membership.py)
        self.conf_index = 0
        self.joiners: list[str] = []  # started to be added, not members yet
        self.nodes: dict[str, SimNode] = {}
        for name in names:
            self._create_node(name, conf)
        if start:
            for name in names:
                self.restart(name)

    def _create_node(self, name: str, conf: ConfState,
                     join_voters: tuple[str, ...] = ()) -> SimNode:
        s = self.settings
        skew = self.rng.randint(-s.tick_skew_steps, s.tick_skew_steps)
        node = SimNode(id=name, storage=SimStorage(conf, MemoryStorage),
                       tick_steps=max(1, s.tick_steps + skew), conf=conf,
                       join_voters=join_voters)
        self.nodes[name] = node
        return node

    # == time ==============================================================================

    def schedule(self, delay: int, kind: str, *args: Any) -> None:
        """Run event ``kind`` after ``delay`` steps (same-time events keep their order)."""
        self._seq += 1
        heapq.heappush(self._queue, (self.now + delay, self._seq, kind, args))

    def run_until(self, time: int) -> None:
        """Process every event up to simulation time ``time``."""
        queue = self._queue
        while queue and queue[0][0] <= time:
            at, _, kind, args = heapq.heappop(queue)
            self.now = at
            try:
                getattr(self, "_on_" + kind)(*args)
            except InvariantViolation as violation:
                self.note("violation", f"{violation.name}: {violation.detail}")
                raise violation.with_seed(self.seed) from None
        self.now = max(self.now, time)

    def run_for(self, steps: int) -> None:
        """Advance simulation time by ``steps``."""
        self.run_until(self.now + steps)

    def run_until_true(self, condition: Callable[[], bool], steps_max: int,
                       poll_steps: int = 10) -> bool:
        """Run until ``condition()`` holds (checked every ``poll_steps``) or ``steps_max``
        steps pass; return whether it held."""
        deadline = self.now + steps_max
        while self.now < deadline:
            if condition():
                return True
            self.run_until(min(deadline, self.now + poll_steps))
        return condition()

    def run_until_leader(self, steps_max: int = 5000) -> str:
        """Run until some live node leads; return it (AssertionError if none in time)."""
        if not self.run_until_true(lambda: self.leader() is not None, steps_max):
            raise AssertionError(f"no leader after {steps_max} steps (seed {self.seed}); "
                                 f"statuses: {self.describe_nodes()}")
        return self.leader()

    # == tracing ===========================================================================

    def note(self, kind: str, detail: Any) -> None:
        """Record an event in the trace (digest, recent-events ring, live output)."""
        if self._digest is not None:
            self._digest.update(f"{self.now} {kind} {detail}\n".encode())
        self._recent.append((self.now, kind, detail))
        if self._trace_out is not None:
            self._trace_out(self._format(self.now, kind, detail))

    def _note_message(self, kind: str, m: Message) -> None:
        # Digest a cheap fixed rendering; keep the object for a readable trace later.
        if self._digest is not None:
            self._digest.update(
                f"{self.now} {kind} {m.frm}>{m.to} {int(m.type)} {m.term} {m.log_term} "
                f"{m.index} {m.commit} {len(m.entries)} {int(m.reject)} {m.reject_hint}\n"
                .encode())
        self._recent.append((self.now, kind, m))
        if self._trace_out is not None:
            self._trace_out(self._format(self.now, kind, m))

    @staticmethod
    def _format(now: int, kind: str, detail: Any) -> str:
        if isinstance(detail, Message):
            text = (_describe_message(detail) if _describe_message is not None else
                    f"{detail.frm}->{detail.to} {detail.type.name} Term:{detail.term} "
                    f"Log:{detail.log_term}/{detail.index} Commit:{detail.commit} "
                    f"Entries:{len(detail.entries)} Reject:{detail.reject}")
            return f"{now:>7} {kind:<8} {text}"
        return f"{now:>7} {kind:<8} {detail}"

    def recent_events(self) -> list[str]:
        """The last events, readable (message events via ``describe_message``)."""
        return [self._format(t, k, d) for t, k, d in self._recent]

    def trace_digest(self) -> str:
        """SHA-256 of every event so far: equal for two runs of the same seed ("" when
        the cluster was made with ``digest=False``)."""
        return self._digest.hexdigest() if self._digest is not None else ""

    # == observation =======================================================================

    def leader(self) -> str | None:
        """The live node that is leader in the highest term, if any."""
        best, best_term = None, -1
        for name in self.names:
            node = self.nodes[name]
            if node.alive and node.core.role == Role.Leader and node.core.term > best_term:
                best, best_term = name, node.core.term
        return best

    def alive(self) -> list[str]:
        """Names of the running nodes."""
        return [n for n in self.names if self.nodes[n].alive]

    def describe_nodes(self) -> str:
        """One line per node: role, term, commit, applied (or 'down')."""
        parts = []
        for name in self.names:
            node = self.nodes[name]
            if not node.alive:
                parts.append(f"{name}: {'retired' if node.retired else 'down'}")
                continue
            st = node.core.status()
            parts.append(f"{name}: {st['role'].value} term {st['term']} leader "
                         f"{st['leader_id'] or '-'} commit {st['commit_index']} "
                         f"applied {node.applied}")
        return "; ".join(parts)

    # == faults and operations ===============================================================

    def partition(self, *groups: tuple[str, ...]) -> None:
        """Symmetric partition into ``groups`` (unnamed nodes form one more group)."""
        self.network.partition(*groups)
        self.note("net", f"partition {groups}")

    def isolate(self, node: str) -> None:
        """Cut ``node`` off both ways."""
        self.network.isolate(node)
        self.note("net", f"isolate {node}")

    def block(self, frm: str, to: str) -> None:
        """Cut the one-way link ``frm -> to``."""
        self.network.block(frm, to)
        self.note("net", f"block {frm}->{to}")

    def bridge(self, left: tuple[str, ...], bridge_node: str, right: tuple[str, ...]) -> None:
        """``left`` and ``right`` cannot talk; ``bridge_node`` talks to both."""
        self.network.bridge(left, bridge_node, right)
        self.note("net", f"bridge {left} <{bridge_node}> {right}")

    def heal(self) -> None:
        """Restore every link."""
        self.network.heal()
        self.note("net", "heal")

    def crash(self, name: str) -> None:
        """Stop ``name`` now: unsynced writes are lost (a random prefix may survive,
        torn, per the settings); messages in flight to it are dropped on arrival."""
        node = self.nodes[name]
        if not node.alive:
            return
        what = self._stop(node)
        self.stats["crashes"] += 1
        self.note("crash", f"{name}: {what}")
        self._check_durable(node)

    def _stop(self, node: SimNode) -> str:
        """Stop ``node`` as a crash does; returns what its disk lost."""
        if not node.alive:
            return "already down"
        s = self.settings
        node.alive = False
        node.incarnation += 1
        node.inflight = None
        node.compact_due = False
        node.pending_writes.clear()
        node.pending_reads.clear()
        node.waiting_reads.clear()
        node.completeness_due = None
        return node.storage.crash(self.rng if s.lose_unsynced_prefix else None,
                                  torn=s.torn_writes)

    def restart(self, name: str) -> None:
        """Start ``name`` from its durable storage: the state machine restores the
        durable snapshot (if any) and the core starts with ``applied`` at its index;
        committed entries after it are replayed."""
        node = self.nodes[name]
        if node.alive or node.retired:
            return
        snap = node.storage.durable.snapshot
        if snap is not None and not snap.is_empty():
            node.kv = KVMachine.restore(snap.data)
            node.conf = snap.metadata.conf_state
        else:
            node.kv = KVMachine()
            node.conf = node.storage.initial_conf
        node.applied = node.kv.last_applied
        s = self.settings
        config = RaftConfig(
            id=name, voters=node.join_voters or self.initial_names,
            election_ticks=s.election_ticks,
            heartbeat_ticks=s.heartbeat_ticks, pre_vote=s.pre_vote,
            check_quorum=s.check_quorum, rng=random.Random(self.rng.getrandbits(64)),
            applied=node.applied)
        node.core = self.core_factory(config, node.storage.core_storage)
        node.alive = True
        if node.incarnation:
            self.stats["restarts"] += 1
        self.note("start", f"{name} incarnation {node.incarnation} applied {node.applied} "
                  f"durable last {node.storage.durable.last_index}")
        self.schedule(self.rng.randint(1, node.tick_steps), "tick", name, node.incarnation)
        self._after_input(node)

    def propose(self, name: str, data: bytes) -> bool:
        """Propose ``data`` (a raw entry payload) at ``name``; False if dropped."""
        node = self.nodes[name]
        try:
            node.core.propose(data)
        except ProposalDropped:
            return False
        finally:
            self._after_input(node)
        return True

    def propose_put(self, name: str, key: str, value: Any) -> bool:
        """Propose ``put(key, value)`` at ``name`` as a KV command (client 0); False if
        the proposal was dropped."""
        self._script_requests += 1
        return self.propose(name, encode_batch([{"c": SCRIPT_CLIENT,
                                                 "r": self._script_requests,
                                                 "f": "put", "k": key, "v": value}]))

    def kv_state(self, name: str) -> dict[str, Any]:
        """The key-value contents ``name`` has applied."""
        return dict(self.nodes[name].kv.data)

    def transfer_leadership(self, name: str, to: str) -> None:
        """Ask ``name`` (if it leads) to hand leadership to ``to``."""
        node = self.nodes[name]
        if node.alive and node.core.tracker.is_voter(to):
            node.core.transfer_leadership(to)
            self.note("transfer", f"{name} -> {to}")
            self._after_input(node)

    def campaign(self, name: str) -> None:
        """Make ``name`` start an election now."""
        node = self.nodes[name]
        if node.alive:
            node.core.campaign()
            self.note("campaign", name)
            self._after_input(node)

    # == events ==============================================================================

    def _on_tick(self, name: str, incarnation: int) -> None:
        node = self.nodes[name]
        if not node.alive or node.incarnation != incarnation:
            return
        node.core.tick()
        self.schedule(node.tick_steps, "tick", name, incarnation)
        self._after_input(node)
        self._maybe_leave_joint(node)

    def _on_msg(self, m: Message) -> None:
        node = self.nodes[m.to]
        if not node.alive or not self.network.link_up(m.frm, m.to):
            self.network.stats["cut" if node.alive else "to-dead"] += 1
            if m.type == MsgType.MsgSnap:
                self._report_snapshot(m.frm, m.to, False)
            return
        self._note_message("recv", m)
        node.core.step(m)
        self._after_input(node)
        if m.type == MsgType.MsgSnap:
            self._report_snapshot(m.frm, m.to, True)

    def _on_persist(self, name: str, incarnation: int, rd: Ready) -> None:
        node = self.nodes[name]
        if not node.alive or node.incarnation != incarnation:
            return  # crashed while writing: the write is lost
        if rd.must_sync:
            node.storage.sync()
            self._check_durable(node)
        for m in rd.messages_after_persist:
            self._send(m)
        if rd.snapshot is not None and not rd.snapshot.is_empty():
            node.kv = KVMachine.restore(rd.snapshot.data)
            node.applied = rd.snapshot.metadata.index
            node.conf = rd.snapshot.metadata.conf_state
            self.note("restore", f"{name} from snapshot at {node.applied}")
        if rd.committed_entries:
            self._apply(node, rd)
        node.waiting_reads.extend(
            (rs.index, node.pending_reads.pop(rs.request_ctx))
            for rs in rd.read_states if rs.request_ctx in node.pending_reads)
        self._serve_reads(node)
        node.inflight = None
        node.core.advance(rd)
        self._maybe_compact(node)
        self._after_input(node)

    def _on_snapstatus(self, leader: str, incarnation: int, follower: str, ok: bool) -> None:
        node = self.nodes[leader]
        if node.alive and node.incarnation == incarnation:
            node.core.report_snapshot(follower, ok)
            self._after_input(node)

    def _on_call(self, fn: Callable[[], None]) -> None:
        fn()

    # == the driver ============================================================================

    def _after_input(self, node: SimNode) -> None:
        """After any input to a node's core: watch for leadership, drain its Ready."""
        core = node.core
        if core.role == Role.Leader:
            if self.monitor.note_leader(node.id, core.term):
                node.completeness_due = (core.term, self.monitor.max_applied)
                self.note("leader", f"{node.id} term {core.term}")
            if core.log.committed > self.monitor.commit_index:
                self._note_leader_commit(node)
        if node.inflight is None and core.has_ready():
            self._handle_ready(node, core.ready())

    def _handle_ready(self, node: SimNode, rd: Ready) -> None:
        # The core's own invariants, once per Ready (per input costs ~25% more time).
        try:
            node.core.check_invariants()
        except AssertionError as broken:
            raise InvariantViolation("core invariants", f"{node.id}: {broken}") from None
        storage = node.storage
        if rd.snapshot is not None and not rd.snapshot.is_empty():
            storage.write_snapshot(rd.snapshot)
        storage.write_entries(rd.entries)
        if rd.hard_state is not None:
            # Commits are noted from leaders, with their configuration (membership.py).
            storage.write_hard_state(rd.hard_state)
        if node.completeness_due is not None:
            term, upto = node.completeness_due
            node.completeness_due = None
            self.monitor.check_leader_completeness(node.id, term, storage.live, upto)
        self.note("ready", f"{node.id} ents {len(rd.entries)} commit "
                  f"{len(rd.committed_entries)} hs {rd.hard_state} sync {int(rd.must_sync)}")
        for m in rd.messages:
            self._send(m)
        node.inflight = rd
        delay = self.rng.randint(0, self.settings.persist_steps_max)
        self.schedule(delay, "persist", node.id, node.incarnation, rd)

    def _send(self, m: Message) -> None:
        # A copy per delivery: the receiver owns (and may reuse) what it gets.
        delays = self.network.send(m.frm, m.to)
        self._note_message("send" if delays else "lost", m)
        if not delays:
            if m.type == MsgType.MsgSnap:
                self._report_snapshot(m.frm, m.to, False)
            elif (self.settings.report_unreachable
                  and not self.network.link_up(m.frm, m.to)):
                sender = self.nodes[m.frm]
                if sender.alive:
                    sender.core.report_unreachable(m.to)
            return
        for delay in delays:
            self.schedule(delay, "msg", _copy_message(m))

    def _report_snapshot(self, leader: str, follower: str, ok: bool) -> None:
        # The transport tells the sender how a snapshot send ended, a step later.
        node = self.nodes[leader]
        self.schedule(1, "snapstatus", leader, node.incarnation, follower, ok)

    def _apply(self, node: SimNode, rd: Ready) -> None:
        status = node.core.status()
        commit, node_term = status["commit_index"], status["term"]
        for entry in rd.committed_entries:
            if entry.index <= node.applied:
                continue  # covered by a snapshot restored in this Ready
            self.monitor.note_apply(node.id, entry.index, entry.term, entry.data,
                                    node.applied, commit, node_term)
            node.applied = entry.index
            if entry.type == EntryType.ConfChange:
                self._apply_conf_entry(node, entry)
                continue
            for client, request, result in node.kv.apply(entry.index, entry.data):
                self._answer_write(node, client, request, result)
        self.stats["applied"] += len(rd.committed_entries)

    def _maybe_compact(self, node: SimNode) -> None:
        every = self.settings.snapshot_every
        storage = node.storage
        due, node.compact_due = node.compact_due, False
        if due and node.applied > storage.live.base_index:
            pass  # a member was added: it must be sent a snapshot that includes it
        elif not (every and node.applied - storage.live.base_index >= every):
            return
        if node.applied <= storage.live.last_index:
            storage.compact(node.applied, node.kv.snapshot(), node.conf)
            self.stats["snapshots"] += 1
            self.note("compact", f"{node.id} at {node.applied}")

    def _check_durable(self, node: SimNode | None) -> None:
        if node is not None:
            lo = node.storage.take_dirty()
            if lo is not None:
                self.monitor.note_durable(node.id, node.storage.durable, lo)
        self.monitor.check_committed_durable({n: self.nodes[n].storage.durable
                                              for n in self.names})


def _copy_message(m: Message) -> Message:
    """What the receiver gets: its own Message and Entry objects (as if decoded from the
    wire), so no core can change another's state by mutating what it was sent."""
    entries = [Entry(e.term, e.index, e.type, e.data) for e in m.entries] if m.entries else []
    return Message(m.type, m.to, m.frm, m.term, m.log_term, m.index, entries, m.commit,
                   m.snapshot, m.reject, m.reject_hint, m.context)

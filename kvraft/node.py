"""RaftNodeService: the only place where the pure core meets I/O.

Each reactor turn the service
1. turns every client write of the turn into ONE proposal (a msgpack batch) and every
   linearizable read of the turn into ONE ReadIndex request;
2. drains the core's Ready: applies committed entries that are already durable locally;
   sends ``messages`` and puts them on the wire at once (followers write in parallel
   with us); appends ``entries`` to the log (cheap: page cache) and fsyncs;
3. when the write is durable: sends ``messages_after_persist`` (votes, append
   acknowledgements — never before, see kvraft.raft), applies the remaining committed
   entries, answers reads whose index is applied, and calls ``advance``.

A leader starts its fsync through Linux AIO (``kvraft.storage.aio``, ``storage.fsync_aio``,
on by default) and, while the kernel flushes, applies the entries that are committed and
durable here and answers their clients: its CPU work and its disk overlap, with no thread
and no GIL handoff. Its own append acknowledgement still waits for the flush (``advance``),
so a write is acknowledged only once a majority has it on disk. A follower flushes inline:
its acknowledgement waits for the disk either way, and it applies after sending it.

Without AIO the fsync runs on the reactor thread (DESIGN.md: nothing blocks longer than
one fsync of one batch). Measured on a busy 2-core machine, handing it to a writer thread
cost more than it saved: a thread hop and a GIL handoff each way per batch (about 15 us of leader
CPU per client write at 50 unpipelined clients, and as much latency), while requests
that arrive during the fsync wait in the kernel and make the next batch larger anyway.
``fsync_in_thread=True`` (configuration key ``storage.fsync_in_thread``) keeps the reactor
serving while the disk works (heartbeats go on during a disk stall of seconds); then the
core keeps taking proposals, messages and ticks meanwhile but hands out no new Ready:
everything that arrives goes into the next Ready (group commit), while what promises
nothing durable leaves at once (``take_messages``).
"""

from __future__ import annotations

import heapq
import os
from collections import deque
from collections.abc import Callable
from itertools import chain
from time import perf_counter
from typing import Any

import msgpack
from twisted.application.service import Service
from twisted.internet import defer, threads
from twisted.internet.interfaces import IReactorFDSet
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from kvraft.bootstrap import load_state
from kvraft.client.backend import IClientBackend
from kvraft.client.errors import NoLeaderError, OutcomeUnknownError, OverloadedError
from kvraft.interfaces import IBatchStateMachine, IFdSyncLogStore
from kvraft.membership import Membership
from kvraft.metrics import NodeMetrics
from kvraft.raft import (
    ConfState,
    EntryType,
    HardState,
    LogLostError,
    MsgType,
    ProposalDropped,
    RaftConfig,
    RaftCore,
    Ready,
    Role,
    Snapshot,
)
from kvraft.raft.types import DRIVER_MESSAGES
from kvraft.snapshot_stream import SnapshotReceiver, SnapshotSender
from kvraft.snapshotter import Snapshotter
from kvraft.storage.aio import open_aio_sync

log = Logger(namespace="kvraft.node")

pending_writes_max = 200_000
"""Client writes waiting for their entry to apply, across all connections."""
pending_reads_max = 200_000
"""Linearizable reads waiting for a ReadIndex answer or for apply."""
read_round_retry_s = 0.2
"""A ReadIndex round unanswered this long (a lost message, a leader change) no longer
holds back the next round; its reads still wait for their answer or their timeout."""
gather_spread_share = 1 / 16
"""The probe (RaftNodeService.client_returned) sees a closed loop when the clients of one
answer all came back within ``raft.proposal_gather_ms`` and, from the first back to the
last, at most this share of it apart on average: such clients come back together
(at -c 50 here 18-61 us apart, p10-p90), while requests that only happen to follow answers
(an open-loop load on a pool of connections) trickle in at their own rate."""
gather_probe_clients_min = 4
"""... and when that answer went to at least this many clients: two requests close
together tell little, one nothing."""
gather_pace_slack = 2
"""A gather also ends early once its clients fall behind a closed loop's pace: from the
first back, at most ``gather_spread_share`` of ``raft.proposal_gather_ms`` per client on
average, with this many clients' worth of slack for a straggler. Clients that trickle
back at an open-loop load's rate (an arrival every few hundred microseconds) fall behind
within a few returns, so a gather the probe started by chance costs them a fraction of
the gather time instead of all of it."""
gather_keep_share = 0.75
"""A gather that ends with at least this share of its clients back keeps gathering on
(a closed loop with stragglers: at -c 50 the leader itself takes a while to read them);
with fewer, gathering stops until a probe again sees them all come back."""


class CoreStorage:
    """Presents the node's stores as the storage read contract of ``kvraft.raft``.

    ``snapshot()`` is the Snapshotter's: metadata only (the node streams the body)."""

    def __init__(self, storage, conf_state: ConfState, snapshot: Callable[[], Snapshot]):
        self._log = storage.log
        self._stable = storage.stable
        self.conf_state = conf_state
        self.first_index = self._log.first_index
        self.last_index = self._log.last_index
        self.term = self._log.term
        self.entries = self._log.entries
        self.snapshot = snapshot

    def initial_state(self) -> tuple[HardState, ConfState]:
        return self._stable.hard_state(), self.conf_state


class _Batch:
    """Client requests that travel together (one proposal, or one ReadIndex round).

    A request is one command, answered by ``done(token, result)`` (``submit_write``),
    or a *group* of consecutive commands answered once by ``done(token, results)``
    with their results in order (``submit_writes``: a client's pipeline, one callback
    instead of one per command). ``commands`` holds every command in order; ``spans``
    is ``None`` while every request is a single command, else one per request:
    ``None`` for a single, the command count for a group. ``bytes`` adds up the
    commands' argument bytes (``raft.batch_bytes_max``). ``key`` is a read round's
    context, or the log index of a write batch this node appended as leader.
    """

    __slots__ = ("commands", "dones", "tokens", "spans", "bytes", "key", "started_s")

    def __init__(self):
        self.commands: list = []
        self.dones: list[Callable[[Any, object], None]] = []
        self.tokens: list = []
        self.spans: list[int | None] | None = None
        self.bytes = 0
        self.key: Any = None
        self.started_s = 0.0  # perf_counter() when proposed / sent to ReadIndex (metrics)

    def __len__(self) -> int:
        """The number of commands (a group counts each of its commands)."""
        return len(self.commands)

    def add(self, command, done: Callable[[Any, object], None], token: Any) -> None:
        """Queue one request: ``done(token, result)`` answers it."""
        self.commands.append(command)
        self.dones.append(done)
        self.tokens.append(token)
        if self.spans is not None:
            self.spans.append(None)

    def add_group(self, commands: list, done: Callable[[Any, object], None],
                  token: Any) -> None:
        """Queue a group: ``done(token, results)`` answers all of ``commands`` at once."""
        if self.spans is None:
            self.spans = [None] * len(self.dones)
        self.commands += commands
        self.dones.append(done)
        self.tokens.append(token)
        self.spans.append(len(commands))

    def take(self) -> tuple[list, list, list[int | None] | None]:
        """Empty the batch (its requests are answered once only): their dones, tokens
        and spans."""
        taken = self.dones, self.tokens, self.spans
        self.dones, self.tokens, self.commands, self.spans = [], [], [], None
        return taken


def _command_bytes(command) -> int:
    """A command's argument bytes, for ``raft.batch_bytes_max`` (a list of bytes from
    the client port; anything else, from a test or a plugin, counts as its msgpack)."""
    try:
        return sum(map(len, command))
    except TypeError:
        return len(msgpack.packb(command, use_bin_type=True))


def _commands_bytes(commands: list) -> int:
    """``_command_bytes`` of every command, in one C-level pass when all are bytes."""
    try:
        return sum(map(len, chain.from_iterable(commands)))
    except TypeError:
        return sum(map(_command_bytes, commands))


def _deliver(dones: list, tokens: list, spans: list | None, results: list) -> None:
    """Answer the requests of a batch taken with ``_Batch.take``: ``results`` holds one
    result per command, in order."""
    if spans is None:  # one request per command: _answer inlined, a call saved each
        for done, token, result in zip(dones, tokens, results, strict=True):
            try:
                done(token, result)
            except Exception:
                log.failure("answering a client request failed")
        return
    at = 0
    for done, token, span in zip(dones, tokens, spans, strict=True):
        if span is None:
            _answer(done, token, results[at])
            at += 1
        else:
            _answer(done, token, results[at:at + span])
            at += span
    if at != len(results):
        raise ValueError(f"{len(results)} results for {at} commands")


def _fire(d: defer.Deferred, result: object) -> None:
    """The ``done`` of the Deferred-returning IClientBackend calls."""
    if isinstance(result, Exception):
        d.errback(result)
    else:
        d.callback(result)


def _answer(done: Callable[[Any, object], None], token: Any, result: object) -> None:
    try:
        done(token, result)
    except Exception:
        # A client connection's bug must not stop the node (its Ready loop called us).
        log.failure("answering a client request failed")


def _fail_all(batch: _Batch, error: Exception) -> None:
    """Answer every request of ``batch`` with ``error``, once: the batch is emptied.
    A group gets the one error for all its commands."""
    dones, tokens, _ = batch.take()
    for done, token in zip(dones, tokens, strict=True):
        _answer(done, token, error)


@implementer(IClientBackend)
class RaftNodeService(Service):
    """Drives a RaftCore with the reactor's clock, a storage backend, a state machine
    plugin and a peer transport; serves the client layer through IClientBackend."""

    name = "raft-node"

    def __init__(self, config, storage, machine, transport, reactor=None,
                 rng_seed: int | None = None, fsync_in_thread: bool | None = None,
                 open_flusher: Callable | None = None):
        from twisted.internet import reactor as default_reactor
        if fsync_in_thread is None:
            fsync_in_thread = getattr(config, "fsync_in_thread", False)
        self.fsync_in_thread = fsync_in_thread
        # How a leader flushes its log without blocking (``open_flusher(on_done)`` gives
        # ``(flusher, reason)``; kvraft.storage.aio by default): see _open_flusher.
        self._open_flusher_with = open_flusher
        self.flusher = None
        self._flush_job: tuple | None = None  # (Ready, late entries, started) in flight
        self.config = config
        self.node_id = config.node_id
        self.storage = storage
        self.machine = machine
        self.transport = transport
        self.reactor = reactor or default_reactor
        settings = config.raft
        self.tick_ms = settings.tick_ms or settings.heartbeat_interval_ms
        self.election_ticks = max(2, settings.election_timeout_ms // self.tick_ms)
        self.heartbeat_ticks = max(1, settings.heartbeat_interval_ms // self.tick_ms)
        self.request_timeout_s = settings.request_timeout_ms / 1000.0
        self.batch_commands_max = settings.batch_commands_max
        self.batch_bytes_max = settings.batch_bytes_max
        self._seed = rng_seed if rng_seed is not None else int.from_bytes(os.urandom(8), "big")
        # Our proposals are recognised on apply by origin; the random incarnation keeps a
        # restarted process from claiming entries proposed by its previous life.
        self._origin = f"{self.node_id}:{os.urandom(6).hex()}"
        self._seq = 0
        self._writes = _Batch()
        self._reads = _Batch()
        self._proposed: dict[int, _Batch] = {}
        self._reading: dict[bytes, _Batch] = {}
        # (deadline, seq) of proposed write batches and (deadline, batch) of read rounds,
        # in deadline order (_expire_requests).
        self._write_deadlines: deque[tuple[float, int]] = deque()
        # Log index -> seq of the write batches this node appended as leader: when another
        # entry is applied at that index, the batch is known not to be applied (_apply).
        self._proposed_at: dict[int, int] = {}
        self._last_proposal: tuple[int, int, float] | None = None  # (seq, term, when)
        self._hold_call = None  # wakes _run when a held proposal's hold ends
        self.proposal_hold_s = settings.proposal_hold_ms / 1000.0
        self.proposal_gather_s = settings.proposal_gather_ms / 1000.0
        # The gather (_may_propose): how many clients our write batches answered have not
        # sent a request since, and how many had not at the last answer; when the first
        # of those answers was given (a client answered before it is not due); the seq
        # and time of the last batch answered; the probe (client_returned), which follows
        # the clients of one answer back; and whether the leader gathers.
        self.proposal_gather_spread_s = self.proposal_gather_s * gather_spread_share
        self._returns_due = 0
        self._due_at_answer = 0
        self._due_since_s = 0.0
        self._answered_seq = 0
        self._answered_s = 0.0
        self._back_first_s = 0.0  # when the first and the last client came back since
        self._back_last_s = 0.0  # the last answer
        self._probe_due = 0
        self._probe_clients = 0
        self._probe_s = 0.0
        self._probe_back_s = 0.0  # when the first of the probe's clients came back
        self._gathering = False
        self._read_deadlines: deque[tuple[float, _Batch]] = deque()
        self._reads_ready: list[tuple[int, int, _Batch]] = []  # heap of (index, seq, batch)
        self._read_round_s = 0.0  # reactor time the newest ReadIndex round started
        self._commit_notices: dict[str, Any] = {}  # peer -> empty MsgApp held during a write
        self._pending_writes = 0
        self._pending_reads = 0
        self._scheduled = None
        self._persisting = False
        self._durable_index = 0
        self._stopping = False
        self._when_idle: list[defer.Deferred] = []
        self.role = Role.Follower
        self.leader_id = ""
        self.core: RaftCore | None = None
        self._ticker = LoopingCall(self._tick)
        self._ticker.clock = self.reactor
        self.listeners: list[Callable[[str, dict], None]] = []
        # Snapshots, InstallSnapshot streams and membership live in their own modules.
        self.membership = Membership(self)
        self.snapshotter = Snapshotter(
            storage, machine, self.reactor, entries_max=settings.snapshot_entries,
            bytes_max=settings.snapshot_bytes,
            margin_entries=settings.compaction_margin_entries,
            retained=config.snapshots_retained, conf_state=self.membership.conf_state,
            addresses=lambda: self.membership.addresses,
            log_busy=lambda: self._persisting)
        self.snapshot_sender = SnapshotSender(
            self.node_id, transport, self.reactor, self._open_snapshot_body,
            self.report_snapshot)
        self.snapshot_receiver = SnapshotReceiver(
            self.node_id, transport, storage.snapshots, self.reactor, self.receive,
            committed=lambda: self.core.log.committed, term=lambda: self.core.term,
            accepted=self._snapshot_pending)
        self._maintenance = LoopingCall(self.membership.tick)
        self._maintenance.clock = self.reactor
        self.metrics = NodeMetrics()  # hooks below; kvraft.web.collector exports them

    # -- lifecycle -------------------------------------------------------------------

    def startService(self):
        super().startService()
        self.core = self._build_core()
        self._durable_index = self.storage.log.last_index()
        self.transport.on_message = self.receive
        self._open_flusher()
        self.membership.sync_transport()
        self._ticker.start(self.tick_ms / 1000.0, now=False)
        self._maintenance.start(self.tick_ms / 1000.0, now=False)
        conf = self.membership.conf_state()
        log.info("node {node_id} started: term {term}, applied {applied}, last index {last}, "
                 "voters {voters}, learners {learners}{joining}", node_id=self.node_id,
                 term=self.core.term, applied=self.machine.last_applied,
                 last=self._durable_index, voters=",".join(conf.voters),
                 learners=",".join(conf.learners) or "-",
                 joining=" (joining: waiting to be added)" if self.membership.joining else "")
        self._schedule()

    def stopService(self):
        """Stop ticking, fail what waits, let an in-flight write finish, close storage."""
        self._stopping = True
        if self._ticker.running:
            self._ticker.stop()
        if self._hold_call is not None and self._hold_call.active():
            self._hold_call.cancel()
        self._hold_call = None
        if self._maintenance.running:
            self._maintenance.stop()
        self.snapshotter.stop()
        self.snapshot_sender.stop_all()
        self.snapshot_receiver.stop()
        self.membership.stop()
        if self._scheduled is not None and self._scheduled.active():
            self._scheduled.cancel()
        self._scheduled = None
        error = OutcomeUnknownError("the node is shutting down; the outcome is unknown")
        for batch in list(self._proposed.values()):
            _fail_all(batch, error)
        self._proposed_at.clear()
        for batch in list(self._reading.values()) + [b for _, _, b in self._reads_ready]:
            _fail_all(batch, NoLeaderError("the node is shutting down"))
        _fail_all(self._writes, NoLeaderError("the node is shutting down"))
        _fail_all(self._reads, NoLeaderError("the node is shutting down"))
        super().stopService()
        done = defer.Deferred()
        self._when_idle.append(done)
        if not self._persisting:
            self._idle()
        done.addCallback(lambda _: self._close_storage())
        return done

    def _close_storage(self) -> None:
        if self.flusher is not None:
            self.flusher.close()
        self.storage.close()

    def _open_flusher(self) -> None:
        """Let a leader flush its log through Linux AIO (``storage.fsync_aio``, on by
        default) when the log store can be flushed by descriptor and the reactor watches
        descriptors; otherwise, or where AIO is unavailable (logged with the reason), the
        flush runs on the reactor thread as before."""
        if (self.fsync_in_thread or not getattr(self.config, "fsync_aio", True)
                or not IFdSyncLogStore.providedBy(self.storage.log)):
            return
        opener = self._open_flusher_with
        if opener is None:
            if not IReactorFDSet.providedBy(self.reactor):
                return
            opener = open_aio_sync
        flusher, reason = opener(self._flushed)
        if flusher is None:
            log.warn("node {node_id}: a leader's log flush blocks the reactor thread: "
                     "{reason} (storage.fsync_aio = false hides this warning)",
                     node_id=self.node_id, reason=reason)
            return
        flusher.start(self.reactor)
        self.flusher = flusher

    @property
    def fsync_mode(self) -> str:
        """How this node's log writes are flushed: "aio" (a leader's through Linux AIO),
        "thread" (``storage.fsync_in_thread``) or "reactor" (``os.fdatasync`` inline)."""
        if self.flusher is not None:
            return "aio"
        return "thread" if self.fsync_in_thread else "reactor"

    def _idle(self) -> None:
        waiting, self._when_idle = self._when_idle, []
        for d in waiting:
            d.callback(None)

    def _build_core(self) -> RaftCore:
        conf_state = load_state(self)  # bootstrap or restore (kvraft.bootstrap)
        applied = self.machine.last_applied
        settings = self.config.raft
        raft_config = RaftConfig(
            id=self.node_id, voters=conf_state.voters, learners=conf_state.learners,
            election_ticks=self.election_ticks, heartbeat_ticks=self.heartbeat_ticks,
            pre_vote=settings.pre_vote, check_quorum=settings.check_quorum, seed=self._seed,
            max_inflight_msgs=settings.max_inflight_msgs, max_msg_bytes=settings.max_msg_bytes,
            max_uncommitted_bytes=settings.max_uncommitted_bytes, applied=applied,
            # Under load every MsgApp carries the commit index anyway; idle, heartbeats do.
            lazy_commit_announce=True)
        return RaftCore(raft_config, CoreStorage(self.storage, conf_state,
                                                 self.snapshotter.snapshot_for_core))

    # -- events into the core -----------------------------------------------------------

    def _tick(self) -> None:
        self.core.tick()
        self._expire_requests()
        self._schedule()

    def _expire_requests(self) -> None:
        """Answer the requests whose ``request_timeout_ms`` has passed, once a tick.

        Every request gets the same timeout, so deadlines come in the order requests were
        proposed: two FIFO queues, checked at their heads, replace a timer per batch (a
        timer per batch meant a heap push and a cancel per log entry, and thousands of
        pending timers in the reactor's heap that every other timer is sorted against).
        Heads already answered leave the queues at once; a deadline is honoured within
        one tick."""
        now = self.reactor.seconds()
        writes, proposed = self._write_deadlines, self._proposed
        while writes and (writes[0][0] <= now or writes[0][1] not in proposed):
            seq = writes.popleft()[1]
            if seq in proposed:
                self._write_timeout(seq)
        reads = self._read_deadlines
        while reads and (reads[0][0] <= now or not reads[0][1].tokens):
            self._read_timeout(reads.popleft()[1])

    def receive(self, message) -> None:
        """A message from a peer (called by the transport)."""
        if self._stopping or self.core is None:
            return
        if message.type in DRIVER_MESSAGES:
            if message.type is MsgType.MsgSnapChunk:
                self.snapshot_receiver.on_chunk(message)
            else:
                self.snapshot_sender.on_response(message)
            return
        try:
            self.core.step(message)
        except LogLostError as e:
            # Not the message's fault: this node's own log lost what it acknowledged.
            log.critical(
                "node {node_id} stops: {error}. The leader ({leader}) counts entries this "
                "node acknowledged as durable, and they are gone from {data_dir} (a disk or "
                "filesystem that did not keep fsync'd writes, a restored backup, a "
                "truncated file). Running on could break the cluster's guarantees. Replace "
                "the node: `kvraft member remove {node_id}`, empty its data_dir, and add "
                "it back (`kvraft member add`, then `promote`).", node_id=self.node_id, error=e,
                leader=message.frm, data_dir=str(self.config.data_dir))
            self._halt()
            return
        except Exception:
            # A peer's bad message must never take the node down.
            log.failure("dropping a message the core refused: {message!r}", message=message)
            return
        self._schedule()

    def report_unreachable(self, peer_id: str) -> None:
        """The transport dropped messages to ``peer_id``: let the core probe it."""
        if self.core is not None:
            self.core.report_unreachable(peer_id)
            self._schedule()

    def report_snapshot(self, peer_id: str, ok: bool) -> None:
        """The transport finished sending (or dropped) a snapshot to ``peer_id``."""
        if self.core is not None:
            self.core.report_snapshot(peer_id, ok)
            self._schedule()

    def _schedule(self) -> None:
        if self._scheduled is None and not self._stopping:
            self._scheduled = self.reactor.callLater(0, self._run)

    def _run(self) -> None:
        self._scheduled = None
        try:
            self._flush_requests()
            self._drain()
            if self._writes.commands and not self._persisting:
                self._flush_requests()  # writes held until _drain applied the last batch
                self._drain()
            if self._persisting:
                self._send_early()
            self._flush_peers()
        except Exception:
            log.failure("unexpected error driving the raft core; stopping the node")
            self._halt()

    def _may_propose(self) -> bool:
        """Whether the writes that wait may become a proposal now (see _flush_requests)."""
        if self.role is not Role.Leader:
            return True  # a follower forwards at once: the leader batches
        if self._persisting:
            return False
        last = self._last_proposal
        if last is None or self.proposal_hold_s <= 0:
            return True
        seq, term, proposed_s = last
        if term != self.core.term:
            return True  # from an earlier term
        now = self.reactor.seconds()
        if seq in self._proposed:  # not answered yet
            if not self._gathering:
                index = self._proposed[seq].key
                if index is not None and index <= self.core.log.committed:
                    return True  # committed: its apply comes after the next batch's MsgApps
            wait_s = self.proposal_hold_s - (now - proposed_s)
        elif not self._gathering or seq != self._answered_seq:
            return True  # answered (or failed), and no gather
        elif not self._returns_due:
            self.metrics.gathered("returned")
            self._gathering = self._came_together(self._due_at_answer, self._back_first_s)
            return True
        else:
            due = self._due_at_answer
            back = due - self._returns_due
            wait_s = self.proposal_gather_s - (now - self._answered_s)
            outcome = "timeout"
            if back:  # the pace the first back set (gather_pace_slack)
                pace_s = self._pace_end_s(self._back_first_s, back, gather_pace_slack) - now
                if pace_s < wait_s:
                    wait_s, outcome = pace_s, "behind"
            if wait_s <= 0:
                self._gathering = (back >= due * gather_keep_share
                                   and self._came_together(back, self._back_first_s))
                self._returns_due = self._probe_due = 0
                self.metrics.gathered(outcome)
                return True
        if wait_s <= 0:
            return True
        call = self._hold_call
        if call is None:
            self._hold_call = self.reactor.callLater(wait_s, self._hold_over)
        elif call.getTime() > now + wait_s:
            call.reset(wait_s)
        return False

    def _pace_end_s(self, first_s: float, back: int, slack: int = 0) -> float:
        """When ``back`` clients, the first of them back at ``first_s``, are all back if
        they keep a closed loop's pace (``gather_spread_share`` apart on average), with
        ``slack`` clients' worth of time more."""
        return first_s + (back - 1 + slack) * self.proposal_gather_spread_s

    def _came_together(self, back: int, first_s: float) -> bool:
        """Whether ``back`` clients came back together, as a closed loop's do: the first
        at ``first_s``, the last (``_back_last_s``) within their pace."""
        return back < 2 or self._back_last_s <= self._pace_end_s(first_s, back)

    def _hold_over(self) -> None:
        self._hold_call = None
        self._schedule()

    def client_returned(self, answered_s: float) -> None:
        """A client sent a request with none of its own outstanding; ``answered_s`` is
        when its last answer was written (the client port calls this: it knows its
        connections, the node does not). If a batch of ours answered it, count it back
        (_may_propose). The probe turns gathering on when the clients of one answer all
        came back, soon and together (``gather_spread_share``); only a gather's end
        turns it off (clients that come back a little late are still a closed loop)."""
        if not self._returns_due or answered_s < self._due_since_s:
            return  # answered before the answers that are due, or none due
        self._returns_due -= 1
        now = self._back_last_s = self.reactor.seconds()
        if not self._back_first_s:
            self._back_first_s = now
        if self._probe_due and answered_s >= self._probe_s:
            if not self._probe_back_s:
                self._probe_back_s = now
            self._probe_due -= 1
            if not self._probe_due and now - self._probe_s <= self.proposal_gather_s and \
                    self._came_together(self._probe_clients, self._probe_back_s):
                self._gathering = True

    def _flush_requests(self) -> None:
        """Turn the client requests that waited into one proposal and one ReadIndex round.

        A leader proposes nothing while its log write is in flight: what it proposed now
        could be neither durable nor applied before that write ends, so the requests
        wait and go out with the next Ready as one entry, one fsync and one MsgApp per
        follower. Nor, for up to ``raft.proposal_hold_ms``, while its previous batch is
        not yet committed: the writes that arrive meanwhile go out together once it is
        (one entry instead of two or three smaller ones; on a small machine the cost of
        an entry - an fsync on every node, a message each way per follower - is what
        bounds throughput), and the hold bounds what that costs in latency when commits
        are slow (a follower far away).

        The hold ends at the commit, not at the apply: the acknowledgements that commit
        a batch arrive in the turn that then proposes the next one, so the next batch's
        MsgApps leave and its flush starts before the leader applies the committed batch
        and answers its clients (_drain). Followers and the disk work on batch k + 1
        while the leader applies batch k. Measured with the leader's flush through AIO,
        alternating fresh clusters: -c 10 p50 2.4-3.5 ms against 3.1-3.8 ms at the
        apply, p99 4.3-9.3 ms against 6.2-10.7 ms; -P 16 and -c 50 unchanged.

        Unless the leader gathers. With N clients that each send their next write when
        the last is answered (a closed loop: redis-benchmark, a worker pool), the above
        splits them into two cohorts: the writes that arrive while batch k commits make
        batch k + 1, and k's clients, answered after, come back during k + 1 and make
        k + 2. Two entries of N/2 cost twice the per-entry work of one of N, and that
        work (an fsync on each node, a message each way per follower, about 600 us of
        CPU on a follower here) is what bounds throughput on a small machine. So when
        the clients a batch answered come back together, the leader gathers: it holds
        the next batch until the last batch is answered, and then until those clients
        are back, or ``raft.proposal_gather_ms`` passed. The client port says which
        requests come from clients just answered (client_returned), so no one else's
        count. A probe turns gathering on when the clients of one answer (at least
        ``gather_probe_clients_min``) all came back in time and together
        (``gather_spread_share``); a gather ends early once those still due fall behind
        that pace (``gather_pace_slack``), and one that ends with fewer than
        ``gather_keep_share`` of them back, or with them trickling in, turns it off.
        Requests that only happen to follow answers (an open-loop load on a pool of
        connections, which reuses the connection answered last) come at their own rate
        and rarely pass the probe, and then only until the next gather ends.
        Measured at 2 ms (the default) on fresh clusters, alternating with it off (four
        pairs): -c 10 p50 1.9-2.2 ms against 2.7-3.8, p99 4.3-5.3 ms against 6.2-11.3,
        -c 50 11.4-14.4k writes/s against 8.2-11.0k. Under open-loop traffic (kvraft
        bench run --rate, Poisson arrivals) 0.1-0.5% of entries were gathered at
        1,500/s and 2-4% at 4,000/s, most of those gathers ending behind the pace; on
        one cluster with the gather turned on and off every 10 s (four pairs at each
        rate), p50 and p99 differed no more than between two runs of the same setting.
        Before the pace rule, those few gathers mostly waited out the whole gather time,
        and p99 at 4,000/s rose from 8.2-8.6 ms to 7.8-18.4 (three pairs).

        Reads wait while a ReadIndex round is out (as etcd's read loop does): the next
        round then confirms every read that queued meanwhile. Both keep the cost per
        request low exactly when requests pour in.
        """
        if self._writes.commands and self._may_propose():
            self._flush_writes()
        if self._reads.commands and not (
                self._reading
                and self.reactor.seconds() - self._read_round_s < read_round_retry_s):
            self._flush_reads()

    # -- IClientBackend ------------------------------------------------------------------

    def write(self, command) -> defer.Deferred:
        d = defer.Deferred()
        self.submit_write(command, _fire, d)
        return d

    def read(self, command, linearizable: bool = True) -> defer.Deferred:
        d = defer.Deferred()
        self.submit_read(command, linearizable, _fire, d)
        return d

    def submit_write(self, command, done: Callable[[Any, object], None], token: Any) -> None:
        """``write`` without a Deferred, for the client port's hot path: ``done(token,
        result)`` is called exactly once, maybe before this returns, with the command's
        result or a ``BackendError`` instance. ``done`` must not raise."""
        if self._pending_writes >= pending_writes_max:
            done(token, OverloadedError(
                f"too many writes in flight ({pending_writes_max}); retry shortly"))
            return
        batch = self._writes
        batch.add(command, done, token)
        batch.bytes += _command_bytes(command)
        self._pending_writes += 1
        self._writes_queued(batch)

    def submit_writes(self, commands: list, done: Callable[[Any, object], None],
                      token: Any) -> None:
        """Several writes of one client, in order, answered together: ``done(token,
        results)`` is called once with the list of their results in order, or with one
        ``BackendError`` instance for all. They go into the log in order and next to
        each other (one entry, unless that would pass ``raft.batch_commands_max`` or
        ``raft.batch_bytes_max``: then the entry is cut before them), so a pipeline
        costs one callback instead of one per command."""
        count = len(commands)
        if self._pending_writes + count > pending_writes_max:
            done(token, OverloadedError(
                f"too many writes in flight ({pending_writes_max}); retry shortly"))
            return
        size = _commands_bytes(commands)
        batch = self._writes
        if batch.commands and (len(batch.commands) + count > self.batch_commands_max
                               or batch.bytes + size > self.batch_bytes_max):
            self._flush_writes()
            batch = self._writes
        batch.add_group(commands, done, token)
        batch.bytes += size
        self._pending_writes += count
        self._writes_queued(batch)

    def _writes_queued(self, batch: _Batch) -> None:
        """Writes joined ``batch``: propose it now if it is full, and run the loop."""
        if len(batch.commands) >= self.batch_commands_max \
                or batch.bytes >= self.batch_bytes_max:
            self._flush_writes()
        if self._scheduled is None:
            self._schedule()

    def submit_read(self, command, linearizable: bool, done: Callable[[Any, object], None],
                    token: Any) -> None:
        """``read`` without a Deferred; ``done`` as for ``submit_write``."""
        if not linearizable:
            done(token, self.machine.query(command))
            return
        if self._pending_reads >= pending_reads_max:
            done(token, OverloadedError(
                f"too many reads in flight ({pending_reads_max}); retry shortly"))
            return
        batch = self._reads
        batch.add(command, done, token)
        self._pending_reads += 1
        if self._scheduled is None:
            self._schedule()

    def submit_reads(self, commands: list, linearizable: bool,
                     done: Callable[[Any, object], None], token: Any) -> None:
        """Several reads of one client, answered together (``done`` as for
        ``submit_writes``); linearizable ones share a ReadIndex round."""
        if not linearizable:
            done(token, self._query_all(commands))
            return
        count = len(commands)
        if self._pending_reads + count > pending_reads_max:
            done(token, OverloadedError(
                f"too many reads in flight ({pending_reads_max}); retry shortly"))
            return
        self._reads.add_group(commands, done, token)
        self._pending_reads += count
        if self._scheduled is None:
            self._schedule()

    def admin(self, command) -> defer.Deferred:
        name = bytes(command[0]).upper() if command else b""
        if name == b"FLUSHALL":
            return self.write([b"FLUSHALL"])
        return self.membership.admin(command)

    def info(self) -> dict[str, Any]:
        status = self.core.status() if self.core is not None else {}
        conf = self.membership.conf_state()
        role = status.get("role", Role.Follower)
        return {
            "raft_node_id": self.node_id,
            "raft_role": role.value if isinstance(role, Role) else str(role),
            "raft_term": status.get("term", 0),
            "raft_leader_id": status.get("leader_id", "") or "",
            "raft_commit_index": status.get("commit_index", 0),
            "raft_applied_index": self.machine.last_applied,
            "raft_members": ",".join(conf.members()),
            "raft_voters": ",".join(conf.voters),
            "raft_learners": ",".join(conf.learners),
            "raft_snapshot_index": getattr(self.snapshotter.meta, "index", 0),
            "raft_log_first_index": self.storage.log.first_index(),
            "keys": getattr(self.machine, "key_count", 0),
            "fsync_mode": self.fsync_mode,
        }

    # -- proposals and reads -------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _flush_writes(self) -> None:
        batch, self._writes = self._writes, _Batch()
        seq = self._next_seq()
        data = msgpack.packb([self._origin, seq, batch.commands], use_bin_type=True)
        try:
            self.core.propose(data)
        except ProposalDropped as e:
            self.metrics.proposal_dropped(e.reason, len(batch))
            self._pending_writes -= len(batch)
            error = NoLeaderError(str(e)) if e.reason in ("no-leader", "transferring") \
                else OverloadedError(str(e))
            _fail_all(batch, error)
            return
        self._proposed[seq] = batch
        if self.core.role is Role.Leader:  # appended to our own log, at its end
            batch.key = index = self.core.log.last_index()
            self._proposed_at[index] = seq
        self._last_proposal = (seq, self.core.term, self.reactor.seconds())
        self.metrics.proposed(len(batch.commands))
        batch.started_s = perf_counter()
        self._write_deadlines.append((self.reactor.seconds() + self.request_timeout_s, seq))

    def _write_timeout(self, seq: int) -> None:
        batch = self._proposed.pop(seq, None)
        if batch is not None:
            if batch.key is not None and self._proposed_at.get(batch.key) == seq:
                del self._proposed_at[batch.key]
            self.metrics.proposal_failed("timeout", len(batch))
            self._pending_writes -= len(batch)
            _fail_all(batch, OutcomeUnknownError(
                "the write was not applied in time (a leader change or partition?); it may "
                "or may not have taken effect: read the key before retrying"))

    def _flush_reads(self) -> None:
        batch, self._reads = self._reads, _Batch()
        if not self.core.lead:
            self.metrics.reads_failed("no-leader", len(batch))
            self._pending_reads -= len(batch)
            _fail_all(batch, NoLeaderError(
                "no leader: the cluster is electing one; retry shortly"))
            return
        ctx = self._next_seq().to_bytes(8, "big")
        batch.key = ctx
        self._reading[ctx] = batch
        batch.started_s = perf_counter()
        self._read_round_s = self.reactor.seconds()
        self.core.read_index(ctx)
        self._read_deadlines.append((self.reactor.seconds() + self.request_timeout_s, batch))

    def _read_timeout(self, batch: _Batch) -> None:
        if not batch.tokens:
            return  # answered already
        # The batch may still sit in the apply heap; emptied, it is served as a no-op there.
        self._reading.pop(batch.key, None)
        self.metrics.reads_failed("timeout", len(batch))
        self._pending_reads -= len(batch)
        _fail_all(batch, OutcomeUnknownError(
            "the read could not be confirmed by a quorum in time; retry"))

    # -- the Ready loop ------------------------------------------------------------------

    def _drain(self) -> None:
        core = self.core
        while not self._persisting and core.has_ready():
            rd = core.ready()
            if rd.soft_state is not None:
                self._on_soft_state(rd.soft_state)
            # Order for a short critical path: a leader's MsgApps leave first (followers
            # write in parallel), then it applies what is committed and durable here (so
            # its clients' replies leave), then it writes. A follower writes and
            # acknowledges before it applies: its acknowledgement is on the leader's
            # critical path, its apply is not. Entries of this Ready wait for the write.
            if rd.messages:
                self._send_messages(self._cap_commit(rd.messages))
                self._flush_peers()
            # A leader with a flusher applies after starting its write: the disk works
            # while it applies and answers (see _start_flush).
            flushing = (self.flusher is not None and self.role is Role.Leader
                        and bool(rd.entries))
            early = []
            if self.role is Role.Leader or self.fsync_in_thread:
                early, late = self._split_durable(rd.committed_entries)
                if not flushing:
                    self._apply(early)
            else:
                late = rd.committed_entries
            if rd.snapshot is not None and not rd.snapshot.is_empty():
                self._install_snapshot(rd.snapshot)
            if rd.entries:
                first = rd.entries[0].index
                self._durable_index = min(self._durable_index, first - 1)
                self.storage.log.append(rd.entries)
            if rd.entries or rd.must_sync:
                self._persisting = True
                # What this Ready sends must be on the wire before the write starts, so
                # that followers write in parallel with us.
                self._flush_peers()
                if flushing:
                    started = self._start_flush(rd, late)
                    if self._stopping:
                        return  # the flush could not start: the node is halting
                    self._apply(early)
                    if started:
                        return  # _flushed goes on with this Ready
                if self.fsync_in_thread:
                    d = threads.deferToThreadPool(
                        self.reactor, self.reactor.getThreadPool(),
                        self._persist, rd.hard_state, True)
                    d.addCallback(self._persisted, rd, late)
                    d.addErrback(self._storage_failed)
                    return
                try:
                    self._persist(rd.hard_state, True)
                except Exception:
                    self._storage_failed(Failure())
                    return
                self._persisting = False
                self._durable_index = self.storage.log.last_index()
            elif rd.hard_state is not None:
                # Only the commit index moved (a new term or vote sets must_sync): the
                # stores keep it in memory until the next sync, so no thread hop.
                self.storage.stable.save_hard_state(rd.hard_state)
            self._finish(rd, late)

    def _start_flush(self, rd: Ready, late: list) -> bool:
        """Start the leader's log flush through the flusher; False when every appended
        byte is durable already (an append over the WAL's unsynced limit syncs its parts
        itself), and then the Ready is finished inline.

        While the flush is in flight the reactor is free: the leader applies what is
        committed and durable here (``early`` in _drain) and answers those clients, takes
        acknowledgements and new requests (``_send_early``), instead of waiting in
        ``fdatasync``. Nothing it writes now is counted as durable before ``_flushed``:
        its own acknowledgement is in ``messages_after_persist``/``advance``, as with an
        inline fsync, so a write is still acknowledged only once a majority has it on
        disk."""
        fd = self.storage.log.sync_fd()
        if fd is None:
            return False
        self._flush_job = (rd, late, perf_counter())
        try:
            self.flusher.submit(fd)
        except Exception:
            self._flush_job = None
            self._storage_failed(Failure())
            return False
        return True

    def _flushed(self, error: OSError | None) -> None:
        """The flusher finished the write _start_flush started (reactor thread)."""
        job, self._flush_job = self._flush_job, None
        if job is None:
            return  # halted or stopped meanwhile
        rd, late, started = job
        if error is not None:
            self._storage_failed(Failure(error))
            return
        try:
            self.storage.log.mark_synced()
            self._persist(rd.hard_state, False, started)
        except Exception:
            self._storage_failed(Failure())
            return
        self._persisted(None, rd, late)

    def _send_early(self) -> None:
        """While a write is in flight: apply what committed meanwhile and is durable
        here, send what promises nothing durable (heartbeats and their answers, new
        MsgApps, ReadIndex traffic) and serve confirmed reads, instead of holding them
        behind the fsync (kvraft.raft.early). The outstanding Ready's committed entries
        that were durable were applied when it was handed out, as take_committed_entries
        requires."""
        core = self.core
        entries = core.take_committed_entries()
        if entries:
            self._apply(entries)
        messages = core.take_messages()
        if messages:
            # An empty MsgApp only announces a commit index, which this node cannot apply
            # (so cannot announce) before its write ends: keep the newest per follower
            # and send it then.
            notices = self._commit_notices
            now = []
            for m in messages:
                if m.type is MsgType.MsgApp and not m.entries:
                    notices[m.to] = m
                else:
                    now.append(m)
            if now:
                self._send_messages(self._cap_commit(now))
        read_states = core.take_read_states()
        for read_state in read_states:
            self._on_read_state(read_state.index, read_state.request_ctx)
        if read_states or entries:
            self._serve_reads()

    def _flush_peers(self) -> None:
        """Write the messages queued for peers now rather than at the end of the turn."""
        flush = getattr(self.transport, "flush", None)
        if flush is not None:
            flush()

    def _cap_commit(self, messages: list) -> list:
        """Announce to followers no commit index beyond what is durable here.

        A quorum may commit entries the leader is still writing, and the leader applies
        them only once its own write is durable; a follower told of the commit at once
        could apply (and answer a READONLY read or an admin command) an fsync ahead of
        the leader. Committed entries that are durable here are applied in the same
        Ready the messages leave in. A lower commit index in a MsgApp or heartbeat is
        always safe: the next one carries the rest.
        """
        durable = self._durable_index
        for m in messages:
            if m.commit > durable and (m.type is MsgType.MsgApp
                                       or m.type is MsgType.MsgHeartbeat):
                m.commit = durable
        return messages

    def _send_messages(self, messages: list) -> None:
        """Send a Ready's messages; a MsgSnap becomes a chunk stream (SnapshotSender)."""
        for m in messages:
            if m.type is MsgType.MsgSnap:
                self.snapshot_sender.start(m)
        self.transport.send_many([m for m in messages if m.type is not MsgType.MsgSnap]
                                 if any(m.type is MsgType.MsgSnap for m in messages)
                                 else messages)

    def _split_durable(self, entries: list) -> tuple[list, list]:
        if not entries or entries[-1].index <= self._durable_index:
            return entries, []
        cut = 0
        while cut < len(entries) and entries[cut].index <= self._durable_index:
            cut += 1
        return entries[:cut], entries[cut:]

    def _persist(self, hard_state: HardState | None, sync: bool,
                 started: float | None = None) -> None:
        """Runs in the writer thread: the only blocking part of the loop. After a flush
        through the flusher (``sync`` false), records the hard state and the flush time
        from ``started``."""
        if started is None:
            started = perf_counter()
        if sync:
            self.storage.log.sync()
        if hard_state is not None:
            self.storage.stable.save_hard_state(hard_state)
        self.metrics.fsync(perf_counter() - started)

    def _persisted(self, _, rd: Ready, late: list) -> None:
        self._persisting = False
        self._durable_index = self.storage.log.last_index()
        if self._stopping:
            self._idle()
            return
        try:
            self._finish(rd, late)
            if self._commit_notices:
                notices, self._commit_notices = self._commit_notices, {}
                self._send_messages(self._cap_commit(list(notices.values())))
            self._flush_requests()
            self._drain()
            self._flush_peers()
        except Exception:
            log.failure("unexpected error after a write; stopping the node")
            self._halt()

    def _finish(self, rd: Ready, late: list) -> None:
        if rd.messages_after_persist:
            # Acknowledgements and votes are on someone's critical path; the apply below
            # is not: they leave first.
            self.transport.send_many(rd.messages_after_persist)
            self._flush_peers()
        self._apply(late)
        for read_state in rd.read_states:
            self._on_read_state(read_state.index, read_state.request_ctx)
        self.core.advance(rd)
        self._serve_reads()

    def _storage_failed(self, failure) -> None:
        log.failure("the storage failed; stopping the node to protect acknowledged writes",
                    failure)
        self._halt()
        # The failed write ends here: a stopService waiting for it may close the storage.
        self._persisting = False
        self._idle()

    def _halt(self) -> None:
        self._stopping = True
        if self._ticker.running:
            self._ticker.stop()
        if self.reactor.running:
            self.reactor.stop()

    def _on_soft_state(self, soft) -> None:
        if soft.leader_id != self.leader_id or soft.role != self.role:
            log.info("node {node_id}: role {role}, leader {leader}", node_id=self.node_id,
                     role=soft.role.value, leader=soft.leader_id or "none")
            self._fail_unconfirmed_reads()
        self.role, self.leader_id = soft.role, soft.leader_id
        if soft.role != Role.Leader:
            self.snapshot_sender.stop_all()
        self.membership.on_soft_state(soft.role, soft.leader_id)
        for listener in self.listeners:
            listener("soft_state", {"role": soft.role, "leader_id": soft.leader_id})

    def _fail_unconfirmed_reads(self) -> None:
        """The leader or our role changed: ReadIndex rounds still waiting for their
        confirmation will not get it (a new term drops them), so their reads are answered
        now with a retryable error instead of at their deadline. Reads have no effect, so
        nothing is left unknown; confirmed rounds (waiting only for the apply) stay."""
        if not self._reading:
            return
        batches = list(self._reading.values())
        self._reading.clear()
        for batch in batches:
            if not batch.tokens:
                continue
            self.metrics.reads_failed("leader-change", len(batch))
            self._pending_reads -= len(batch)
            _fail_all(batch, NoLeaderError(
                "the leader changed while the read waited for its confirmation; retry"))

    def _install_snapshot(self, snapshot: Snapshot) -> None:
        """The core accepted a snapshot from the leader (its body was received and its
        checksum verified): publish it (fsync), restore the machine, restart the log."""
        meta = snapshot.metadata
        # Entries up to meta.index are never applied here one by one: batches at those
        # indexes wait out their timeout (their outcome is unknown to this node).
        for index in [i for i in self._proposed_at if i <= meta.index]:
            del self._proposed_at[index]
        self.snapshot_receiver.publish(meta)
        header = self.snapshotter.install(meta)
        self._durable_index = meta.index
        self.membership.installed_snapshot(header)
        log.info("installed snapshot {index} (term {term}) from the leader; {keys} keys",
                 index=meta.index, term=meta.term,
                 keys=getattr(self.machine, "key_count", "?"))

    def _open_snapshot_body(self, index: int):
        return self.storage.snapshots.open(index)

    def _snapshot_pending(self, index: int) -> bool:
        log_ = self.core.log
        return log_.has_next_or_in_progress_snapshot() and \
            log_.snapshot().metadata.index == index

    # -- apply ---------------------------------------------------------------------------

    def _apply(self, entries: list) -> None:
        started = perf_counter()
        machine = self.machine
        apply_batch = machine.apply_batch if IBatchStateMachine.providedBy(machine) else None
        unpack = msgpack.unpackb
        proposed_at = self._proposed_at
        for entry in entries:
            mine = proposed_at.pop(entry.index, None) if proposed_at else None
            applied = None  # the seq of our batch this entry carries
            if entry.type == EntryType.Normal and entry.data:
                try:
                    origin, seq, commands = unpack(entry.data, raw=False)
                except Exception:
                    log.error("entry {index} is not a command batch; skipped on every node",
                              index=entry.index)
                    machine.set_last_applied(entry.index)
                else:
                    if apply_batch is not None:
                        outcomes = apply_batch(entry.index, commands)
                    else:
                        outcomes = [machine.apply(entry.index, c) for c in commands]
                    if not commands:
                        machine.set_last_applied(entry.index)
                    if origin == self._origin:
                        applied = seq
                        self._resolve(seq, outcomes)
            elif entry.type == EntryType.ConfChange:
                self._apply_conf_change(entry)
            else:
                machine.set_last_applied(entry.index)
            if mine is not None and mine != applied:
                self._write_lost(mine, entry.index)
        if entries:
            self.metrics.applied(len(entries), perf_counter() - started)
            self._after_apply(entries)

    def _write_lost(self, seq: int, index: int) -> None:
        """Another entry was committed at ``index``, where this node, as leader, had
        appended the write batch ``seq``: entries never move, and a batch is proposed
        once, so it is not applied and never will be. Its clients hear so at once (safe
        to retry) instead of an unknown outcome when ``request_timeout_ms`` passes."""
        batch = self._proposed.pop(seq, None)
        if batch is None or not batch.tokens:
            return
        self._pending_writes -= len(batch)
        self.metrics.proposal_failed("lost", len(batch))
        _fail_all(batch, NoLeaderError(
            f"the leader changed before this write was committed and log index {index} "
            "holds another entry: it was not applied; retry"))

    def _apply_conf_change(self, entry) -> None:
        """A committed membership change: the core adopts it; we remember the new
        configuration and its members' addresses (kvraft.membership)."""
        self.membership.apply(entry.index, entry.data)
        self.machine.set_last_applied(entry.index)

    def _after_apply(self, entries: list) -> None:
        """After each applied run of entries (between two entries): snapshot when due,
        compact when a snapshot is written, move a joint configuration on."""
        self.snapshotter.after_apply(entries)
        self.membership.after_apply(self.machine.last_applied)

    def _resolve(self, seq: int, outcomes: list) -> None:
        batch = self._proposed.pop(seq, None)
        if batch is None or not batch.tokens:
            return  # timed out already: the client was told the outcome is unknown
        self._pending_writes -= len(batch)
        self.metrics.proposal_committed(perf_counter() - batch.started_s)
        dones, tokens, spans = batch.take()
        if self.proposal_gather_s > 0:
            self._count_answered(seq, len(tokens))
        _deliver(dones, tokens, spans, outcomes)

    def _count_answered(self, seq: int, clients: int) -> None:
        """Our batch ``seq`` answered ``clients``: they are due back (_may_propose). Not
        kept without a gather, so that client_returned has nothing to do."""
        now = self.reactor.seconds()
        if not self._returns_due or now - self._answered_s > self.proposal_gather_s:
            # Those due back from earlier answers did not come in time: forget them.
            self._returns_due = 0
            self._due_since_s = now
        self._returns_due += clients
        self._due_at_answer = self._returns_due
        self._answered_seq, self._answered_s = seq, now
        self._back_first_s = self._back_last_s = 0.0
        if self._probe_due and now - self._probe_s > self.proposal_gather_s:
            self._probe_due = 0  # its clients did not all come back in time
        if not self._probe_due and clients >= gather_probe_clients_min:
            self._probe_due = self._probe_clients = clients
            self._probe_s, self._probe_back_s = now, 0.0

    # -- linearizable reads ----------------------------------------------------------------

    def _on_read_state(self, index: int, ctx: bytes) -> None:
        batch = self._reading.pop(ctx, None)
        if batch is not None:
            heapq.heappush(self._reads_ready, (index, int.from_bytes(ctx, "big"), batch))
            if self._reads.commands:
                self._schedule()  # the reads that waited for this round go next

    def _serve_reads(self) -> None:
        applied = self.machine.last_applied
        heap = self._reads_ready
        while heap and heap[0][0] <= applied:
            _, _, batch = heapq.heappop(heap)
            if not batch.tokens:
                continue  # timed out and answered already
            self._pending_reads -= len(batch)
            self.metrics.reads_answered(len(batch), perf_counter() - batch.started_s)
            commands = batch.commands
            dones, tokens, spans = batch.take()  # answered: once only
            _deliver(dones, tokens, spans, self._query_all(commands))

    def _query_all(self, commands: list) -> list:
        """The machine's answers to ``commands``, one by one (``_query``) if it fails."""
        try:
            return list(map(self.machine.query, commands))
        except Exception:
            return list(map(self._query, commands))  # find the one that fails

    def _query(self, command) -> object:
        """The machine's answer to a confirmed read; a bug in it answers that read with
        an error (logged) rather than never."""
        try:
            return self.machine.query(command)
        except Exception:
            log.failure("answering a client read failed")
            return OutcomeUnknownError(
                "the read failed on this node (logged for the operator); retry")

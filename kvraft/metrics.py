"""Prometheus metrics of one node: cheap hooks in the hot paths, everything else read at
scrape time.

Two halves:

* ``NodeMetrics`` is what the node's code calls: plain integer counters and
  ``Histogram``s (a list of bucket counts), no locks, no label lookups: a hook is an
  integer increment or a bisect. ``RaftNodeService.metrics`` holds one; the hooks are
  ``proposed``, ``proposal_dropped``, ``proposal_failed``, ``proposal_committed``,
  ``gathered``,
  ``reads_failed``, ``reads_answered``, ``fsync``, ``applied`` and, for the snapshot
  code, ``snapshot``. They are called once per *batch* (one Raft entry, one ReadIndex
  round), never per client command: a Deferred callback per command would cost more
  than a third of what the node spends on a command's Deferred (callgrind: +10k
  instructions on 28k). ``CommandMetrics`` counts client commands by name as
  ``MeteredBackend`` hands them to the node (one dict increment each).
* ``NodeCollector`` turns those, the core's ``status()``, the peer transport's
  ``counters`` and the client listeners' ``stats`` into metric families when
  Prometheus scrapes ``/metrics``; ``make_registry`` puts it in a per-node
  ``CollectorRegistry`` (never the global one: tests build several nodes in one
  process) with the standard ``process_*`` and ``python_*`` collectors.

Names follow Prometheus conventions: ``kvraft_`` prefix, ``_total`` for counters,
``_seconds`` and ``_bytes`` units. Label values are fixed words or node ids, never free
text, so the number of series stays small.

Threads: ``fsync`` is called from the node's writer thread, everything else from the
reactor thread; a scrape may see one observation's count before its sum, which
Prometheus tolerates.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable

from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from kvraft.client.backend import IClientBackend

log = Logger(namespace="kvraft.metrics")

# Bucket upper bounds (seconds, entries, commands). Chosen to bracket what we measured:
# an fsync is 0.1-20 ms on SSDs, an apply of one batch 10 us-10 ms, a client command
# 0.1-10 ms, a snapshot milliseconds to minutes.
FSYNC_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5, 5.0)
APPLY_BUCKETS_S = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025,
                   0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
COMMAND_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                     0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SNAPSHOT_BUCKETS_S = (0.001, 0.01, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)

SNAPSHOT_KINDS = ("create", "install", "send", "receive")
"""What ``NodeMetrics.snapshot`` counts: a snapshot taken of the state machine, one
installed from the leader, one sent to a follower, one received from the leader."""


class Histogram:
    """A Prometheus-style histogram without locks or labels, for one writer thread.

    ``bounds`` are the bucket upper bounds (``le``), ascending; an observation lands in
    the first bucket whose bound is at least the value, or in ``+Inf``."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Iterable[float]):
        self.bounds = tuple(bounds)
        if list(self.bounds) != sorted(set(self.bounds)):
            raise ValueError(f"histogram bounds must be ascending and distinct: {self.bounds}")
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Count one observation."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        """Observations so far."""
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """``[(le, observations <= le), ..., ("+Inf", count)]`` as Prometheus wants."""
        out, total = [], 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            total += n
            out.append((_bound_text(bound), total))
        out.append(("+Inf", total + self.counts[-1]))
        return out


def _bound_text(bound: float) -> str:
    return repr(float(bound))


class NodeMetrics:
    """The node's hot-path counters. Every method is O(1) and safe to call often.

    The snapshot code reports each snapshot with ``snapshot(kind, size_bytes, seconds,
    ok)``; everything else is called by ``RaftNodeService``. Leader changes and
    elections are counted from the node's soft-state events (``on_node_event``).
    """

    def __init__(self) -> None:
        self.proposals = 0
        """Batches the core accepted (one Raft entry each)."""
        self.proposal_commands = Histogram(BATCH_BUCKETS)
        """Client writes per proposed batch."""
        self.proposals_committed = 0
        """Batches of ours that were applied and answered."""
        self.proposals_dropped: Counter[str] = Counter()
        """Batches the core refused, by reason (no-leader, transferring, too-large...)."""
        self.proposals_failed: Counter[str] = Counter()
        """Accepted batches whose outcome was not learned, by reason (timeout)."""
        self.proposal_gathers: Counter[str] = Counter()
        """Batches a leader gathered (``raft.proposal_gather_ms``), by how the gather
        ended: ``returned``, ``timeout`` or ``behind`` (see ``gathered``)."""
        self.failures: Counter[tuple[str, str]] = Counter()
        """Client commands answered with an error by the node, by (route, reason)."""
        self.write_seconds = Histogram(COMMAND_BUCKETS_S)
        """From proposing a batch of writes to answering it (applied locally)."""
        self.read_seconds = Histogram(COMMAND_BUCKETS_S)
        """From asking ReadIndex for a batch of reads to answering it."""
        self.fsync_seconds = Histogram(FSYNC_BUCKETS_S)
        """One durable write of a Ready: log sync plus hard state."""
        self.apply_seconds = Histogram(APPLY_BUCKETS_S)
        """Applying one run of committed entries to the state machine."""
        self.applied_entries = 0
        self.leader_changes = 0
        self.elections = 0
        """Elections this node started (a pre-vote and its vote count once)."""
        self.snapshot_seconds = {kind: Histogram(SNAPSHOT_BUCKETS_S) for kind in SNAPSHOT_KINDS}
        self.snapshot_bytes_total: Counter[str] = Counter()
        self.snapshot_last_bytes: dict[str, int] = {}
        self.snapshot_failures: Counter[str] = Counter()
        self._leader = ""
        self._campaigning = False

    # -- proposals ---------------------------------------------------------------------

    def proposed(self, commands: int) -> None:
        """The core accepted a batch of ``commands`` client writes."""
        self.proposals += 1
        self.proposal_commands.observe(commands)

    def proposal_dropped(self, reason: str, commands: int = 1) -> None:
        """The core refused a batch of ``commands`` writes (``ProposalDropped.reason``)."""
        self.proposals_dropped[reason] += 1
        self.failures["write", reason] += commands

    def proposal_failed(self, reason: str, commands: int = 1) -> None:
        """An accepted batch of ``commands`` writes ended without being applied:
        ``"timeout"`` (outcome unknown), or ``"lost"`` (another entry was committed where
        the leader had appended it: not applied, the clients may retry)."""
        self.proposals_failed[reason] += 1
        self.failures["write", reason] += commands

    def gathered(self, outcome: str) -> None:
        """A leader ended a gather for its next batch: ``"returned"`` (all back),
        ``"timeout"`` (``raft.proposal_gather_ms`` passed) or ``"behind"`` (the clients
        fell behind a closed loop's pace)."""
        self.proposal_gathers[outcome] += 1

    def proposal_committed(self, seconds: float | None = None) -> None:
        """One of our batches was applied and its clients answered, ``seconds`` after it
        was proposed."""
        self.proposals_committed += 1
        if seconds is not None:
            self.write_seconds.observe(seconds)

    def reads_failed(self, reason: str, commands: int) -> None:
        """A batch of ``commands`` linearizable reads failed (``"no-leader"``,
        ``"leader-change"``, ``"timeout"``)."""
        self.failures["read", reason] += commands

    def reads_answered(self, commands: int, seconds: float) -> None:
        """A batch of ``commands`` linearizable reads was answered ``seconds`` after its
        ReadIndex request (a batch that timed out earlier comes back empty: ignored)."""
        if commands:
            self.read_seconds.observe(seconds)

    # -- disk and state machine --------------------------------------------------------

    def fsync(self, seconds: float) -> None:
        """A Ready's durable write took ``seconds`` (writer thread)."""
        self.fsync_seconds.observe(seconds)

    def applied(self, entries: int, seconds: float) -> None:
        """``entries`` committed entries were applied in ``seconds``."""
        self.applied_entries += entries
        self.apply_seconds.observe(seconds)

    def snapshot(self, kind: str, size_bytes: int, seconds: float, ok: bool = True) -> None:
        """A snapshot of ``kind`` (one of ``SNAPSHOT_KINDS``) finished (``ok``) or failed
        after ``seconds``; ``size_bytes`` is its serialized size (0 if unknown)."""
        if kind not in self.snapshot_seconds:
            raise ValueError(f"snapshot kind must be one of {SNAPSHOT_KINDS}, not {kind!r}")
        if not ok:
            self.snapshot_failures[kind] += 1
            return
        self.snapshot_seconds[kind].observe(seconds)
        self.snapshot_bytes_total[kind] += size_bytes
        self.snapshot_last_bytes[kind] = size_bytes

    # -- soft state --------------------------------------------------------------------

    def on_node_event(self, kind: str, details: dict) -> None:
        """A ``RaftNodeService.listeners`` callback: counts leader changes and elections."""
        if kind != "soft_state":
            return
        leader = details.get("leader_id") or ""
        if leader and leader != self._leader:
            self.leader_changes += 1
        if leader:
            self._leader = leader
        role = getattr(details.get("role"), "value", details.get("role"))
        campaigning = role in ("candidate", "pre-candidate")
        if campaigning and not self._campaigning:
            self.elections += 1  # a pre-vote and the vote that follows are one election
        self._campaigning = campaigning


NULL_METRICS = NodeMetrics()
"""A ``NodeMetrics`` nobody scrapes, for services built without the tap."""


# -- client commands ---------------------------------------------------------------------


class CommandMetrics:
    """Client commands handed to the node: ``by_route[route][name]`` (``name`` as
    parsed, ``bytes``); ``rejected`` the ones the node refused at once, by (route,
    reason) (it was overloaded); ``denied`` the ones the ACL refused, by command class."""

    def __init__(self) -> None:
        self.by_route: dict[str, Counter[bytes]] = {
            route: Counter() for route in ("read", "write", "admin")}
        self.rejected: Counter[tuple[str, str]] = Counter()
        self.denied: Counter[str] = Counter()


@implementer(IClientBackend)
class MeteredBackend:
    """An ``IClientBackend`` that counts what it passes to ``backend``, so the client
    layer needs no metric code. Adds no callback to the command's Deferred (see the
    module docstring); only an answer that is already there (the node refused the
    command at once) is looked at. About 2k instructions per command (callgrind)."""

    def __init__(self, backend: IClientBackend, metrics: CommandMetrics):
        self.backend = backend
        self.metrics = metrics
        self._reads = metrics.by_route["read"]
        self._writes = metrics.by_route["write"]
        self._admins = metrics.by_route["admin"]
        # Offer the backend's Deferred-free fast path only if it has one (the client
        # port looks for these attributes).
        if callable(getattr(backend, "submit_write", None)):
            self.submit_write = self._submit_write
        if callable(getattr(backend, "submit_read", None)):
            self.submit_read = self._submit_read
        if callable(getattr(backend, "submit_writes", None)):
            self.submit_writes = self._submit_writes
        if callable(getattr(backend, "submit_reads", None)):
            self.submit_reads = self._submit_reads
        if callable(getattr(backend, "client_returned", None)):
            self.client_returned = backend.client_returned

    def _submit_write(self, command: list, done, token) -> None:
        """Count, then ``backend.submit_write`` (refusals are counted by the node)."""
        self._writes[command[0]] += 1
        self.backend.submit_write(command, done, token)

    def _submit_writes(self, commands: list, done, token) -> None:
        """Count, then ``backend.submit_writes``."""
        self._writes.update([command[0] for command in commands])
        self.backend.submit_writes(commands, done, token)

    def _submit_reads(self, commands: list, linearizable: bool, done, token) -> None:
        """Count, then ``backend.submit_reads``."""
        self._reads.update([command[0] for command in commands])
        self.backend.submit_reads(commands, linearizable, done, token)

    def _submit_read(self, command: list, linearizable: bool, done, token) -> None:
        """Count, then ``backend.submit_read``."""
        self._reads[command[0]] += 1
        self.backend.submit_read(command, linearizable, done, token)

    @property
    def node_id(self) -> str:
        """The wrapped node's id."""
        return self.backend.node_id

    def info(self) -> dict:
        """The wrapped node's INFO fields."""
        return self.backend.info()

    def read(self, command: list, linearizable: bool = True):
        """Count, then ``backend.read``."""
        self._reads[command[0]] += 1
        result = self.backend.read(command, linearizable)
        if result.called and linearizable:
            self._rejected(result, "read")
        return result

    def write(self, command: list):
        """Count, then ``backend.write``."""
        self._writes[command[0]] += 1
        result = self.backend.write(command)
        if result.called:
            self._rejected(result, "write")
        return result

    def admin(self, command: list):
        """Count, then ``backend.admin``."""
        self._admins[command[0]] += 1
        result = self.backend.admin(command)
        if result.called:
            self._rejected(result, "admin")
        return result

    def _rejected(self, result, route: str) -> None:
        if isinstance(result.result, Failure):
            self.metrics.rejected[route, _failure_reason(result.result.value)] += 1


def _failure_reason(error: BaseException) -> str:
    from kvraft.client.errors import BackendError, OverloadedError
    if isinstance(error, OverloadedError):
        return "overloaded"
    if isinstance(error, BackendError):
        return error.code.lower()
    return "internal"


# -- TLS on the client port ----------------------------------------------------------------


class _CountingTLSProtocol(TLSMemoryBIOProtocol):
    def connectionLost(self, reason):
        # Classify before Twisted drops the OpenSSL handle (kvraft.tls.classify_refusal).
        # A refused handshake reaches us as a plain connection loss; the TLS error that
        # caused it waits in _reason for the wrapped protocol. Both private names are
        # read with fallbacks: a Twisted without them only makes this count less.
        if not getattr(self, "_handshakeDone", True):
            from kvraft import tls
            error = getattr(self, "_reason", None) or reason
            if tls.is_tls_error(error):
                refusal = tls.classify_refusal(self, error)
                self.factory.handshake_failures[refusal.reason] += 1
                peer = self.transport.getPeer() if self.transport is not None else None
                log.warn("client TLS handshake from {peer} refused ({reason}): {detail}",
                         peer=getattr(peer, "host", "?"), reason=refusal.reason,
                         detail=refusal.detail)
        return super().connectionLost(reason)


class CountingTLSFactory(TLSMemoryBIOFactory):
    """``TLSMemoryBIOFactory`` for the client port that counts refused handshakes by
    ``kvraft.tls`` reason in ``handshake_failures`` (the peer port counts its own)."""

    protocol = _CountingTLSProtocol

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.handshake_failures: Counter[str] = Counter()

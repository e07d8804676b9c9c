"""The Prometheus collector of one node: every family is built at scrape time from the
node's state and counters (``kvraft.metrics``), so the hot paths carry no metric code
beyond a few integer increments.

``make_registry(...)`` returns the node's own ``CollectorRegistry`` with this collector
and the standard ``process_*`` / ``python_*`` ones; ``/metrics`` serves it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

import kvraft
from kvraft.metrics import SNAPSHOT_KINDS, CommandMetrics, Histogram, NodeMetrics

ROLES = ("follower", "pre-candidate", "candidate", "leader")


def _histogram(name: str, doc: str, histogram: Histogram) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc)
    family.add_metric([], histogram.cumulative(), histogram.sum)
    return family


def _add_histogram(family: HistogramMetricFamily, label_values: list[str],
                   histogram: Histogram) -> None:
    family.add_metric(label_values, histogram.cumulative(), histogram.sum)


def _counter(name: str, doc: str, values: Mapping[Any, int], label: str | tuple[str, ...]
             ) -> CounterMetricFamily:
    labels = [label] if isinstance(label, str) else list(label)
    family = CounterMetricFamily(name, doc, labels=labels)
    for key, value in sorted(values.items()):
        family.add_metric([key] if isinstance(label, str) else list(key), value)
    return family


def _gauge(name: str, doc: str, value: float | None) -> GaugeMetricFamily | None:
    return None if value is None else GaugeMetricFamily(name, doc, value=value)


class NodeCollector:
    """A prometheus_client custom collector reading one node at scrape time.

    ``node`` is a ``RaftNodeService`` (its ``metrics`` is a ``NodeMetrics``);
    ``transport`` a ``PeerTransport`` or None; ``client_factories`` maps a listener name
    (``"client"``, ``"plaintext"``) to its ``ClientFactory``; ``commands`` is the
    ``CommandMetrics`` the listeners' ``MeteredBackend`` fill; ``client_tls`` the
    ``CountingTLSFactory`` of the TLS client port, if any."""

    def __init__(self, node, transport=None, client_factories: Mapping[str, Any] | None = None,
                 commands: CommandMetrics | None = None, client_tls=None):
        self.node = node
        self.transport = transport
        self.client_factories = dict(client_factories or {})
        self.commands = commands
        self.client_tls = client_tls

    def describe(self) -> list:
        """Nothing up front: the registry must not scrape the node to register us."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Every family, read now."""
        families: list[Metric | None] = []
        families += self._raft()
        families += self._node_metrics(getattr(self.node, "metrics", None))
        families += self._snapshotter(getattr(self.node, "snapshotter", None))
        families += self._peers()
        families += self._clients()
        families += self._tls()
        yield from (f for f in families if f is not None)

    # -- raft state -------------------------------------------------------------------------

    def _raft(self) -> list[Metric | None]:
        node = self.node
        core = getattr(node, "core", None)
        status = core.status() if core is not None else {}
        role = getattr(status.get("role"), "value", "follower")
        info = GaugeMetricFamily("kvraft_node_info", "This node's identity (always 1).",
                                 labels=["node_id", "cluster", "version"])
        cluster = getattr(getattr(node, "config", None), "cluster_name", "")
        info.add_metric([node.node_id, cluster or "", kvraft.__version__], 1)
        roles = GaugeMetricFamily("kvraft_role", "1 for this node's current role, else 0.",
                                  labels=["role"])
        for name in ROLES:
            roles.add_metric([name], 1 if name == role else 0)
        machine = getattr(node, "machine", None)
        applied = getattr(machine, "last_applied", 0)
        commit = status.get("commit_index", 0)
        conf = status.get("conf_state")
        members = GaugeMetricFamily("kvraft_members", "Members of the configuration by kind.",
                                    labels=["kind"])
        members.add_metric(["voter"], len(getattr(conf, "voters", ()) or ()))
        members.add_metric(["learner"], len(getattr(conf, "learners", ()) or ()))
        return [
            info, roles, members,
            _gauge("kvraft_is_leader", "1 if this node is the leader.",
                   1 if role == "leader" else 0),
            _gauge("kvraft_has_leader", "1 if this node knows a leader.",
                   1 if status.get("leader_id") else 0),
            _gauge("kvraft_term", "The current Raft term.", status.get("term", 0)),
            _gauge("kvraft_commit_index", "Highest log index known committed.", commit),
            _gauge("kvraft_applied_index", "Highest log index applied to the state machine.",
                   applied),
            _gauge("kvraft_apply_lag_entries", "Committed entries not yet applied.",
                   max(0, commit - applied)),
            _gauge("kvraft_last_index", "Highest index in this node's log.",
                   status.get("last_index", 0)),
            _gauge("kvraft_first_index", "Lowest index still in this node's log.",
                   status.get("first_index", 0)),
            _gauge("kvraft_keys", "Keys in this node's state machine.",
                   getattr(machine, "key_count", None)),
        ]

    def _node_metrics(self, m: NodeMetrics | None) -> list[Metric | None]:
        if m is None:
            return []
        snapshot_seconds = HistogramMetricFamily(
            "kvraft_snapshot_seconds", "Time to take, install, send or receive a snapshot.",
            labels=["kind"])
        for kind in SNAPSHOT_KINDS:
            _add_histogram(snapshot_seconds, [kind], m.snapshot_seconds[kind])
        last_bytes = GaugeMetricFamily("kvraft_snapshot_last_bytes",
                                       "Size of the last snapshot of each kind.",
                                       labels=["kind"])
        for kind, size in sorted(m.snapshot_last_bytes.items()):
            last_bytes.add_metric([kind], size)
        return [
            CounterMetricFamily("kvraft_proposals_total", "Write batches the core accepted "
                                "(one Raft entry each).", value=m.proposals),
            CounterMetricFamily("kvraft_proposals_committed_total", "Write batches of this "
                                "node applied and answered.", value=m.proposals_committed),
            _counter("kvraft_proposals_dropped_total",
                     "Write batches the core refused, by reason.", m.proposals_dropped,
                     "reason"),
            _counter("kvraft_proposals_failed_total", "Accepted write batches that were not "
                     "applied, by reason: timeout (outcome unknown), lost (another entry "
                     "was committed in their place).", m.proposals_failed, "reason"),
            _counter("kvraft_proposal_gathers_total", "Write batches the leader held until "
                     "the clients it answered last sent again (raft.proposal_gather_ms), "
                     "by how the gather ended: returned, timeout, or behind (the clients fell "
                     "behind a closed loop's pace).",
                     m.proposal_gathers, "outcome"),
            _histogram("kvraft_proposal_commands", "Client writes per proposed batch.",
                       m.proposal_commands),
            _histogram("kvraft_fsync_seconds", "Durable write of one Ready (log sync and "
                       "hard state), in the writer thread.", m.fsync_seconds),
            _histogram("kvraft_apply_seconds", "Applying one run of committed entries.",
                       m.apply_seconds),
            _histogram("kvraft_write_seconds", "From proposing a batch of client writes to "
                       "answering it.", m.write_seconds),
            _histogram("kvraft_read_seconds", "From a ReadIndex request for a batch of "
                       "linearizable reads to answering it.", m.read_seconds),
            CounterMetricFamily("kvraft_applied_entries_total",
                                "Committed entries applied.", value=m.applied_entries),
            CounterMetricFamily("kvraft_leader_changes_total",
                                "Times this node saw a new leader.", value=m.leader_changes),
            CounterMetricFamily("kvraft_elections_total",
                                "Times this node started an election.", value=m.elections),
            snapshot_seconds, last_bytes,
            _counter("kvraft_snapshot_bytes_total", "Snapshot bytes by kind.",
                     m.snapshot_bytes_total, "kind"),
            _counter("kvraft_snapshot_failures_total", "Failed snapshots by kind.",
                     m.snapshot_failures, "kind"),
        ]

    @staticmethod
    def _snapshotter(snap) -> list[Metric | None]:
        """What the node's Snapshotter keeps (read, never changed)."""
        if snap is None:
            return []
        meta = getattr(snap, "meta", None)
        return [
            CounterMetricFamily("kvraft_snapshots_taken_total", "Snapshots this process "
                                "wrote.", value=getattr(snap, "taken", 0)),
            _gauge("kvraft_snapshot_index", "Log index of the newest snapshot.",
                   getattr(meta, "index", 0)),
            _gauge("kvraft_snapshot_last_duration_seconds", "Time the last snapshot took.",
                   getattr(snap, "last_duration_s", None)),
            _gauge("kvraft_snapshot_lag_bytes", "Entry bytes applied since the newest "
                   "snapshot (a new one starts at the configured threshold).",
                   getattr(snap, "applied_bytes", None)),
        ]

    # -- peers ---------------------------------------------------------------------------------

    def _peers(self) -> list[Metric | None]:
        core = getattr(self.node, "core", None)
        status = core.status() if core is not None else {}
        families: list[Metric | None] = []
        progress = status.get("progress") or {}
        if progress:
            last = status.get("last_index", 0)
            match = GaugeMetricFamily("kvraft_peer_match_index", "Highest index the leader "
                                      "knows a follower holds (leader only).", labels=["peer"])
            nxt = GaugeMetricFamily("kvraft_peer_next_index", "Next index the leader sends a "
                                    "follower (leader only).", labels=["peer"])
            lag = GaugeMetricFamily("kvraft_peer_lag_entries", "Entries a follower is behind "
                                    "the leader's log (leader only).", labels=["peer"])
            for peer, pr in sorted(progress.items()):
                if peer == self.node.node_id:
                    continue
                match.add_metric([peer], pr["match"])
                nxt.add_metric([peer], pr["next"])
                lag.add_metric([peer], max(0, last - pr["match"]))
            families += [match, nxt, lag]
        transport = self.transport
        if transport is None:
            return families
        counters = transport.counters
        per_peer = {
            "frames_sent": ("kvraft_peer_messages_sent_total", "Messages written to a peer."),
            "bytes_sent": ("kvraft_peer_sent_bytes_total", "Bytes written to a peer."),
            "frames_received": ("kvraft_peer_messages_received_total",
                                "Messages received from a peer."),
            "bytes_received": ("kvraft_peer_received_bytes_total", "Bytes received from a peer."),
            "frames_dropped": ("kvraft_peer_messages_dropped_total",
                               "Messages for a peer that were never written."),
            "links_opened": ("kvraft_peer_links_opened_total",
                             "Outgoing links to a peer that completed the hello."),
        }
        for attr, (name, doc) in per_peer.items():
            family = CounterMetricFamily(name, doc, labels=["peer"])
            for peer, link in sorted(counters.peers.items()):
                family.add_metric([peer], getattr(link, attr))
            families.append(family)
        connected = GaugeMetricFamily("kvraft_peer_connected", "1 if our link to the peer is "
                                      "open.", labels=["peer"])
        for peer in sorted(transport.peers):
            connected.add_metric([peer], 1 if transport.is_connected(peer) else 0)
        families += [
            connected,
            _counter("kvraft_peer_dropped_messages_total", "Outgoing messages dropped, by "
                     "reason.", counters.drops, "reason"),
            _counter("kvraft_peer_bad_frames_total", "Peer links closed for a bad frame, by "
                     "kind.", counters.bad_frames, "kind"),
            _counter("kvraft_peer_refused_by_peer_total", "Our peer links the other side "
                     "refused, by reason.", counters.refused_by_peer, "reason"),
            CounterMetricFamily("kvraft_peer_handler_errors_total", "Peer messages the node "
                                "failed to handle (a bug).", value=counters.handler_errors),
        ]
        return families

    # -- clients -------------------------------------------------------------------------------

    def _clients(self) -> list[Metric | None]:
        families: list[Metric | None] = []
        factories = self.client_factories
        if factories:
            open_ = GaugeMetricFamily("kvraft_client_connections", "Open client connections.",
                                      labels=["listener"])
            stats = {
                "connections_accepted": ("kvraft_client_connections_accepted_total",
                                         "Client connections accepted."),
                "connections_refused": ("kvraft_client_connections_refused_total",
                                        "Client connections refused at connections_max."),
                "commands": ("kvraft_client_requests_total",
                             "Commands parsed, connection commands included."),
                "protocol_errors": ("kvraft_client_protocol_errors_total",
                                    "Connections closed for malformed input."),
                "internal_errors": ("kvraft_client_internal_errors_total",
                                    "Commands answered 'internal error' (a bug)."),
                "idle_closed": ("kvraft_client_idle_closed_total",
                                "Connections closed after idle_timeout_s."),
            }
            built = {attr: CounterMetricFamily(name, doc, labels=["listener"])
                     for attr, (name, doc) in stats.items()}
            for listener, factory in sorted(factories.items()):
                open_.add_metric([listener], len(factory.connections))
                for attr, family in built.items():
                    family.add_metric([listener], getattr(factory.stats, attr, 0))
            families += [open_, *built.values()]
        commands = self.commands
        if commands is not None:
            by_name = CounterMetricFamily(
                "kvraft_client_commands_total", "Client commands handed to the node, by "
                "name and route (read, write, admin).", labels=["command", "route"])
            for route, counts in sorted(commands.by_route.items()):
                for name, value in sorted(counts.items()):
                    by_name.add_metric([name.decode("ascii", "replace").lower(), route], value)
            families += [by_name,
                         _counter("kvraft_client_denied_total", "Commands the ACL refused, "
                                  "by command class.", commands.denied, "class")]
        failures: Counter[tuple[str, str]] = Counter()
        metrics = getattr(self.node, "metrics", None)
        if metrics is not None:
            failures.update(metrics.failures)
        if commands is not None:
            failures.update(commands.rejected)
        families.append(_counter(
            "kvraft_client_command_failures_total", "Client commands the node answered with "
            "an error, by route and reason (no-leader, transferring, timeout, overloaded, "
            "...).", failures, ("route", "reason")))
        return families

    def _tls(self) -> list[Metric | None]:
        family = CounterMetricFamily(
            "kvraft_tls_handshake_failures_total", "TLS connections this node refused, by "
            "port and reason (no certificate, unknown CA, expired, wrong identity, ...).",
            labels=["port", "reason"])
        if self.transport is not None:
            for reason, value in sorted(self.transport.counters.handshake_failures.items()):
                family.add_metric(["peer", reason], value)
        if self.client_tls is not None:
            for reason, value in sorted(self.client_tls.handshake_failures.items()):
                family.add_metric(["client", reason], value)
        return [family]


def make_registry(collectors: Iterable[Any], process: bool = True) -> CollectorRegistry:
    """A fresh registry holding ``collectors`` and, with ``process``, the standard
    process, platform and garbage-collector metrics of this process."""
    from prometheus_client import GCCollector, PlatformCollector, ProcessCollector
    registry = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        registry.register(collector)
    if process:
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
    return registry

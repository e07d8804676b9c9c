"""Each metric family moves when its event happens, on an in-process cluster of real
RaftNodeServices driven by a fake clock (no sockets, no threads, no global reactor).

``OpsCluster`` (also used by tests/test_http_*.py) wires every node the way
``kvraft.tap`` does: NodeMetrics listener, ClusterTracker, MeteredBackend and a
NodeCollector in a per-node registry; a fake transport carries messages through the
clock and can cut links.
"""

from __future__ import annotations

from collections import Counter

import pytest
from twisted.internet.task import Clock
from twisted.python.failure import Failure

import kvraft
from kvraft import config as config_module
from kvraft.config import Address
from kvraft.machines.kv import KvStateMachine
from kvraft.metrics import CommandMetrics, Histogram, MeteredBackend, NodeMetrics
from kvraft.node import RaftNodeService
from kvraft.peer.counters import DROP_LINK_DOWN, DROP_UNKNOWN_PEER, TransportCounters
from kvraft.storage.memory import open_storage
from kvraft.web.collector import NodeCollector, make_registry
from kvraft.web.tracker import ClusterTracker

TICK_S = 0.1
ELECTION_TIMEOUT_MS = 1000
REQUEST_TIMEOUT_MS = 2000


class SyncThreadPool:
    """Runs the node's writer-thread work at once; the result comes back through the
    clock like ``callFromThread`` would deliver it."""

    def callInThreadWithCallback(self, on_result, func, *args, **kwargs):  # noqa: N802
        try:
            result = func(*args, **kwargs)
        except BaseException:
            on_result(False, Failure())
        else:
            on_result(True, result)


class FakeReactor(Clock):
    """A Clock with the few reactor methods RaftNodeService uses."""

    running = True

    def __init__(self):
        super().__init__()
        self._pool = SyncThreadPool()

    def getThreadPool(self):  # noqa: N802
        return self._pool

    def callFromThread(self, f, *args, **kwargs):  # noqa: N802
        self.callLater(0, f, *args, **kwargs)

    def stop(self):
        self.running = False


class FakeTransport:
    """The parts of PeerTransport the node, the tracker and the collector use."""

    def __init__(self, net: OpsCluster, node_id: str):
        self.net = net
        self.node_id = node_id
        self.counters = TransportCounters()
        self.on_message = None

    @property
    def peers(self) -> dict[str, Address]:
        return {n: Address("127.0.0.1", 7000 + i) for i, n in enumerate(self.net.ids)
                if n != self.node_id}

    def add_peer(self, peer: str, address) -> None:
        """Membership tells us whom to dial; the fake network reaches everyone."""

    def remove_peer(self, peer: str):
        from twisted.internet.defer import succeed
        return succeed(None)

    def is_connected(self, peer: str) -> bool:
        return peer in self.net.ids and not self.net.is_cut(self.node_id, peer)

    def connected_from(self) -> set[str]:
        return {p for p in self.net.ids if p != self.node_id
                and not self.net.is_cut(p, self.node_id)}

    def send_many(self, messages) -> None:
        for message in messages:
            self.send(message)

    def send(self, message) -> None:
        to = message.to
        if to not in self.net.ids:
            self.counters.drops[DROP_UNKNOWN_PEER] += 1
            return
        if self.net.is_cut(self.node_id, to):
            self.counters.drops[DROP_LINK_DOWN] += 1
            self.counters.peer(to).frames_dropped += 1
            return
        self.counters.peer(to).frames_sent += 1
        self.net.clock.callLater(0, self.net.deliver, message)


class OpsCluster:
    """``size`` nodes n1..nN wired like kvraft.tap, on one FakeReactor."""

    def __init__(self, tmp_path, size: int = 3):
        self.clock = FakeReactor()
        self.ids = [f"n{i}" for i in range(1, size + 1)]
        self.cuts: set[tuple[str, str]] = set()
        self.nodes: dict[str, RaftNodeService] = {}
        self.transports: dict[str, FakeTransport] = {}
        self.trackers: dict[str, ClusterTracker] = {}
        self.commands: dict[str, CommandMetrics] = {}
        self.backends: dict[str, MeteredBackend] = {}
        self.registries = {}
        members = {n: f"127.0.0.1:{7000 + i}" for i, n in enumerate(self.ids)}
        for i, node_id in enumerate(self.ids):
            config = config_module.from_dict({
                "node": {"id": node_id, "data_dir": str(tmp_path / node_id)},
                "cluster": {"members": members, "name": "test"},
                "peer": {"listen": members[node_id]},
                "tls": {"ca": "ca.pem", "cert": "node.pem", "key": "node-key.pem"},
                "raft": {"election_timeout_ms": ELECTION_TIMEOUT_MS,
                         "heartbeat_interval_ms": int(TICK_S * 1000),
                         "request_timeout_ms": REQUEST_TIMEOUT_MS},
            })
            transport = FakeTransport(self, node_id)
            node = RaftNodeService(config, open_storage(), KvStateMachine(), transport,
                                   reactor=self.clock, rng_seed=i + 1)
            node.listeners.append(node.metrics.on_node_event)
            tracker = ClusterTracker(node, transport, clock=self.clock)
            commands = CommandMetrics()
            backend = MeteredBackend(node, commands)
            self.nodes[node_id] = node
            self.transports[node_id] = transport
            self.trackers[node_id] = tracker
            self.commands[node_id] = commands
            self.backends[node_id] = backend
            self.registries[node_id] = make_registry(
                [NodeCollector(node, transport, {}, commands)], process=False)

    # -- driving -----------------------------------------------------------------------

    def start(self) -> None:
        for node_id in self.ids:
            self.nodes[node_id].startService()
            self.trackers[node_id].startService()
        self.settle()

    def stop(self) -> None:
        for node_id in self.ids:
            if self.trackers[node_id].running:
                self.trackers[node_id].stopService()
            if self.nodes[node_id].running:
                self.nodes[node_id].stopService()
        self.settle()

    def settle(self, rounds_max: int = 10_000) -> None:
        """Run everything due now (messages, Ready handling) until nothing is."""
        for _ in range(rounds_max):
            now = self.clock.seconds()
            if not any(call.getTime() <= now for call in self.clock.getDelayedCalls()):
                return
            self.clock.advance(0)
        raise AssertionError("the cluster did not settle: a busy loop?")

    def run(self, seconds: float) -> None:
        """Let ``seconds`` of fake time pass, a tick at a time."""
        steps = round(seconds / TICK_S)
        for _ in range(steps):
            self.clock.advance(TICK_S)
            self.settle()

    def run_until(self, predicate, seconds_max: float = 20.0):
        for _ in range(round(seconds_max / TICK_S)):
            value = predicate()
            if value:
                return value
            self.run(TICK_S)
        raise AssertionError(f"condition not met within {seconds_max} fake seconds")

    def leader(self) -> str | None:
        leaders = [n for n, node in self.nodes.items()
                   if node.running and node.core.status()["role"].value == "leader"]
        return leaders[0] if len(leaders) == 1 else None

    def wait_leader(self) -> str:
        return self.run_until(self.leader)

    def deliver(self, message) -> None:
        target = self.transports.get(message.to)
        if target is None or self.is_cut(message.frm, message.to):
            return
        target.counters.peer(message.frm).frames_received += 1
        node = self.nodes[message.to]
        if node.running:
            node.receive(message)

    def is_cut(self, a: str, b: str) -> bool:
        return (a, b) in self.cuts

    def isolate(self, node_id: str) -> None:
        for other in self.ids:
            if other != node_id:
                self.cuts |= {(node_id, other), (other, node_id)}

    def heal(self) -> None:
        self.cuts.clear()

    def write(self, node_id: str, *command: bytes):
        """A write through the node's MeteredBackend; returns [result or Failure]."""
        out: list = []
        self.backends[node_id].write(list(command)).addBoth(out.append)
        return out

    def sample(self, node: str, name: str, **labels) -> float | None:
        return self.registries[node].get_sample_value(name, labels)


@pytest.fixture
def ops(tmp_path):
    cluster = OpsCluster(tmp_path)
    cluster.start()
    yield cluster
    cluster.stop()


# -- the histogram -----------------------------------------------------------------------------


def test_histogram_buckets_are_le_and_cumulative():
    h = Histogram([0.1, 1.0])
    for value in (0.05, 0.1, 0.5, 1.0, 3.0):
        h.observe(value)
    assert h.cumulative() == [("0.1", 2), ("1.0", 4), ("+Inf", 5)]
    assert h.count == 5 and h.sum == pytest.approx(4.65)
    with pytest.raises(ValueError):
        Histogram([1.0, 0.5])


# -- raft state and elections -------------------------------------------------------------------


def test_election_moves_role_term_leader_changes_and_elections(ops):
    for node_id in ops.ids:
        assert ops.sample(node_id, "kvraft_term") == 0
        assert ops.sample(node_id, "kvraft_has_leader") == 0
    leader = ops.wait_leader()
    ops.run(0.5)
    assert ops.sample(leader, "kvraft_role", role="leader") == 1
    assert ops.sample(leader, "kvraft_role", role="follower") == 0
    assert ops.sample(leader, "kvraft_is_leader") == 1
    assert ops.sample(leader, "kvraft_elections_total") >= 1
    for node_id in ops.ids:
        assert ops.sample(node_id, "kvraft_term") >= 1
        assert ops.sample(node_id, "kvraft_has_leader") == 1
        assert ops.sample(node_id, "kvraft_leader_changes_total") == 1
        assert ops.sample(node_id, "kvraft_members", kind="voter") == 3
        info = ops.sample(node_id, "kvraft_node_info", node_id=node_id, cluster="test",
                          version=kvraft.__version__)
        assert info == 1
    term = ops.sample(leader, "kvraft_term")
    # The leader is cut off: the others elect a new one; everybody's term moves and the
    # survivors count a second leader change.
    ops.isolate(leader)
    second = ops.run_until(lambda: next((n for n in ops.ids if n != leader and ops.nodes[n]
                                         .core.status()["role"].value == "leader"), None))
    ops.run(0.2)
    assert ops.sample(second, "kvraft_term") > term
    assert ops.sample(second, "kvraft_leader_changes_total") == 2
    assert ops.sample(second, "kvraft_is_leader") == 1


def test_writes_move_proposals_commit_apply_and_latency_histograms(ops):
    leader = ops.wait_leader()
    before = {name: ops.sample(leader, name) for name in (
        "kvraft_commit_index", "kvraft_applied_index", "kvraft_proposals_total",
        "kvraft_proposals_committed_total", "kvraft_fsync_seconds_count",
        "kvraft_apply_seconds_count", "kvraft_applied_entries_total")}
    results = [ops.write(leader, b"SET", f"k{i}".encode(), b"v") for i in range(5)]
    ops.run(0.3)
    assert all(r == ["OK"] or str(r[0]) == "OK" for r in results), results
    after = {name: ops.sample(leader, name) for name in before}
    assert after["kvraft_commit_index"] > before["kvraft_commit_index"]
    assert after["kvraft_applied_index"] == after["kvraft_commit_index"]
    # The five writes of one reactor turn travel as ONE proposal.
    assert after["kvraft_proposals_total"] == before["kvraft_proposals_total"] + 1
    assert after["kvraft_proposals_committed_total"] == \
        before["kvraft_proposals_committed_total"] + 1
    assert ops.sample(leader, "kvraft_proposal_commands_bucket", le="4.0") == 0
    assert ops.sample(leader, "kvraft_proposal_commands_bucket", le="8.0") == 1
    assert after["kvraft_fsync_seconds_count"] > before["kvraft_fsync_seconds_count"]
    assert after["kvraft_apply_seconds_count"] > before["kvraft_apply_seconds_count"]
    assert after["kvraft_applied_entries_total"] > before["kvraft_applied_entries_total"]
    assert ops.sample(leader, "kvraft_keys") == 5
    assert ops.sample(leader, "kvraft_client_commands_total", command="set", route="write") == 5
    # One batch, one latency observation; fake time does not move within a turn.
    assert ops.sample(leader, "kvraft_write_seconds_count") == 1


def test_dropped_and_failed_proposals_are_counted(ops):
    # Before any election, a write is refused by the core: dropped, reason no-leader.
    out = ops.write("n1", b"SET", b"a", b"1")
    ops.settle()
    assert ops.sample("n1", "kvraft_proposals_dropped_total", reason="no-leader") == 1
    assert isinstance(out[0], Failure)
    assert ops.sample("n1", "kvraft_client_command_failures_total", route="write",
                      reason="no-leader") == 1
    # A leader cut off from everyone accepts a write it can never commit: after the
    # request timeout it fails, outcome unknown.
    leader = ops.wait_leader()
    ops.isolate(leader)
    out = ops.write(leader, b"SET", b"b", b"2")
    ops.run(REQUEST_TIMEOUT_MS / 1000 + 0.2)
    assert isinstance(out[0], Failure)
    assert ops.sample(leader, "kvraft_proposals_failed_total", reason="timeout") == 1
    assert ops.sample(leader, "kvraft_client_command_failures_total", route="write",
                      reason="timeout") == 1
    assert ops.sample(leader, "kvraft_write_seconds_count") is not None


def test_reads_are_counted_timed_and_their_failures_counted(ops):
    leader = ops.wait_leader()
    ops.write(leader, b"SET", b"s", b"text")
    ops.run(0.2)
    got: list = []
    for _ in range(3):
        ops.backends[leader].read([b"GET", b"s"], True).addBoth(got.append)
    ops.run(0.2)
    assert got == [b"text"] * 3
    assert ops.sample(leader, "kvraft_client_commands_total", command="get", route="read") == 3
    assert ops.sample(leader, "kvraft_read_seconds_count") == 1  # one ReadIndex round
    # A cut-off leader cannot confirm a read: the batch times out, or fails when the
    # leader steps down (check-quorum), whichever comes first.
    ops.isolate(leader)
    ops.backends[leader].read([b"GET", b"s"], True).addBoth(got.append)
    ops.run(REQUEST_TIMEOUT_MS / 1000 + 0.2)
    assert isinstance(got[-1], Failure)
    failures = [ops.sample(leader, "kvraft_client_command_failures_total", route="read",
                           reason=reason)
                for reason in ("timeout", "no-leader", "leader-change")]
    assert sum(f or 0 for f in failures) == 1
    assert ops.sample(leader, "kvraft_read_seconds_count") == 1


def test_an_overloaded_node_is_counted_as_rejected(ops):
    from kvraft import node as node_module

    leader = ops.wait_leader()
    limit = node_module.pending_writes_max
    node_module.pending_writes_max = 0
    try:
        out: list = []
        ops.backends[leader].write([b"SET", b"k", b"v"]).addBoth(out.append)
    finally:
        node_module.pending_writes_max = limit
    assert isinstance(out[0], Failure)
    assert ops.sample(leader, "kvraft_client_command_failures_total", route="write",
                      reason="overloaded") == 1


def test_peer_progress_lag_and_message_counters(ops):
    leader = ops.wait_leader()
    ops.run(0.5)
    followers = [n for n in ops.ids if n != leader]
    for peer in followers:
        assert ops.sample(leader, "kvraft_peer_lag_entries", peer=peer) == 0
        assert ops.sample(leader, "kvraft_peer_match_index", peer=peer) == \
            ops.sample(leader, "kvraft_last_index")
        assert ops.sample(leader, "kvraft_peer_connected", peer=peer) == 1
        assert ops.sample(leader, "kvraft_peer_messages_sent_total", peer=peer) > 0
        assert ops.sample(leader, "kvraft_peer_messages_received_total", peer=peer) > 0
    lagging = followers[0]
    ops.cuts |= {(leader, lagging), (lagging, leader)}
    sent = ops.sample(leader, "kvraft_peer_messages_sent_total", peer=followers[1])
    for i in range(3):
        ops.write(leader, b"SET", f"x{i}".encode(), b"v")
        ops.run(0.2)
    assert ops.sample(leader, "kvraft_peer_lag_entries", peer=lagging) >= 3
    assert ops.sample(leader, "kvraft_peer_lag_entries", peer=followers[1]) == 0
    assert ops.sample(leader, "kvraft_peer_connected", peer=lagging) == 0
    assert ops.sample(leader, "kvraft_peer_messages_dropped_total", peer=lagging) > 0
    assert ops.sample(leader, "kvraft_peer_dropped_messages_total", reason=DROP_LINK_DOWN) > 0
    assert ops.sample(leader, "kvraft_peer_messages_sent_total", peer=followers[1]) > sent
    ops.heal()
    ops.run(1.0)
    assert ops.sample(leader, "kvraft_peer_lag_entries", peer=lagging) == 0


def test_a_snapshot_moves_the_snapshotter_gauges(ops):
    leader = ops.wait_leader()
    for i in range(5):
        ops.write(leader, b"SET", f"s{i}".encode(), b"v" * 100)
        ops.run(0.1)
    taken = ops.sample(leader, "kvraft_snapshots_taken_total")
    assert ops.sample(leader, "kvraft_snapshot_lag_bytes") > 0
    done: list = []
    ops.nodes[leader].snapshotter.take().addBoth(done.append)
    ops.run_until(lambda: done, 5.0)
    assert ops.sample(leader, "kvraft_snapshots_taken_total") == taken + 1
    assert ops.sample(leader, "kvraft_snapshot_index") == ops.sample(leader,
                                                                     "kvraft_applied_index")
    assert ops.sample(leader, "kvraft_snapshot_lag_bytes") == 0
    assert ops.sample(leader, "kvraft_snapshot_last_duration_seconds") is not None


def test_snapshot_hooks_fill_their_families(ops):
    metrics = ops.nodes["n1"].metrics
    metrics.snapshot("create", 4096, 0.3)
    metrics.snapshot("create", 8192, 0.02)
    metrics.snapshot("send", 8192, 1.5, ok=False)
    assert ops.sample("n1", "kvraft_snapshot_seconds_count", kind="create") == 2
    assert ops.sample("n1", "kvraft_snapshot_seconds_bucket", kind="create", le="0.1") == 1
    assert ops.sample("n1", "kvraft_snapshot_last_bytes", kind="create") == 8192
    assert ops.sample("n1", "kvraft_snapshot_bytes_total", kind="create") == 12288
    assert ops.sample("n1", "kvraft_snapshot_failures_total", kind="send") == 1
    assert ops.sample("n1", "kvraft_snapshot_seconds_count", kind="send") == 0
    with pytest.raises(ValueError, match="snapshot kind"):
        metrics.snapshot("backup", 1, 1.0)


def test_denied_commands_and_client_listener_stats_are_exported():
    from kvraft.acl import RoleACL
    from kvraft.client.commands import CommandFlag
    from kvraft.client.server import ClientFactory

    commands = CommandMetrics()
    acl = RoleACL({"reader": "read"}, denied=commands.denied)
    assert not acl.authorize("reader", CommandFlag.WRITE)
    assert not acl.authorize("stranger", CommandFlag.ADMIN | CommandFlag.WRITE)

    class Backend:
        node_id = "n1"

        def info(self):
            return {}

    clock = Clock()
    factory = ClientFactory(Backend(), clock=clock)
    factory.stats.connections_accepted = 4
    factory.stats.protocol_errors = 1
    node = RaftNodeService.__new__(RaftNodeService)  # collector reads only what exists
    node.node_id, node.core, node.metrics = "n1", None, NodeMetrics()
    registry = make_registry([NodeCollector(node, None, {"client": factory}, commands)],
                             process=False)
    assert registry.get_sample_value("kvraft_client_denied_total", {"class": "write"}) == 1
    assert registry.get_sample_value("kvraft_client_denied_total", {"class": "admin"}) == 1
    assert registry.get_sample_value("kvraft_client_connections_accepted_total",
                                     {"listener": "client"}) == 4
    assert registry.get_sample_value("kvraft_client_protocol_errors_total",
                                     {"listener": "client"}) == 1
    assert registry.get_sample_value("kvraft_client_connections", {"listener": "client"}) == 0


def test_tls_handshake_failures_are_exported_by_port_and_reason():
    from kvraft.metrics import CountingTLSFactory

    class Transport:
        counters = TransportCounters()
        peers: dict = {}

        def is_connected(self, peer):
            return False

    transport = Transport()
    transport.counters.handshake_failures["unknown CA"] += 2
    client_tls = CountingTLSFactory.__new__(CountingTLSFactory)
    client_tls.handshake_failures = Counter({"no certificate": 1})
    node = RaftNodeService.__new__(RaftNodeService)
    node.node_id, node.core, node.metrics = "n1", None, NodeMetrics()
    registry = make_registry([NodeCollector(node, transport, client_tls=client_tls)],
                             process=False)
    assert registry.get_sample_value("kvraft_tls_handshake_failures_total",
                                     {"port": "peer", "reason": "unknown CA"}) == 2
    assert registry.get_sample_value("kvraft_tls_handshake_failures_total",
                                     {"port": "client", "reason": "no certificate"}) == 1


def test_metrics_text_parses_and_every_name_follows_conventions(ops):
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    ops.wait_leader()
    text = generate_latest(ops.registries["n1"]).decode()
    families = list(text_string_to_metric_families(text))
    names = {f.name for f in families}
    assert {"kvraft_term", "kvraft_fsync_seconds", "kvraft_peer_messages_sent",
            "kvraft_proposals_dropped", "kvraft_tls_handshake_failures"} <= names
    for family in families:
        assert family.name.startswith("kvraft_"), family.name
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples)
        if "seconds" in family.name or "bytes" in family.name:
            assert family.name.endswith(("_seconds", "_bytes", "_bytes_total",
                                         "_bytes")), family.name


def test_registries_are_per_node(ops):
    ops.nodes["n1"].metrics.snapshot("create", 1, 0.1)
    assert ops.sample("n1", "kvraft_snapshot_seconds_count", kind="create") == 1
    assert ops.sample("n2", "kvraft_snapshot_seconds_count", kind="create") == 0


# -- stopping: the leader hands over first (kvraft.lifecycle) ----------------------------------


def test_transfer_target_prefers_the_most_up_to_date_active_voter():
    from kvraft.lifecycle import transfer_target

    def pr(match, active=True, learner=False):
        return {"match": match, "recent_active": active, "is_learner": learner}

    status = {"progress": {"n1": pr(9), "n2": pr(7), "n3": pr(9, active=False),
                           "n4": pr(9, learner=True), "n5": pr(8)}}
    assert transfer_target(status, "n1") == "n5"
    status["progress"]["n6"] = pr(8)
    assert transfer_target(status, "n1") == "n5"  # ties: the lowest id
    assert transfer_target({"progress": {"n1": pr(3)}}, "n1") is None


def test_stopping_the_leader_hands_leadership_over_before_the_node_stops(ops):
    from kvraft.lifecycle import NodeRoot

    leader = ops.wait_leader()
    ops.write(leader, b"SET", b"k", b"v")
    ops.run(0.5)
    root = NodeRoot(clock=ops.clock, handoff_timeout_s=2.0)
    root.node = ops.nodes[leader]
    ops.nodes[leader].setServiceParent(root)
    root.running = 1
    done: list = []
    root.stopService().addBoth(done.append)
    stopped_at = ops.clock.seconds()
    ops.run_until(lambda: done, 2.0)
    # A new leader took over well within one election timeout (no election wait), and
    # only then did the old leader's node stop.
    assert ops.clock.seconds() - stopped_at < ELECTION_TIMEOUT_MS / 1000
    assert not ops.nodes[leader].running
    survivors = [n for n in ops.ids if n != leader]
    new = [n for n in survivors if ops.nodes[n].core.status()["role"].value == "leader"]
    assert len(new) == 1
    assert ops.trackers[new[0]].events[-1]["kind"] == "leader"


def test_stopping_a_follower_or_a_lonely_leader_does_not_wait(ops):
    from kvraft.lifecycle import hand_off_leadership

    leader = ops.wait_leader()
    follower = next(n for n in ops.ids if n != leader)
    out: list = []
    hand_off_leadership(ops.nodes[follower], ops.clock, 5.0).addBoth(out.append)
    assert out == [None]
    ops.isolate(leader)
    ops.run(0.3)
    # Its followers are not active (cut off) but the check-quorum window may still count
    # them; either it finds nobody at once, or it gives up after the timeout.
    out.clear()
    hand_off_leadership(ops.nodes[leader], ops.clock, 0.5).addBoth(out.append)
    ops.run(0.6)
    assert out == [None]


def test_metered_backend_passes_the_fast_path_through_and_counts_it():
    class FastNode:
        node_id = "n1"

        def __init__(self):
            self.calls = []

        def submit_write(self, command, done, token):
            self.calls.append(("write", command))
            done(token, b"w")

        def submit_read(self, command, linearizable, done, token):
            self.calls.append(("read", command, linearizable))
            done(token, b"r")

        def client_returned(self, answered_s):
            self.calls.append(("returned", answered_s))

    node, commands = FastNode(), CommandMetrics()
    backend = MeteredBackend(node, commands)
    backend.client_returned(1.5)
    assert node.calls.pop() == ("returned", 1.5)
    answers = []
    backend.submit_write([b"SET", b"k", b"v"], lambda token, r: answers.append((token, r)), 1)
    backend.submit_read([b"GET", b"k"], False, lambda token, r: answers.append((token, r)), 2)
    assert answers == [(1, b"w"), (2, b"r")]
    assert node.calls == [("write", [b"SET", b"k", b"v"]), ("read", [b"GET", b"k"], False)]
    assert commands.by_route["write"][b"SET"] == 1 and commands.by_route["read"][b"GET"] == 1

    class SlowNode:
        node_id = "n1"

    plain = MeteredBackend(SlowNode(), CommandMetrics())
    assert not hasattr(plain, "submit_write") and not hasattr(plain, "submit_read")
    assert not hasattr(plain, "client_returned")


def test_gathers_are_exported_by_outcome(ops):
    leader = ops.wait_leader()
    assert ops.sample(leader, "kvraft_proposal_gathers_total", outcome="returned") is None
    metrics = ops.nodes[leader].metrics
    metrics.gathered("returned")
    metrics.gathered("returned")
    metrics.gathered("timeout")
    assert ops.sample(leader, "kvraft_proposal_gathers_total", outcome="returned") == 2
    assert ops.sample(leader, "kvraft_proposal_gathers_total", outcome="timeout") == 1

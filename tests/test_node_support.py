"""A deterministic in-process cluster of real RaftNodeServices for the node tests.

Every node runs on one ``twisted.internet.task.Clock`` (the writer thread runs inline:
``deferToThreadPool`` calls back through ``callFromThread``, i.e. a zero-delay call),
with real WAL storage in a temporary directory, the real kv machine, and a fake peer
transport that passes every message through the real wire codec. Nothing touches the
global reactor or sleeps. (No tests here: this module is imported by test_node_*.py.)
"""

from __future__ import annotations

import os
from pathlib import Path

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from kvraft.config import from_dict
from kvraft.machines.kv import KvStateMachine
from kvraft.node import RaftNodeService
from kvraft.peer.codec import decode_body, encode_message, frame_header_bytes
from kvraft.raft import Role
from kvraft.storage.wal import open_storage


class InlineThreadPool:
    """Runs "thread" work at once, on the caller's stack."""

    def callInThreadWithCallback(self, on_result, f, *args, **kwargs):  # noqa: N802
        try:
            result = f(*args, **kwargs)
        except BaseException:
            on_result(False, Failure())
        else:
            on_result(True, result)


class FakeFlusher:
    """A node's log flusher (``kvraft.storage.aio.AioSync``'s shape) on the test clock.

    Each ``submit(fd)`` is remembered; unless ``hold`` is set, it completes on the next
    clock step with a real ``os.fdatasync``. With ``hold``, the test decides: ``release()``
    completes the oldest flush (with ``error``, if given, instead of syncing).
    """

    def __init__(self, on_done):
        self.on_done = on_done
        self.reactor = None
        self.hold = False
        self.pending: list[int] = []
        self.submitted = 0
        self.in_flight = False
        self.closed = False

    def start(self, reactor) -> None:
        self.reactor = reactor

    def submit(self, fd: int) -> None:
        assert not self.in_flight, "two flushes in flight"
        assert not self.closed, "submit after close"
        self.submitted += 1
        self.in_flight = True
        self.pending.append(fd)
        if not self.hold:
            self.reactor.callLater(0, self.release)

    def release(self, error: OSError | None = None) -> None:
        fd = self.pending.pop(0)
        if error is None:
            os.fdatasync(fd)
        self.in_flight = False
        self.on_done(error)

    def close(self) -> None:
        self.closed = True


class FakeReactor(Clock):
    """A Clock that also offers what deferToThreadPool needs."""

    running = False

    def __init__(self):
        super().__init__()
        self._pool = InlineThreadPool()

    def getThreadPool(self):  # noqa: N802
        return self._pool

    def callFromThread(self, f, *args, **kwargs):  # noqa: N802
        self.callLater(0, f, *args, **kwargs)


class Net:
    """Who can talk to whom; every message is encoded and decoded like on the wire."""

    def __init__(self, reactor: FakeReactor):
        self.reactor = reactor
        self.transports: dict[str, FakeTransport] = {}
        self.blocked: set[tuple[str, str]] = set()
        self.filter = None  # msg -> msg or None (dropped)
        self.sent: list = []  # every message sent, in order (for assertions)

    def reachable(self, a: str, b: str) -> bool:
        return (a, b) not in self.blocked and b in self.transports

    def isolate(self, node: str) -> None:
        for other in self.transports:
            if other != node:
                self.blocked |= {(node, other), (other, node)}

    def heal(self) -> None:
        self.blocked.clear()

    def deliver(self, frm: str, msg) -> None:
        self.sent.append(msg)
        if not self.reachable(frm, msg.to):
            return
        if self.filter is not None:
            msg = self.filter(msg)
            if msg is None:
                return
        frame = encode_message(msg)
        self.reactor.callLater(0, self._arrive, msg.to, frame)

    def _arrive(self, to: str, frame: bytes) -> None:
        transport = self.transports.get(to)
        if transport is not None and transport.on_message is not None:
            transport.on_message(decode_body(frame[frame_header_bytes:]))


class FakeTransport:
    """What RaftNodeService uses of PeerTransport."""

    def __init__(self, net: Net, node_id: str, peers: dict):
        self.net = net
        self.node_id = node_id
        self._peers = {k: v for k, v in peers.items() if k != node_id}
        self.on_message = None
        self.on_unreachable = None
        self.on_snapshot_status = None

    @property
    def peers(self) -> dict:
        return dict(self._peers)

    def add_peer(self, peer_id, address) -> None:
        assert peer_id != self.node_id
        self._peers[peer_id] = address

    def remove_peer(self, peer_id):
        self._peers.pop(peer_id, None)
        return defer.succeed(None)

    def is_connected(self, peer_id) -> bool:
        return peer_id in self._peers and self.net.reachable(self.node_id, peer_id)

    def send(self, msg) -> None:
        if msg.to in self._peers:
            self.net.deliver(self.node_id, msg)

    def send_many(self, msgs) -> None:
        for msg in msgs:
            self.send(msg)


def node_config(node_id: str, data_dir: Path, members: dict[str, str], join: bool = False,
                raft: dict | None = None, storage: dict | None = None,
                preferred_leader: str = ""):
    settings = {"election_timeout_ms": 1000, "heartbeat_interval_ms": 100}
    settings.update(raft or {})
    cluster = {"members": members, "join": join}
    if preferred_leader:
        cluster["preferred_leader"] = preferred_leader
    return from_dict({
        "node": {"id": node_id, "data_dir": str(data_dir)},
        "cluster": cluster,
        "peer": {"listen": members.get(node_id, "127.0.0.1:1")},
        "tls": {"ca": "ca.pem", "cert": "c.pem", "key": "k.pem"},
        "raft": settings,
        "storage": dict(storage or {}),
    })


class NodeCluster:
    """N RaftNodeServices on one clock; nodes may be stopped, restarted and added."""

    def __init__(self, base: Path, size: int = 3, raft: dict | None = None,
                 storage: dict | None = None, preferred_leader: str = "",
                 flusher: bool = False):
        self.base = Path(base)
        # flusher=True: leaders flush through a FakeFlusher (the AIO path), kept here;
        # a callable is used as the nodes' open_flusher.
        self.flusher = flusher
        self.flushers: dict[str, FakeFlusher] = {}
        self.reactor = FakeReactor()
        self.net = Net(self.reactor)
        self.raft = raft or {}
        self.storage_options = storage or {}
        self.preferred_leader = preferred_leader
        self.members = {f"n{i}": f"127.0.0.1:{7000 + i}" for i in range(1, size + 1)}
        self.nodes: dict[str, RaftNodeService] = {}
        self.configs = {}
        for node_id in self.members:
            self.start(node_id)

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, node_id: str, join: bool = False, members: dict | None = None):
        config = self.configs.get(node_id)
        if config is None:
            config = node_config(node_id, self.base / node_id, members or self.members,
                                 join=join, raft=self.raft, storage=self.storage_options,
                                 preferred_leader=self.preferred_leader)
            self.configs[node_id] = config
        storage = open_storage(str(config.data_dir), dict(config.storage_options))
        transport = FakeTransport(self.net, node_id,
                                  {k: v for k, v in config.members.items()})
        self.net.transports[node_id] = transport
        open_flusher = self.flusher if callable(self.flusher) else None
        if self.flusher is True:
            def open_flusher(on_done, node_id=node_id):
                self.flushers[node_id] = FakeFlusher(on_done)
                return self.flushers[node_id], ""
        node = RaftNodeService(config, storage, KvStateMachine(), transport,
                               reactor=self.reactor, rng_seed=sum(map(ord, node_id)),
                               open_flusher=open_flusher)
        transport.on_unreachable = node.report_unreachable
        node.startService()
        self.nodes[node_id] = node
        return node

    def stop(self, node_id: str) -> None:
        node = self.nodes.pop(node_id)
        self.net.transports.pop(node_id, None)
        d = node.stopService()
        self.run(0.5)
        assert d.called, f"{node_id} did not stop"

    def add(self, node_id: str):
        """Start a new node with cluster.join = true (it is not a member yet)."""
        port = 7000 + int(node_id[1:])
        address = f"127.0.0.1:{port}"
        members = dict(self.members)
        members[node_id] = address
        return self.start(node_id, join=True, members=members), address

    def close(self) -> None:
        for node_id in list(self.nodes):
            self.stop(node_id)

    # -- time --------------------------------------------------------------------------

    def run(self, seconds: float, step: float = 0.05) -> None:
        steps = max(1, int(round(seconds / step)))
        for _ in range(steps):
            self.reactor.advance(step)

    def run_until(self, predicate, seconds: float = 30.0, what: str = "condition"):
        deadline = self.reactor.seconds() + seconds
        while self.reactor.seconds() < deadline:
            value = predicate()
            if value:
                return value
            self.reactor.advance(0.05)
        raise AssertionError(f"{what} not reached within {seconds} simulated seconds")

    def result(self, d: defer.Deferred, seconds: float = 30.0):
        box: list = []
        d.addBoth(box.append)
        self.run_until(lambda: box, seconds, "a result")
        if isinstance(box[0], Failure):
            box[0].raiseException()
        return box[0]

    # -- cluster questions -------------------------------------------------------------

    def leader(self) -> str | None:
        leaders = [n for n, node in self.nodes.items() if node.core.role == Role.Leader]
        return leaders[0] if len(leaders) == 1 else None

    def wait_leader(self, seconds: float = 30.0) -> str:
        return self.run_until(self.leader, seconds, "a leader")

    def write(self, node_id: str, *command: bytes):
        return self.result(self.nodes[node_id].write(list(command)))

    def write_many(self, node_id: str, count: int, prefix: bytes = b"k",
                   value: bytes = b"v" * 32, batch: int = 100) -> None:
        node = self.nodes[node_id]
        for start in range(0, count, batch):
            ds = [node.write([b"SET", prefix + b"%06d" % i, value])
                  for i in range(start, min(count, start + batch))]
            self.result(defer.gatherResults(ds))

    def admin(self, node_id: str, *args):
        return self.result(self.nodes[node_id].admin(
            [a.encode() if isinstance(a, str) else a for a in args]))

    def digest(self, node_id: str) -> tuple[int, list]:
        machine = self.nodes[node_id].machine
        keys = sorted(machine.query([b"KEYS", b"*"]))
        return len(keys), machine.query([b"MGET", *keys]) if keys else []

    def caught_up(self, *node_ids: str) -> bool:
        applied = [self.nodes[n].machine.last_applied for n in node_ids or self.nodes]
        return len(set(applied)) == 1

"""Loopback throughput of the peer transport: `python tests/peer/peer_transport_bench.py`.

Two PeerTransports in one process (so both ends share one core) over real mutual TLS on
127.0.0.1. The sender queues ``batch`` messages per reactor turn, as a leader draining a
Ready would, and waits for the receiver to have them all.
"""

import sys
import tempfile
import time
from pathlib import Path

from twisted.internet import defer, reactor, task

from kvraft import certs, tls
from kvraft.peer.transport import PeerTransport
from kvraft.raft.types import Entry, Message, MsgType


@defer.inlineCallbacks
def run(_reactor, pki: Path):
    received = []
    nodes = {}
    for node_id in ("n1", "n2"):
        credentials = tls.TLSCredentials(pki / "ca.pem", pki / f"{node_id}.pem",
                                         pki / f"{node_id}-key.pem")
        transport = PeerTransport(node_id, {}, credentials, received.append, reactor=reactor,
                                  cluster="bench")
        listener = transport.listener_service("tcp:0:interface=127.0.0.1")
        listener.startService()
        port = yield listener.when_listening()
        nodes[node_id] = (transport, listener, port.getHost().port)
    sender = nodes["n1"][0]
    sender.add_peer("n2", ("127.0.0.1", nodes["n2"][2]))
    sender.service.startService()
    while not sender.is_connected("n2"):
        yield task.deferLater(reactor, 0.01, lambda: None)

    # (name, message, how many, per reactor turn, most unacknowledged: Raft's flow control)
    cases = (
        ("heartbeat", Message(MsgType.MsgHeartbeat, to="n2", frm="n1", term=3, commit=99),
         100_000, 100, 1000),
        ("MsgApp 16 KiB", Message(MsgType.MsgApp, to="n2", frm="n1", term=3, index=7,
                                  entries=[Entry(3, 8, data=b"x" * 16384)]), 20_000, 16, 256),
        ("MsgApp 1 MiB", Message(MsgType.MsgApp, to="n2", frm="n1", term=3, index=7,
                                 entries=[Entry(3, 8 + i, data=b"x" * 16384)
                                          for i in range(64)]), 400, 2, 8),
    )
    for name, msg, count, batch, window in cases:
        received.clear()
        start = time.perf_counter()
        for sent in range(batch, count + 1, batch):
            sender.send_many([msg] * batch)
            yield task.deferLater(reactor, 0, lambda: None)  # one reactor turn per batch
            while sent - len(received) > window:
                yield task.deferLater(reactor, 0, lambda: None)
        while len(received) < count - sender.counters.drops.total():
            yield task.deferLater(reactor, 0.001, lambda: None)
        elapsed = time.perf_counter() - start
        payload = sum(len(e.data) for e in msg.entries)
        mib_s = len(received) * payload / elapsed / 2**20
        print(f"{name:>14}: {len(received) / elapsed:>9,.0f} msg/s ({mib_s:,.0f} MiB/s "
              f"payload), dropped {sender.counters.drops.total()}")
        sender.counters.drops.clear()
    yield sender.service.stopService()
    for _transport, listener, _port in nodes.values():
        yield listener.stopService()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        pki = Path(tmp)
        certs.init_ca(pki)
        certs.issue_node(pki, "n1")
        certs.issue_node(pki, "n2")
        task.react(run, [pki])
    sys.exit(0)

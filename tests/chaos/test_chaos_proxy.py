"""The link proxy: forwarding, delay and jitter, hold and reset partitions, flow control,
and the control protocol. In memory (MemoryReactorClock, StringTransport), plus one
test of the real proxy process over loopback sockets."""

import socket
import threading

import pytest
from twisted.internet.testing import MemoryReactorClock, StringTransport

from kvraft.testing.chaos import proxy
from kvraft.testing.chaos.proxy import HOLD, RESET, LinkProxy, ProxyProcess, ProxyServer


class Pair:
    """A proxied connection with both sides attached to StringTransports."""

    def __init__(self, link: LinkProxy, reactor: MemoryReactorClock, connect_up=True):
        self.reactor = reactor
        self.down = link.factory().buildProtocol(None)
        self.down_t = StringTransport()
        self.down.makeConnection(self.down_t)
        self.up = None
        self.up_t = StringTransport()
        if connect_up:
            self.connect_up()

    def connect_up(self):
        host, port, factory, timeout, _ = self.reactor.tcpClients[-1]
        self.up = factory.buildProtocol(None)
        self.up.makeConnection(self.up_t)


@pytest.fixture
def reactor():
    return MemoryReactorClock()


@pytest.fixture
def link(reactor):
    return LinkProxy("n1->n2", ("127.0.0.1", 7002), reactor)


def test_forwards_both_ways_to_the_target(link, reactor):
    pair = Pair(link, reactor)
    assert reactor.tcpClients[0][:2] == ("127.0.0.1", 7002)
    pair.down.dataReceived(b"hello")
    pair.up.dataReceived(b"world")
    assert pair.up_t.value() == b"hello"
    assert pair.down_t.value() == b"world"
    assert link.stats["bytes_forwarded"] == 10


def test_reads_nothing_from_the_dialer_until_the_target_answers(link, reactor):
    pair = Pair(link, reactor, connect_up=False)
    assert pair.down_t.producerState == "paused"
    pair.connect_up()
    assert pair.down_t.producerState == "producing"


def test_delay_holds_each_chunk_back(link, reactor):
    link.configure(delay_s=0.1)
    pair = Pair(link, reactor)
    pair.down.dataReceived(b"a")
    reactor.advance(0.05)
    assert pair.up_t.value() == b""
    reactor.advance(0.05)
    assert pair.up_t.value() == b"a"


def test_jitter_never_reorders_a_stream(reactor):
    link = LinkProxy("x", ("127.0.0.1", 1), reactor, __import__("random").Random(7))
    link.configure(delay_s=0.05, jitter_s=0.05)
    pair = Pair(link, reactor)
    chunks = [b"%03d," % i for i in range(200)]
    for chunk in chunks:
        pair.down.dataReceived(chunk)
        reactor.advance(0.001)
    reactor.advance(1.0)
    assert pair.up_t.value() == b"".join(chunks)


def test_hold_stops_reading_and_delivers_late_on_heal(link, reactor):
    pair = Pair(link, reactor)
    pair.down.dataReceived(b"before ")
    link.configure(blocked=True, mode=HOLD)
    assert pair.down_t.producerState == "paused"
    assert pair.up_t.producerState == "paused"
    # A chunk the transport had already read when the hold began waits too.
    pair.down.dataReceived(b"during")
    reactor.advance(5)
    assert pair.up_t.value() == b"before "
    link.configure(blocked=False)
    assert pair.up_t.value() == b"before during"
    assert pair.down_t.producerState == "producing"


def test_hold_accepts_new_connections_but_does_not_dial_until_heal(link, reactor):
    link.configure(blocked=True, mode=HOLD)
    pair = Pair(link, reactor, connect_up=False)
    assert reactor.tcpClients == []
    assert not pair.down_t.disconnecting
    link.configure(blocked=False)
    assert len(reactor.tcpClients) == 1


def test_reset_aborts_open_and_new_connections(link, reactor):
    pair = Pair(link, reactor)
    link.configure(blocked=True, mode=RESET)
    assert pair.down_t.disconnecting and pair.up_t.disconnecting
    assert link.stats["reset"] == 1
    late = Pair(link, reactor, connect_up=False)
    assert late.down_t.disconnecting
    assert link.connections == set()


def test_a_closing_side_flushes_what_it_sent_then_closes_the_other(link, reactor):
    link.configure(delay_s=0.2)
    pair = Pair(link, reactor)
    pair.down.dataReceived(b"last words")
    pair.down.connectionLost(None)
    assert not pair.up_t.disconnecting
    reactor.advance(0.2)
    assert pair.up_t.value() == b"last words"
    assert pair.up_t.disconnecting


def test_a_full_destination_pauses_the_source(link, reactor):
    pair = Pair(link, reactor)
    pair.up.pauseProducing()  # the up transport's send buffer is full
    assert pair.down_t.producerState == "paused"
    pair.up.resumeProducing()
    assert pair.down_t.producerState == "producing"


def test_a_long_delay_queue_pauses_the_source(link, reactor, monkeypatch):
    monkeypatch.setattr(proxy, "pipe_bytes_max", 100)
    link.configure(delay_s=1.0)
    pair = Pair(link, reactor)
    pair.down.dataReceived(b"x" * 101)
    assert pair.down_t.producerState == "paused"
    reactor.advance(1.0)
    assert pair.down_t.producerState == "producing"


def test_failed_dial_closes_the_dialers_connection(link, reactor):
    pair = Pair(link, reactor, connect_up=False)
    factory = reactor.tcpClients[0][2]
    factory.clientConnectionFailed(None, None)
    assert pair.down_t.disconnecting
    assert link.stats["upstream_failed"] == 1


def test_server_commands(reactor):
    server = ProxyServer(reactor, seed=1)
    port = server.handle({"op": "add", "name": "a->b", "target": ["127.0.0.1", 9]})
    assert port["ok"] and isinstance(port["port"], int)
    assert server.handle({"op": "set", "links": ["a->b"], "blocked": True, "mode": "reset",
                          "delay_ms": 30, "jitter_ms": 5}) == {"ok": True}
    stats = server.handle({"op": "stats"})["links"][0]
    assert (stats["blocked"], stats["mode"], stats["delay_ms"]) == (True, "reset", 30)
    assert server.handle({"op": "heal"}) == {"ok": True}
    assert server.handle({"op": "stats"})["links"][0]["blocked"] is False
    refused = server.handle({"op": "set", "links": ["nope"], "blocked": True})
    assert not refused["ok"] and "unknown link" in refused["error"]
    assert "unknown op" in server.handle({"op": "explode"})["error"]
    assert "mode must be" in server.handle({"op": "set", "mode": "teleport"})["error"]


def _echo_server():
    """A loopback echo server on a thread; returns (port, stop)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)

    def serve():
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener.getsockname()[1], listener


def _recv_exactly(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def test_proxy_process_forwards_holds_and_heals(tmp_path):
    port, listener = _echo_server()
    p = ProxyProcess(seed=3, log_path=tmp_path / "proxy.log")
    try:
        front = p.add("a->b", ("127.0.0.1", port))
        with socket.create_connection(("127.0.0.1", front), timeout=10) as s:
            s.sendall(b"ping")
            assert _recv_exactly(s, 4) == b"ping"
            p.set(["a->b"], blocked=True, mode="hold")
            s.sendall(b"held")
            s.settimeout(0.3)
            with pytest.raises(TimeoutError):
                s.recv(4)  # nothing may come back while the link holds
            s.settimeout(10)
            p.heal()
            assert _recv_exactly(s, 4) == b"held"
        assert p.stats()[0]["accepted"] == 1
        with pytest.raises(proxy.ProxyError, match="unknown link"):
            p.set(["nope"], blocked=True)
    finally:
        p.close()
        listener.close()
    assert p.process.returncode == 0

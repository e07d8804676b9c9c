"""kvraft.reactor: the epoll reactor without a logging context per ready descriptor."""

import socket
import subprocess
import sys
import time

import pytest
from twisted.internet import protocol
from twisted.logger import globalLogPublisher

from kvraft.reactor import MULTIPLEXING_API, KvraftReactor, multiplexing_api

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="epoll")


class Echo(protocol.Protocol):
    def dataReceived(self, data):
        self.transport.write(data.upper())


@pytest.fixture
def kv_reactor():
    reactor = KvraftReactor()
    yield reactor
    reactor.removeAll()
    for reader in list(reactor._internalReaders):
        reactor.removeReader(reader)
        reader.connectionLost(None)


def iterate_until(reactor, predicate, timeout_s=5.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        reactor.iterate(0.01)
        result = predicate()
        if result:
            return result
    raise AssertionError("condition not reached")


def test_serves_tcp_connections_like_the_epoll_reactor(kv_reactor):
    factory = protocol.Factory.forProtocol(Echo)
    port = kv_reactor.listenTCP(0, factory, interface="127.0.0.1")
    try:
        client = socket.create_connection(("127.0.0.1", port.getHost().port))
        client.setblocking(False)
        received = bytearray()

        def reply():
            try:
                received.extend(client.recv(100))
            except BlockingIOError:
                pass
            return bytes(received) == b"PING\r\nPING\r\n"

        client.sendall(b"ping\r\n")
        iterate_until(kv_reactor, lambda: reply() or bytes(received) == b"PING\r\n")
        client.sendall(b"ping\r\n")
        iterate_until(kv_reactor, reply)
        client.close()
    finally:
        port.stopListening()


class Exploding:
    """A reader whose handlers raise: what callWithLogger used to catch."""

    def __init__(self, sock):
        self.sock = sock
        self.read = False

    def fileno(self):
        return self.sock.fileno()

    def logPrefix(self):
        return "exploding"

    def doRead(self):
        self.read = True
        raise RuntimeError("doRead blew up")

    def connectionLost(self, reason):
        raise RuntimeError("connectionLost blew up too")


class Counting:
    def __init__(self, sock):
        self.sock = sock
        self.reads = 0

    def fileno(self):
        return self.sock.fileno()

    def logPrefix(self):
        return "counting"

    def doRead(self):
        self.reads += 1
        self.sock.recv(100)

    def connectionLost(self, reason):
        pass


def test_an_error_escaping_a_handler_is_logged_and_the_loop_goes_on(kv_reactor):
    events = []
    globalLogPublisher.addObserver(events.append)
    a_out, a_in = socket.socketpair()
    b_out, b_in = socket.socketpair()
    try:
        bad, good = Exploding(a_in), Counting(b_in)
        kv_reactor.addReader(bad)
        kv_reactor.addReader(good)
        a_out.send(b"x")
        b_out.send(b"y")
        iterate_until(kv_reactor, lambda: bad.read and good.reads)
        b_out.send(b"z")
        iterate_until(kv_reactor, lambda: good.reads == 2)
    finally:
        globalLogPublisher.removeObserver(events.append)
        kv_reactor.removeAll()
        for s in (a_out, a_in, b_out, b_in):
            s.close()
    failures = [e for e in events if e.get("log_namespace") == "kvraft.reactor"]
    assert failures and "connectionLost blew up too" in str(failures[0]["log_failure"].value)
    assert bad not in kv_reactor.getReaders()


def test_multiplexing_api_names_the_loop(kv_reactor):
    assert multiplexing_api(kv_reactor) == MULTIPLEXING_API == "kvraft-epoll"
    from twisted.internet.epollreactor import EPollReactor
    assert multiplexing_api(EPollReactor.__new__(EPollReactor)) == "epoll"


def run_python(code):
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_installed_only_when_no_reactor_was_chosen():
    assert run_python(
        "from kvraft import reactor as r\n"
        "print(r.install_unless_chosen(), r.install_unless_chosen())\n"
        "from twisted.internet import reactor\n"
        "print(type(reactor).__name__)\n") == ["True", "False", "KvraftReactor"]
    assert run_python(
        "from twisted.internet import reactor\n"
        "from kvraft import reactor as r\n"
        "print(r.install_unless_chosen(), type(reactor).__name__)\n") == [
            "False", "EPollReactor"]


def test_twistd_finds_it_by_name():
    assert run_python(
        "from twisted.application import reactors\n"
        "print(sorted(t.shortName for t in reactors.getReactorTypes()"
        " if t.shortName == 'kvraft'))\n"
        "reactors.installReactor('kvraft')\n"
        "from twisted.internet import reactor\n"
        "print(type(reactor).__name__)\n") == ["['kvraft']", "KvraftReactor"]


class Spy(protocol.Protocol):
    """Echoes in upper case, then writes ``extra`` and, if ``close``, hangs up."""

    extra = b""
    close = False

    def connectionMade(self):
        self.factory.connections.append(self)

    def dataReceived(self, data):
        self.transport.write(data.upper())
        self.transport.write(self.extra)
        if self.close:
            self.transport.loseConnection()


def serve(reactor, **attributes):
    factory = protocol.Factory.forProtocol(Spy)
    factory.connections = []
    for name, value in attributes.items():
        setattr(Spy, name, value)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    client = socket.create_connection(("127.0.0.1", port.getHost().port))
    client.setblocking(False)
    iterate_until(reactor, lambda: factory.connections)
    return port, client, factory.connections[0]


def drain(reactor, client, want: int, timeout_s=10.0) -> bytes:
    got = bytearray()

    def more():
        try:
            chunk = client.recv(1 << 20)
        except BlockingIOError:
            return False
        if not chunk:
            return True
        got.extend(chunk)
        return len(got) >= want
    iterate_until(reactor, more, timeout_s)
    return bytes(got)


@pytest.fixture
def spy_defaults():
    yield
    Spy.extra, Spy.close = b"", False


def test_small_writes_leave_without_epoll_ever_watching_the_socket(kv_reactor, spy_defaults,
                                                                   monkeypatch):
    from twisted.internet.epollreactor import EPollReactor
    port, client, server = serve(kv_reactor, extra=b"!")
    watched = []
    real_add = EPollReactor.addWriter
    monkeypatch.setattr(EPollReactor, "addWriter",
                        lambda self, w: (watched.append(w), real_add(self, w)))
    try:
        for _ in range(3):
            client.sendall(b"ping")
            assert drain(kv_reactor, client, 5) == b"PING!"  # two writes, one reply
        assert watched == [] and not kv_reactor._writes
        assert server.transport not in kv_reactor.getWriters()
    finally:
        client.close()
        port.stopListening()


def test_a_write_the_kernel_cannot_take_at_once_is_watched_until_sent(kv_reactor,
                                                                      spy_defaults):
    big = b"x" * (16 << 20)  # far beyond loopback socket buffers
    port, client, server = serve(kv_reactor, extra=big)
    try:
        client.sendall(b"go")
        iterate_until(kv_reactor, lambda: kv_reactor._writes)  # now epoll watches it
        assert server.transport in kv_reactor.getWriters()
        data = drain(kv_reactor, client, 2 + len(big), timeout_s=30)
        assert data == b"GO" + big
        iterate_until(kv_reactor, lambda: not kv_reactor._writes)
    finally:
        client.close()
        port.stopListening()


def test_lose_connection_after_a_write_sends_it_then_closes(kv_reactor, spy_defaults):
    port, client, server = serve(kv_reactor, close=True)
    try:
        client.sendall(b"bye")
        got = bytearray()

        def closed():
            try:
                chunk = client.recv(100)
            except BlockingIOError:
                return False
            got.extend(chunk)
            return chunk == b""
        iterate_until(kv_reactor, closed)
        assert bytes(got) == b"BYE"
        assert not server.transport.connected
    finally:
        client.close()
        port.stopListening()


def test_remove_all_includes_writers_not_yet_flushed(kv_reactor, spy_defaults):
    port, client, server = serve(kv_reactor)
    try:
        server.transport.write(b"pending")  # noted, not flushed: no iteration ran
        assert server.transport in kv_reactor.getWriters()
        removed = kv_reactor.removeAll()
        assert server.transport in removed and kv_reactor.getWriters() == []
    finally:
        client.close()
        port.stopListening()


class Chained:
    """A writer whose write makes another writer write (as a handler may)."""

    def __init__(self, reactor, sock, then=None):
        self.reactor, self.sock, self.then, self.writes = reactor, sock, then, 0

    def fileno(self):
        return self.sock.fileno()

    def logPrefix(self):
        return "chained"

    def doWrite(self):
        self.writes += 1
        self.reactor.removeWriter(self)
        if self.then is not None:
            self.reactor.addWriter(self.then)

    def connectionLost(self, reason):
        pass


def test_a_write_that_asks_for_another_does_not_wait_for_the_poll_timeout(kv_reactor):
    a_out, a_in = socket.socketpair()
    b_out, b_in = socket.socketpair()
    try:
        second = Chained(kv_reactor, b_in)
        first = Chained(kv_reactor, a_in, then=second)
        kv_reactor.addWriter(first)
        started = time.monotonic()
        kv_reactor.doPoll(5.0)  # would block 5 s if the chained write waited for events
        assert first.writes == 1 and second.writes == 1
        assert time.monotonic() - started < 2.0
    finally:
        kv_reactor.removeAll()
        for s in (a_out, a_in, b_out, b_in):
            s.close()

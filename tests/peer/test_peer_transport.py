"""PeerTransport end to end: real mutual TLS over loopback sockets (127.0.0.1, port 0).

Every wait polls with a deadline (``wait_for``) or carries a timeout; nothing sleeps.
Reconnect backoff is shortened (50 ms .. 200 ms) so restarts resolve quickly.
"""

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet import ssl as twisted_ssl
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, wrapClientTLS
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from kvraft.peer import codec
from kvraft.peer.codec import FrameBuffer, Hello, encode_hello, encode_message
from kvraft.peer.transport import PeerTransport, frame_bytes_max_default
from kvraft.raft.types import Entry, Message, MsgType

CLUSTER = "test"
wait_s = 5.0  # the most any condition below may take before the test fails


@inlineCallbacks
def wait_for(predicate, what: str, timeout_s: float = wait_s):
    """Poll ``predicate`` every 10 ms until it is true; fail after ``timeout_s``."""
    deadline = reactor.seconds() + timeout_s
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        yield deferLater(reactor, 0.01, lambda: None)


class LiveNode:
    """A PeerTransport and its listener on 127.0.0.1, recording what it receives."""

    def __init__(self, pki, node_id, credentials=None, port=0, cluster=CLUSTER, **kwargs):
        self.node_id = node_id
        self.received: list[Message] = []
        self.unreachable: list[str] = []
        self.transport = PeerTransport(
            node_id, {}, credentials or pki.credentials(node_id), self.received.append,
            reactor=reactor, on_unreachable=self.unreachable.append, cluster=cluster,
            backoff_initial_s=0.05, backoff_max_s=0.2, **kwargs)
        self.counters = self.transport.counters
        self.listener = self.transport.listener_service(("127.0.0.1", port))
        self.port = None

    @inlineCallbacks
    def start(self):
        self.listener.startService()
        port = yield self.listener.when_listening()
        self.port = port.getHost().port
        self.transport.service.startService()

    def dial(self, other: "LiveNode", as_id: str | None = None):
        self.transport.add_peer(as_id or other.node_id, ("127.0.0.1", other.port))

    @inlineCallbacks
    def stop(self):
        if self.transport.service.running:
            yield self.transport.service.stopService()
        if self.listener.running:
            yield self.listener.stopService()


@pytest.fixture
def nodes(pki):
    """Make LiveNodes with ``nodes(id, ...)``; all are stopped after the test."""
    made: list[LiveNode] = []

    def make(node_id, **kwargs):
        node = LiveNode(pki, node_id, **kwargs)
        made.append(node)
        return node

    yield make
    for node in made:
        pytest_twisted.blockon(node.stop())


@inlineCallbacks
def started(*live):
    for node in live:
        yield node.start()


def heartbeat(frm, to, commit=0) -> Message:
    return Message(MsgType.MsgHeartbeat, to=to, frm=frm, term=1, commit=commit)


@implementer(IHandshakeListener)
class RawPeer(Protocol):
    """A hand-driven peer: writes ``script`` once TLS is up and ``then`` once the other
    side answers; records what comes back."""

    def __init__(self, script: list[bytes], then: list[bytes] = ()):
        self.script = script
        self.then = list(then)
        self.data = b""
        self.lost = None

    def handshakeCompleted(self):
        for chunk in self.script:
            self.transport.write(chunk)

    def dataReceived(self, data):
        self.data += data
        then, self.then = self.then, []
        for chunk in then:
            self.transport.write(chunk)

    def connectionLost(self, reason):
        self.lost = reason


@inlineCallbacks
def raw_connect(port, creator, script, then=()):
    peer = RawPeer(script, then)
    endpoint = wrapClientTLS(creator, TCP4ClientEndpoint(reactor, "127.0.0.1", port,
                                                         timeout=wait_s))
    yield endpoint.connect(Factory.forProtocol(lambda: peer)).addTimeout(wait_s, reactor)
    return peer


@inlineCallbacks
def assert_serves(listener: LiveNode, sender: LiveNode):
    """``sender`` reaches ``listener``: a message arrives within the deadline."""
    msg = heartbeat(sender.node_id, listener.node_id, commit=4242)
    yield wait_for(lambda: sender.transport.is_connected(listener.node_id),
                   f"{sender.node_id}'s link to {listener.node_id}")
    sender.transport.send(msg)
    yield wait_for(lambda: msg in listener.received, f"{listener.node_id} to receive")


# -- the happy path ---------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_two_nodes_exchange_messages_both_ways(nodes):
    n1, n2 = nodes("n1"), nodes("n2")
    yield started(n1, n2)
    n1.dial(n2)
    n2.dial(n1)
    yield wait_for(lambda: n1.transport.is_connected("n2") and n2.transport.is_connected("n1"),
                   "both links")
    big = Message(MsgType.MsgApp, to="n2", frm="n1", term=1, index=0, commit=0,
                  entries=[Entry(1, 1, data=b"b" * 16384)])
    n1.transport.send_many([heartbeat("n1", "n2", 1), big, heartbeat("n1", "n2", 2)])
    n2.transport.send(heartbeat("n2", "n1", 9))
    yield wait_for(lambda: len(n2.received) == 3 and len(n1.received) == 1, "deliveries")
    assert n2.received == [heartbeat("n1", "n2", 1), big, heartbeat("n1", "n2", 2)]
    assert n1.received == [heartbeat("n2", "n1", 9)]
    assert n1.counters.peer("n2").frames_sent == 3
    assert n2.counters.peer("n1").frames_received == 3
    assert n1.counters.peer("n2").bytes_sent == n2.counters.peer("n1").bytes_received
    assert n1.transport.connected_from() == {"n2"}
    for node in (n1, n2):
        assert not node.counters.handshake_failures and not node.counters.bad_frames


# -- refusals on the listener -------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_listener_refuses_a_client_without_certificate(nodes, pki):
    n1, n2 = nodes("n1"), nodes("n2")
    yield started(n1, n2)
    anonymous = twisted_ssl.optionsForClientTLS(
        "n1", trustRoot=twisted_ssl.Certificate.loadPEM(pki.ca.read_bytes()))
    raw = yield raw_connect(n1.port, anonymous, [encode_hello("n2", CLUSTER)])
    yield wait_for(lambda: raw.lost is not None, "the anonymous link to close")
    yield wait_for(lambda: n1.counters.handshake_failures["no certificate"] == 1, "the count")
    assert not raw.data  # no hello, nothing, came back
    n2.dial(n1)
    yield assert_serves(n1, n2)


@pytest_twisted.inlineCallbacks
def test_listener_refuses_a_certificate_from_another_ca(nodes, pki):
    n1, n2 = nodes("n1"), nodes("n2")
    intruder = nodes("n2", credentials=pki.credentials("n2", pki.other,
                                                        ca=pki.base / "both-cas.pem"))
    yield started(n1, n2, intruder)
    intruder.dial(n1)
    yield wait_for(lambda: n1.counters.handshake_failures["unknown CA"] >= 1, "the refusal")
    yield wait_for(lambda: intruder.counters.refused_by_peer["unknown CA"] >= 1,
                   "the intruder to learn why")
    assert not intruder.transport.is_connected("n1") and n1.received == []
    n2.dial(n1)
    yield assert_serves(n1, n2)


@pytest_twisted.inlineCallbacks
def test_listener_refuses_an_expired_certificate(nodes, pki):
    n1, n2 = nodes("n1"), nodes("n2")
    stale = nodes("n2", credentials=pki.credentials("n2", pki.base / "expired",
                                                    check_validity=False))
    yield started(n1, n2, stale)
    stale.dial(n1)
    yield wait_for(lambda: n1.counters.handshake_failures["expired"] >= 1, "the refusal")
    stale.transport.send(heartbeat("n2", "n1"))
    assert stale.counters.drops["link down"] == 1 and stale.unreachable == ["n1"]
    n2.dial(n1)
    yield assert_serves(n1, n2)
    assert n1.received == [heartbeat("n2", "n1", 4242)]


@pytest_twisted.inlineCallbacks
def test_listener_refuses_a_valid_certificate_claiming_another_node(nodes, pki):
    n1, n2 = nodes("n1"), nodes("n2")
    yield started(n1, n2)
    # n3's genuine certificate, but its hello says n2: it must not speak for n2.
    impostor = pki.credentials("n3").peer_client_creator("n1")
    raw = yield raw_connect(n1.port, impostor, [
        encode_hello("n2", CLUSTER), encode_message(heartbeat("n2", "n1", 666))])
    yield wait_for(lambda: raw.lost is not None, "the impostor's link to close")
    assert n1.counters.handshake_failures["wrong identity"] == 1
    assert n1.received == [] and not raw.data
    n2.dial(n1)
    yield assert_serves(n1, n2)


@pytest_twisted.inlineCallbacks
def test_dialer_refuses_a_server_that_is_not_the_node_it_dialed(nodes):
    n1, n3 = nodes("n1"), nodes("n3")
    yield started(n1, n3)
    n1.dial(n3, as_id="n2")  # the address for n2 is really n3's
    yield wait_for(lambda: n1.counters.handshake_failures["wrong identity"] >= 1, "refusal")
    assert not n1.transport.is_connected("n2")
    # n3 hears n1's alert: its certificate was refused as the wrong identity.
    yield wait_for(lambda: n3.counters.refused_by_peer["wrong identity"] >= 1, "n3's view")


@pytest_twisted.inlineCallbacks
def test_listener_refuses_a_node_of_another_cluster(nodes):
    n1, n2 = nodes("n1"), nodes("n2")
    stranger = nodes("n2", cluster="staging")
    yield started(n1, n2, stranger)
    stranger.dial(n1)
    yield wait_for(lambda: n1.counters.handshake_failures["wrong cluster"] >= 1, "refusal")
    yield wait_for(lambda: stranger.counters.refused_by_peer["handshake failed"] >= 1,
                   "the stranger to count the refusal")
    assert not stranger.transport.is_connected("n1")
    n2.dial(n1)
    yield assert_serves(n1, n2)


# -- bad frames close only their link ------------------------------------------------------


@pytest.mark.parametrize("garbage, kind", [
    (codec.frame(b"\xc1\xc1"), "malformed"),
    (codec.frame(b"\x81\xa1v\x07"), "unknown version"),
    ((frame_bytes_max_default + 1).to_bytes(4, "big"), "oversized"),
])
@pytest_twisted.inlineCallbacks
def test_a_bad_frame_closes_only_that_link(nodes, pki, garbage, kind):
    n1, n3 = nodes("n1"), nodes("n3")
    yield started(n1, n3)
    n3.dial(n1)
    yield assert_serves(n1, n3)
    raw = yield raw_connect(n1.port, pki.credentials("n2").peer_client_creator("n1"),
                            [encode_hello("n2", CLUSTER)], then=[garbage])
    yield wait_for(lambda: raw.lost is not None, "the bad link to close")
    assert n1.counters.bad_frames == {kind: 1}
    # The link was open (n1 said hello back) when the bad frame arrived.
    assert [codec.decode_body(b) for b in FrameBuffer(4096).feed(raw.data)] == [
        Hello("n1", CLUSTER)]
    # n3's link never noticed.
    msg = heartbeat("n3", "n1", 77)
    n3.transport.send(msg)
    yield wait_for(lambda: msg in n1.received, "n3's message after the bad frame")
    assert n3.counters.peer("n1").links_opened == 1


# -- restarts -----------------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_reconnects_with_backoff_after_the_peer_restarts(nodes):
    n1, n2 = nodes("n1"), nodes("n2")
    yield started(n1, n2)
    n1.dial(n2)
    yield assert_serves(n2, n1)
    port = n2.port

    yield n2.stop()
    yield wait_for(lambda: not n1.transport.is_connected("n2"), "n1 to notice")
    assert "n2" in n1.unreachable
    n1.transport.send(heartbeat("n1", "n2", 1))
    assert n1.counters.drops["link down"] >= 1

    restarted = nodes("n2", port=port)
    yield restarted.start()
    yield assert_serves(restarted, n1)
    assert n1.counters.peer("n2").links_opened == 2


@implementer(IHandshakeListener)
class FrozenPeer(Protocol):
    """Completes TLS, then stops reading: a peer process that hung (SIGSTOP, GC pause)."""

    connected = 0

    def handshakeCompleted(self):
        FrozenPeer.connected += 1
        self.transport.pauseProducing()


@pytest_twisted.inlineCallbacks
def test_stopping_does_not_wait_for_a_hung_peer(nodes, pki):
    n1 = nodes("n1")
    yield n1.start()
    FrozenPeer.connected = 0
    server = TLSMemoryBIOFactory(pki.credentials("n2").server_creator(), False,
                                 Factory.forProtocol(FrozenPeer), clock=reactor)
    port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(server)
    try:
        n1.transport.add_peer("n2", ("127.0.0.1", port.getHost().port))
        yield wait_for(lambda: FrozenPeer.connected == 1, "n1 to reach the frozen peer")
        # n1's hello sits unread; its link is still waiting for the peer's hello.
        yield n1.transport.service.stopService().addTimeout(2.0, reactor)
        assert not n1.transport.is_connected("n2")
    finally:
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_stopping_closes_links_without_reporting_peers_unreachable(nodes):
    n1, n2 = nodes("n1"), nodes("n2")
    yield started(n1, n2)
    n1.dial(n2)
    yield assert_serves(n2, n1)
    yield n1.transport.service.stopService()
    yield wait_for(lambda: n2.transport.connected_from() == set(), "n2 to see it go")
    assert n1.unreachable == [] and not n1.transport.is_connected("n2")

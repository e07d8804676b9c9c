"""PeerLink and PeerTransport logic on fake transports: hello, checks, queues, counters.

No sockets, no global reactor: a MemoryReactorClock stands in for the reactor (it
records the ClientServices' connection attempts and never completes them) and links
are driven by hand over in-memory transports. TLS itself is covered by test_tls.py and,
end to end, by test_peer_transport.py.
"""

import pytest
from twisted.internet.error import ConnectionLost
from twisted.internet.testing import MemoryReactorClock, StringTransportWithDisconnection
from twisted.python.failure import Failure

from kvraft import tls
from kvraft.peer import codec
from kvraft.peer.codec import FrameBuffer, Hello, encode_hello, encode_message
from kvraft.peer.protocol import PeerLink, hello_bytes_max
from kvraft.peer.transport import PeerTransport
from kvraft.raft.types import ConfState, Entry, Message, MsgType, Snapshot, SnapshotMetadata

CLUSTER = "test"


class LinkTransport(StringTransportWithDisconnection):
    """An in-memory transport that counts writes and reports aborts as connection loss."""

    def __init__(self):
        super().__init__()
        self.writes = 0
        self.aborted = False

    def write(self, data):
        self.writes += 1
        super().write(data)

    def abortConnection(self):
        self.aborted = True
        if self.connected:
            self.connected = False
            self.protocol.connectionLost(Failure(ConnectionLost("aborted")))


class Node:
    """A PeerTransport for node n1 on a fake reactor, with what it received and reported."""

    def __init__(self, pki, **kwargs):
        self.reactor = MemoryReactorClock()
        self.received: list[Message] = []
        self.unreachable: list[str] = []
        kwargs.setdefault("peers", {"n2": ("127.0.0.1", 7002), "n3": ("127.0.0.1", 7003)})
        self.transport = PeerTransport(
            "n1", kwargs.pop("peers"), pki.credentials("n1"), self.received.append,
            reactor=self.reactor, on_unreachable=self.unreachable.append, cluster=CLUSTER,
            **kwargs)
        self.transport.service.startService()
        self.counters = self.transport.counters

    def dial(self, peer: str, answer: bool = True) -> tuple[PeerLink, LinkTransport]:
        """An outgoing link to ``peer``, opened by the peer's hello unless not ``answer``."""
        link = _dialed_link(self.transport, peer)
        wire = connect(link)
        if answer:
            link.dataReceived(encode_hello(peer, CLUSTER))
        return link, wire

    def accept(self, identity_ok: bool = True) -> tuple[PeerLink, LinkTransport]:
        """An incoming link, before its hello; the certificate check is stubbed."""
        self.transport.check_identity = (
            lambda link, claimed: None if identity_ok else tls.WRONG_IDENTITY)
        from kvraft.peer.transport import _LinkFactory
        link = _LinkFactory(self.transport, None).buildProtocol(None)
        return link, connect(link)


def _dialed_link(transport: PeerTransport, peer: str) -> PeerLink:
    from kvraft.peer.transport import _LinkFactory
    return _LinkFactory(transport, transport._outbound[peer]).buildProtocol(None)


def connect(link: PeerLink) -> LinkTransport:
    wire = LinkTransport()
    wire.protocol = link
    link.makeConnection(wire)
    return wire


def frames(wire: LinkTransport) -> list:
    return [codec.decode_body(b) for b in FrameBuffer(1 << 30).feed(wire.value())]


def hb(to="n2", frm="n1", **fields) -> Message:
    return Message(MsgType.MsgHeartbeat, to=to, frm=frm, term=2, **fields)


@pytest.fixture
def node(pki):
    return Node(pki)


# -- dialing ----------------------------------------------------------------------------


def test_dialer_says_hello_and_opens_on_the_peers_hello(node):
    link, wire = node.dial("n2", answer=False)
    assert frames(wire) == [Hello("n1", CLUSTER)]
    assert not node.transport.is_connected("n2")
    link.dataReceived(encode_hello("n2", CLUSTER))
    assert link.is_open and node.transport.is_connected("n2")
    assert node.counters.peer("n2").links_opened == 1
    assert wire.producer is link  # flow control is wired up


def test_frames_sent_in_one_turn_leave_in_one_write(node):
    link, wire = node.dial("n2")
    wire.clear()
    writes = wire.writes
    node.transport.send_many([hb(commit=i) for i in range(3)])
    assert wire.value() == b""  # nothing until the reactor turn ends
    node.reactor.advance(0)
    assert wire.writes == writes + 1
    assert [m.commit for m in frames(wire)] == [0, 1, 2]
    assert node.counters.peer("n2").frames_sent == 3
    assert node.counters.peer("n2").bytes_sent == len(wire.value())


def test_flush_writes_at_once(node):
    link, wire = node.dial("n2")
    wire.clear()
    node.transport.send(hb(commit=7))
    node.transport.flush()
    assert [m.commit for m in frames(wire)] == [7]
    node.reactor.advance(0)
    assert len(frames(wire)) == 1  # the scheduled flush was cancelled, nothing twice


def test_messages_to_a_down_link_are_dropped_and_reported_rate_limited(node):
    node.transport.send(hb(to="n3"))
    node.transport.send(hb(to="n3"))
    assert node.counters.drops["link down"] == 2
    assert node.counters.peer("n3").frames_dropped == 2
    assert node.unreachable == ["n3"]
    node.reactor.advance(node.transport.unreachable_interval_s)
    node.transport.send(hb(to="n3"))
    assert node.unreachable == ["n3", "n3"]


def test_messages_to_an_unknown_peer_are_dropped(node):
    node.transport.send(hb(to="n9"))
    assert node.counters.drops["unknown peer"] == 1
    assert node.unreachable == ["n9"]


def test_programmer_errors_raise(node):
    with pytest.raises(ValueError, match="must not be sent"):
        node.transport.send(Message(MsgType.MsgHup, to="n2", frm="n1"))
    with pytest.raises(ValueError, match="must not be sent"):
        node.transport.send(hb(to="n1"))


def test_a_full_queue_drops_and_a_drained_transport_flushes(pki):
    node = Node(pki, frame_bytes_max=4096, queue_bytes_max=8192)
    link, wire = node.dial("n2")
    wire.clear()
    link.pauseProducing()  # the TCP buffer is full
    big = [Message(MsgType.MsgApp, to="n2", frm="n1", term=2, index=i,
                   entries=[Entry(2, i + 1, data=b"x" * 3000)]) for i in range(4)]
    node.transport.send_many(big)
    node.reactor.advance(0)
    assert wire.value() == b""  # paused: queued, not written
    assert node.counters.drops["queue full"] == 2  # two 3 KiB frames fit in 8 KiB
    assert node.unreachable == ["n2"]
    link.resumeProducing()
    assert [m.index for m in frames(wire)] == [0, 1]
    assert node.transport._outbound["n2"].pending_bytes == 0


def test_a_message_over_frame_bytes_max_is_dropped_not_sent(pki):
    node = Node(pki, frame_bytes_max=4096, queue_bytes_max=65536)
    link, wire = node.dial("n2")
    wire.clear()
    node.transport.send(Message(MsgType.MsgApp, to="n2", frm="n1", term=2,
                                entries=[Entry(2, 1, data=b"x" * 5000)]))
    node.reactor.advance(0)
    assert wire.value() == b"" and node.counters.drops["oversized"] == 1
    assert link.is_open


def test_a_lost_link_drops_its_queue_and_reports_the_peer(node):
    link, wire = node.dial("n2")
    node.transport.send(hb())
    wire.abortConnection()
    assert not node.transport.is_connected("n2")
    assert node.counters.drops["link down"] == 1
    assert node.unreachable == ["n2"]
    node.reactor.advance(0)  # the scheduled flush finds nothing to write


def snap(to="n2") -> Message:
    return Message(MsgType.MsgSnap, to=to, frm="n1", term=2, snapshot=Snapshot(
        SnapshotMetadata(index=10, term=2, conf_state=ConfState(voters=("n1", "n2"))),
        b"image"))


def test_snapshot_status_is_reported_once_per_msgsnap(node):
    statuses = []
    node.transport.on_snapshot_status = lambda peer, ok: statuses.append((peer, ok))
    link, wire = node.dial("n2")
    node.transport.send(snap())
    assert statuses == []  # queued, not yet written
    node.reactor.advance(0)
    assert statuses == [("n2", True)]
    node.transport.send(snap("n3"))  # no link to n3
    assert statuses[-1] == ("n3", False)
    node.transport.send_many([snap(), hb()])
    wire.abortConnection()  # the queued snapshot never left
    assert statuses[-1] == ("n2", False) and len(statuses) == 3


def test_refused_connections_back_off_exponentially(node):
    # ClientService sees a connection refused after TCP connect as a success (attempt 1);
    # the transport's own failure count must still grow the delay.
    out = node.transport._outbound["n2"]
    initial = node.transport.backoff_initial_s
    for failures in range(1, 5):
        link, wire = node.dial("n2", answer=False)
        wire.abortConnection()  # closed before the hello exchange: a failed attempt
        assert out.failures == failures
        base = initial * 2 ** (failures - 1)
        assert base <= node.transport._retry_delay(out, 1) <= base * 1.25
    out.failures = 100
    assert node.transport._retry_delay(out, 1) <= node.transport.backoff_max_s * 1.25
    node.dial("n2")  # success resets the count
    assert out.failures == 0
    assert node.transport._retry_delay(out, 1) <= initial * 1.25


def test_the_dialer_refuses_a_peer_that_names_another_node(node):
    link, wire = node.dial("n2", answer=False)
    link.dataReceived(encode_hello("n3", CLUSTER))
    assert wire.aborted and not node.transport.is_connected("n2")
    assert node.counters.handshake_failures["wrong identity"] == 1


# -- accepting --------------------------------------------------------------------------


def test_acceptor_answers_a_good_hello_and_delivers_messages(node):
    link, wire = node.accept()
    link.dataReceived(encode_hello("n2", CLUSTER))
    assert link.is_open and link.peer_id == "n2"
    assert frames(wire) == [Hello("n1", CLUSTER)]
    assert node.transport.connected_from() == {"n2"}
    sent = [hb(to="n1", frm="n2", commit=i) for i in range(3)]
    stream = b"".join(encode_message(m) for m in sent)
    for i in range(0, len(stream), 5):  # frames split across reads
        link.dataReceived(stream[i:i + 5])
    assert node.received == sent
    assert node.counters.peer("n2").frames_received == 3
    assert node.counters.peer("n2").bytes_received == len(stream)


@pytest.mark.parametrize("hello, reason", [
    (encode_hello("n2", "prod"), "wrong cluster"),
    (encode_hello("n1", CLUSTER), "wrong identity"),  # a peer claiming to be us
])
def test_acceptor_refuses_bad_hellos(node, hello, reason):
    link, wire = node.accept()
    link.dataReceived(hello)
    assert wire.aborted and not link.is_open
    assert node.counters.handshake_failures == {reason: 1}
    assert frames(wire) == []  # it never said hello back


def test_acceptor_refuses_a_certificate_for_another_node(node):
    link, wire = node.accept(identity_ok=False)
    link.dataReceived(encode_hello("n2", CLUSTER))
    assert wire.aborted
    assert node.counters.handshake_failures == {"wrong identity": 1}


def test_real_identity_check_needs_a_certificate(node):
    link, wire = node.accept()
    del node.transport.check_identity  # back to the real check: no TLS, no certificate
    link.dataReceived(encode_hello("n2", CLUSTER))
    assert node.counters.handshake_failures == {"no certificate": 1}


def test_silence_is_refused_after_the_hello_timeout(node):
    link, wire = node.accept()
    node.reactor.advance(node.transport.hello_timeout_s - 0.1)
    assert not wire.aborted
    node.reactor.advance(0.2)
    assert wire.aborted
    assert node.counters.handshake_failures == {"hello timeout": 1}


def test_the_hello_timer_stops_once_open(node):
    link, wire = node.accept()
    timers = [c for c in node.reactor.getDelayedCalls() if c.func == link._hello_timed_out]
    assert len(timers) == 1
    link.dataReceived(encode_hello("n2", CLUSTER))
    assert not timers[0].active()  # cancelled, not merely ignored when it fires
    node.reactor.advance(node.transport.hello_timeout_s * 2)
    assert link.is_open and not wire.aborted


def open_accepted(node):
    link, wire = node.accept()
    link.dataReceived(encode_hello("n2", CLUSTER))
    return link, wire


@pytest.mark.parametrize("data, kind", [
    (codec.frame(b"\xc1"), "malformed"),
    (codec.frame(b"\x81\xa1v\x02"), "unknown version"),  # {"v": 2}
    (encode_hello("n2", CLUSTER), "unexpected hello"),
    (encode_message(hb(to="n1", frm="n3")), "wrong sender"),
    (encode_message(hb(to="n3", frm="n2")), "misrouted"),
    ((codec.frame_body_bytes_limit).to_bytes(4, "big"), "oversized"),
])
def test_a_bad_frame_closes_the_link_and_is_counted(node, data, kind):
    link, wire = open_accepted(node)
    link.dataReceived(data + encode_message(hb(to="n1", frm="n2")))
    assert wire.aborted and not link.is_open
    assert node.counters.bad_frames == {kind: 1}
    assert node.received == []  # nothing after the bad frame was processed
    assert node.transport.connected_from() == set()


def test_before_the_hello_only_a_small_frame_is_accepted(node):
    link, wire = node.accept()
    link.dataReceived((hello_bytes_max + 1).to_bytes(4, "big"))
    assert wire.aborted and node.counters.bad_frames == {"oversized": 1}


def test_a_message_before_the_hello_is_a_bad_frame(node):
    link, wire = node.accept()
    link.dataReceived(encode_message(hb(to="n1", frm="n2")))
    assert wire.aborted and node.counters.bad_frames == {"message before hello": 1}


def test_a_failing_handler_does_not_close_the_link(node):
    def explode(msg):
        if msg.commit == 1:
            raise RuntimeError("bug above the transport")
        node.received.append(msg)
    node.transport.on_message = explode
    link, wire = open_accepted(node)
    for commit in (1, 2):
        link.dataReceived(encode_message(hb(to="n1", frm="n2", commit=commit)))
    assert [m.commit for m in node.received] == [2]
    assert node.counters.handler_errors == 1
    assert link.is_open and not wire.aborted


def test_a_redial_replaces_the_old_incoming_link(node):
    old, old_wire = open_accepted(node)
    new, new_wire = open_accepted(node)
    assert old_wire.aborted and not new_wire.aborted
    assert node.transport._incoming_open["n2"] is new
    assert node.counters.handshake_failures == {}  # replacing is not a failure


def test_connections_beyond_incoming_links_max_are_refused_before_tls(pki):
    node = Node(pki, incoming_links_max=2)
    listener = node.transport.listener_service(("127.0.0.1", 0))
    built = [listener.factory.buildProtocol(None) for _ in range(3)]
    assert built[0] is not None and built[1] is not None and built[2] is None
    assert node.counters.handshake_failures == {"too many links": 1}
    assert len(node.transport._incoming) == 2


# -- membership and construction ----------------------------------------------------------


def test_remove_and_re_add_peers(node):
    link, wire = node.dial("n2")
    node.transport.remove_peer("n2")
    assert wire.aborted and "n2" not in node.transport.peers
    assert node.unreachable == []  # removed on purpose: not unreachable
    node.transport.add_peer("n2", ("127.0.0.1", 7002))
    service = node.transport._outbound["n2"].service
    node.transport.add_peer("n2", ("127.0.0.1", 7002))  # same address: nothing changes
    assert node.transport._outbound["n2"].service is service
    node.transport.add_peer("n2", ("127.0.0.1", 7012))  # moved: a new dialer
    assert node.transport.peers["n2"] == ("127.0.0.1", 7012)
    assert not service.running and node.transport._outbound["n2"].service.running


def test_a_link_that_opens_after_its_peer_was_removed_is_closed(node):
    link, wire = node.dial("n2", answer=False)
    node.transport.remove_peer("n2")
    link.dataReceived(encode_hello("n2", CLUSTER))
    assert wire.aborted and not node.transport.is_connected("n2")


def test_construction_checks(pki):
    reactor = MemoryReactorClock()
    with pytest.raises(ValueError, match="is not for node 'n2' .*kvraft certs node n2"):
        PeerTransport("n2", {}, pki.credentials("n1"), None, reactor=reactor)
    with pytest.raises(ValueError, match="must hold at least one maximal frame"):
        PeerTransport("n1", {}, pki.credentials("n1"), None, reactor=reactor,
                      frame_bytes_max=1 << 20, queue_bytes_max=1 << 20)
    with pytest.raises(ValueError, match="port 1..65535"):
        PeerTransport("n1", {"n2": ("127.0.0.1", 0)}, pki.credentials("n1"), None,
                      reactor=reactor)
    transport = PeerTransport("n1", {"n1": ("h", 1), "n2": ("h", 2)}, pki.credentials("n1"),
                              None, reactor=reactor)
    assert transport.peers == {"n2": ("h", 2)}  # our own entry is skipped
    assert transport.service.name == "peers"
    assert [s.name for s in transport.service] == ["n2"]
    with pytest.raises(ValueError, match="plain tcp"):
        transport.listener_service("ssl:7001")
    with pytest.raises(ValueError, match="bind an IP address"):
        transport.listener_service(("localhost", 7001))
    for endpoint in (7001, "tcp:7001:interface=127.0.0.1", ("::1", 7001)):
        listener = transport.listener_service(endpoint)
        assert listener.name == "peer-listener"
        assert listener.endpoint._port == 7001

"""One peer link: TLS, then a hello each way, then a stream of Raft message frames.

Life of a link (both sides run this protocol; ``dialed`` tells them apart)::

    dialer                                   acceptor
    TLS handshake: checks the server is      TLS handshake: checks the client's
      node <dialed> (kvraft.tls)               certificate chains to the cluster CA
    sends hello {from: us, cluster}  ──────► checks cluster, and that the client
                                             certificate is node <hello.from>
                                     ◄────── sends its own hello; link OPEN
    checks cluster and id; link OPEN
    sends message frames             ──────► delivers each to the node

The dialer sends nothing after its hello until the acceptor's hello arrives. Nothing
but one small hello (``hello_bytes_max``) is read from a peer before it is
authenticated, and a peer that stays silent is dropped after ``hello_timeout_s``. Once
open, every frame must decode (``kvraft.peer.codec``), come from the authenticated peer
and be addressed to us. Any violation is logged, counted and closes this link only;
nothing a peer sends can raise out of this protocol.

The protocol knows nothing about queues or reconnecting: its ``LinkOwner`` (the
``PeerTransport``) decides that.
"""

from __future__ import annotations

from typing import Protocol as TypingProtocol

from twisted.internet.abstract import FileDescriptor
from twisted.internet.interfaces import (
    IDelayedCall,
    IHandshakeListener,
    IPushProducer,
    IReactorTime,
    ISSLTransport,
)
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from kvraft import tls
from kvraft.peer.codec import (
    FrameBuffer,
    FrameError,
    Hello,
    decode_body,
    decode_message,
    encode_hello,
)
from kvraft.peer.counters import TransportCounters
from kvraft.raft.types import Message, MsgType

hello_bytes_max = 4096  # two ids of <= 255 characters and msgpack overhead fit easily
hello_timeout_s_default = 10.0  # TLS + hello take milliseconds; this only reaps the idle

WRONG_CLUSTER = "wrong cluster"
HELLO_TIMEOUT = "hello timeout"
WRONG_SENDER = "wrong sender"
MISROUTED = "misrouted"
MESSAGE_BEFORE_HELLO = "message before hello"

HANDSHAKING, OPEN, CLOSED = "handshaking", "open", "closed"


FORWARDED_KINDS = frozenset({MsgType.MsgProp, MsgType.MsgReadIndex, MsgType.MsgTransferLeader})
"""Requests a follower passes on to the node it takes for the leader with ``frm`` kept as
the node that asked (the answer goes straight back to it). A follower with a stale idea of
the leader may pass one on twice, so on these ``frm`` names the asker, not the link's
authenticated peer; every other kind must come from the peer itself."""
log = Logger(namespace="kvraft.peer")


class LinkOwner(TypingProtocol):
    """What a ``PeerLink`` needs from whoever runs it (the ``PeerTransport``)."""

    node_id: str
    cluster: str
    frame_bytes_max: int
    hello_timeout_s: float
    clock: IReactorTime
    counters: TransportCounters

    def check_identity(self, link: PeerLink, claimed_id: str) -> str | None:
        """None if the link's peer certificate is node ``claimed_id``'s, else a refusal
        reason (``kvraft.tls.WRONG_IDENTITY``, ``kvraft.tls.NO_CERTIFICATE``)."""

    def link_opened(self, link: PeerLink) -> None:
        """Both hellos were exchanged: ``link.peer_id`` is authenticated."""

    def link_closed(self, link: PeerLink, reason: Failure, was_open: bool) -> None:
        """The connection is gone (opened or not)."""

    def link_writable(self, link: PeerLink) -> None:
        """The link's transport drained its buffer after a pause: flush queued frames."""

    def deliver(self, link: PeerLink, msg: Message) -> None:
        """A checked message from ``link.peer_id`` to us."""


@implementer(IHandshakeListener, IPushProducer)
class PeerLink(Protocol):
    """One TLS peer connection; ``dialed`` is the node we dialed, None if we accepted.

    ``peer_id`` is the authenticated node at the other end once ``state`` is ``OPEN``.
    ``paused`` is True while the transport's write buffer is full (flow control: the
    owner queues, bounded, until ``link_writable``).
    """

    def __init__(self, owner: LinkOwner, dialed: str | None = None):
        self.owner = owner
        self.dialed = dialed
        self.peer_id: str | None = dialed
        self.state = HANDSHAKING
        self.opened = False  # reached OPEN at some point (state may be CLOSED since)
        self.paused = False
        self.tls_handle = None  # the SSL.Connection; Twisted drops it after connectionLost
        self.outbound = None  # the owner's bookkeeping for a dialed link
        self._frames = FrameBuffer(hello_bytes_max)
        self._hello_timer: IDelayedCall | None = None
        self._tls_done = False
        self._hello_sent = False
        self._counted = False  # this link's failure was already counted
        self._closed_by_us = False

    def __repr__(self) -> str:
        side = f"to {self.dialed}" if self.dialed else f"from {self.peer_id or '?'}"
        return f"<PeerLink {side} {self.state}>"

    @property
    def is_open(self) -> bool:
        """Whether both hellos were exchanged and the link carries messages."""
        return self.state == OPEN

    def remote(self) -> str:
        """The remote address, for log lines."""
        try:
            peer = self.transport.getPeer()
            return f"{peer.host}:{peer.port}"
        except (AttributeError, TypeError):
            return "?"

    # -- Twisted hooks ------------------------------------------------------------------

    def connectionMade(self) -> None:
        try:
            self.tls_handle = self.transport.getHandle()
        except AttributeError:
            self.tls_handle = None
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            # Small frames (votes, heartbeats) must not wait for Nagle's algorithm.
            try:
                set_no_delay(True)
            except OSError:
                pass
        self._hello_timer = self.owner.clock.callLater(
            self.owner.hello_timeout_s, self._hello_timed_out)
        if self.dialed is not None and not ISSLTransport.providedBy(self.transport):
            self._send_hello()  # no TLS handshake to wait for (tests on plain transports)

    def handshakeCompleted(self) -> None:
        self._tls_done = True
        # The server is verified to be node <dialed>; only now say who we are.
        if self.dialed is not None and self.state == HANDSHAKING:
            self._send_hello()

    def dataReceived(self, data: bytes) -> None:
        if self.state == CLOSED:
            return
        try:
            bodies = self._frames.feed(data)
        except FrameError as e:
            self._bad_frame(e)
            return
        for body in bodies:
            if self.state == OPEN:
                self._handle_message(body)
            elif self.state == HANDSHAKING:
                self._handle_hello(body)
            else:
                return

    def connectionLost(self, reason: Failure = None) -> None:
        was_open = self.opened
        self.state = CLOSED
        self._cancel_hello_timer()
        if not was_open and not self._counted and not self._closed_by_us:
            self._count_failed_setup(reason)
        try:
            self.owner.link_closed(self, reason, was_open)
        finally:
            self.tls_handle = None

    # -- IPushProducer: the transport tells us when its write buffer is full ------------

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        if self.state == OPEN:
            self.owner.link_writable(self)

    def stopProducing(self) -> None:
        self.paused = True

    # -- our API ------------------------------------------------------------------------

    def write_now(self, data: bytes) -> None:
        """Write ``data`` and hand it to the kernel now, not at the reactor's next
        writability poll: a Raft message should reach its peer before this node starts
        an fsync, a flush that waits one reactor turn costs a round trip's worth of
        latency. Partial writes stay queued in the transport as usual."""
        self.transport.write(data)
        tcp = getattr(self.transport, "transport", None)  # under TLS: the TCP connection
        if isinstance(tcp, FileDescriptor) and tcp.connected and not tcp.disconnecting and (
                tcp.dataBuffer or getattr(tcp, "_tempDataBuffer", None)):
            # What the reactor does when the socket is writable; an error is left
            # buffered for the reactor, which then closes the connection.
            tcp.doWrite()

    def close(self) -> None:
        """Close the link on purpose (peer removed, service stopping): not a failure."""
        self._closed_by_us = True
        self._abort()

    # -- hello --------------------------------------------------------------------------

    def _send_hello(self) -> None:
        if self._hello_sent:
            return
        self._hello_sent = True
        self.transport.write(encode_hello(self.owner.node_id, self.owner.cluster))

    def _handle_hello(self, body: bytes) -> None:
        try:
            hello = decode_body(body)
        except FrameError as e:
            self._bad_frame(e)
            return
        if not isinstance(hello, Hello):
            self._bad_frame(FrameError("a message arrived before the hello",
                                       MESSAGE_BEFORE_HELLO))
            return
        owner = self.owner
        if hello.cluster != owner.cluster:
            self._refuse(WRONG_CLUSTER, f"node {hello.node_id!r} belongs to cluster "
                         f"{hello.cluster!r}, this node to {owner.cluster!r}: check "
                         f"cluster.name and the members' addresses")
            return
        if self.dialed is not None:
            if hello.node_id != self.dialed:
                self._refuse(tls.WRONG_IDENTITY, f"dialed node {self.dialed!r} but it "
                             f"says it is {hello.node_id!r}")
                return
        else:
            if hello.node_id == owner.node_id:
                self._refuse(tls.WRONG_IDENTITY, f"the peer claims our own id "
                             f"{owner.node_id!r}: a member address points at this node?")
                return
            refusal = owner.check_identity(self, hello.node_id)
            if refusal is not None:
                self._refuse(refusal, f"the peer says it is node {hello.node_id!r} but its "
                             f"certificate is for {self._certificate_names()}")
                return
            self._send_hello()
        self.peer_id = hello.node_id
        self._cancel_hello_timer()
        self.state = OPEN
        self.opened = True
        self._frames.frame_bytes_max = owner.frame_bytes_max
        register = getattr(self.transport, "registerProducer", None)
        if register is not None:
            register(self, True)
        owner.link_opened(self)

    def _hello_timed_out(self) -> None:
        self._hello_timer = None
        if self.state == HANDSHAKING:
            self._refuse(HELLO_TIMEOUT, f"no hello within {self.owner.hello_timeout_s} s")

    def _certificate_names(self) -> str:
        cert = tls.peer_certificate(self.tls_handle)
        if cert is None:
            return "nobody (no certificate)"
        return ", ".join(tls.certificate_names(cert)) or "no DNS name"

    # -- messages -----------------------------------------------------------------------

    def _handle_message(self, body: bytes) -> None:
        try:
            msg = decode_message(body)
        except FrameError as e:
            self._bad_frame(e)
            return
        if msg.frm != self.peer_id and msg.type not in FORWARDED_KINDS:
            self._bad_frame(FrameError(f"a message from {msg.frm!r} on the link of "
                                       f"{self.peer_id!r}", WRONG_SENDER))
            return
        if msg.to != self.owner.node_id:
            self._bad_frame(FrameError(f"a message for {msg.to!r} reached "
                                       f"{self.owner.node_id!r}", MISROUTED))
            return
        counters = self.owner.counters.peer(self.peer_id)
        counters.frames_received += 1
        counters.bytes_received += len(body) + 4
        self.owner.deliver(self, msg)

    # -- failures -----------------------------------------------------------------------

    def _refuse(self, reason: str, detail: str) -> None:
        self._counted = True
        self.owner.counters.handshake_failures[reason] += 1
        log.warn("peer link {side} {remote} refused ({reason}): {detail}",
                 side=self._side(), remote=self.remote(), reason=reason, detail=detail)
        self._abort()

    def _bad_frame(self, error: FrameError) -> None:
        self._counted = True
        self.owner.counters.bad_frames[error.kind] += 1
        log.warn("peer link {side} {remote} closed: bad frame ({kind}): {reason}",
                 side=self._side(), remote=self.remote(), kind=error.kind,
                 reason=error.reason)
        self._abort()

    def _count_failed_setup(self, reason: Failure | None) -> None:
        self._counted = True
        refusal = tls.classify_refusal(self.tls_handle, reason)
        if (not refusal.by_peer and refusal.reason == tls.HANDSHAKE_FAILED
                and self.dialed is not None and self._tls_done):
            # We said hello over a verified link and the peer hung up: it refused our
            # hello (wrong cluster, or our certificate's name); its log says which.
            refusal = tls.Refusal(tls.HANDSHAKE_FAILED, True,
                                  f"closed after our hello: {refusal.detail}")
        if refusal.by_peer:
            self.owner.counters.refused_by_peer[refusal.reason] += 1
            log.warn("peer link {side} {remote}: the peer refused us ({reason}): {detail}",
                     side=self._side(), remote=self.remote(), reason=refusal.reason,
                     detail=refusal.detail)
            return
        self.owner.counters.handshake_failures[refusal.reason] += 1
        if refusal.reason == tls.HANDSHAKE_FAILED and not tls.is_tls_error(reason):
            # A TCP connect and close without TLS: a port probe or a health check,
            # counted but not worth a warning each time.
            log.debug("peer link {side} {remote} closed before TLS: {detail}",
                      side=self._side(), remote=self.remote(), detail=refusal.detail)
            return
        log.warn("peer link {side} {remote} refused ({reason}): {detail}",
                 side=self._side(), remote=self.remote(), reason=refusal.reason,
                 detail=refusal.detail)

    def _abort(self) -> None:
        if self.state == CLOSED:
            return
        self.state = CLOSED
        self._cancel_hello_timer()
        self.transport.abortConnection()

    def _cancel_hello_timer(self) -> None:
        if self._hello_timer is not None and self._hello_timer.active():
            self._hello_timer.cancel()
        self._hello_timer = None

    def _side(self) -> str:
        return f"to {self.dialed}" if self.dialed is not None else "from"

"""PeerTransport: Raft messages between nodes over mutually authenticated TLS links.

Shape (one connection per direction)::

    this node ── ClientService "n2" ── dials n2 ──► n2's peer listener   (our sends to n2)
    this node ◄── n2 dials us ── "peer-listener" ◄─ n2's ClientService   (n2's sends to us)

Each node dials every peer it sends to and only ever *sends* on links it dialed; links
it accepts only receive. Two one-way links cost one more connection per pair than a
shared link, but there is no dial race to arbitrate, no "who keeps which link" rule, and
a restarted peer is simply re-dialed by ``ClientService`` with backoff.

Sending never blocks and never fails the caller: ``send(msg)`` encodes the frame at once
and queues it on the peer's link; frames queued in one reactor turn leave as one
``transport.write`` (``flush()`` sends them now). A message is *dropped* (and counted)
when the link is down, its queue holds ``queue_bytes_max`` already, or the peer is
unknown; ``on_unreachable(peer)`` is then called, at most once per
``unreachable_interval_s`` per peer, so the Raft core can probe: Raft retransmits what
was lost.

Limits and why:

* ``frame_bytes_max`` (16 MiB): the largest frame accepted from a peer, and sent. A
  MsgApp is bounded by raft ``max_msg_bytes`` (1 MiB) plus per-entry overhead, so 16x
  headroom; the rest is for snapshots. A MsgSnap travels as one frame today, so a
  snapshot over this limit is dropped and reported through ``on_snapshot_status``:
  larger state needs chunked snapshot streaming (chunks <= 8 MiB). A frame is
  buffered whole before it is decoded, so this bounds memory per incoming link, and
  decoding 16 MiB takes milliseconds, not a noticeable reactor stall.
* ``queue_bytes_max`` (32 MiB): frames waiting for one peer while its TCP buffer is full
  (Twisted producer pause). At least two maximal frames; worst-case memory per peer is
  this plus the transport's own buffer.
* ``incoming_links_max`` (256): accepted connections, authenticated or not, each reaped
  after ``hello_timeout_s`` if silent.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable, Iterable, Mapping

from twisted.application.internet import ClientService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    TCP6ClientEndpoint,
    TCP6ServerEndpoint,
    serverFromString,
)
from twisted.internet.interfaces import IStreamClientEndpoint, IStreamServerEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from kvraft import tls
from kvraft.peer.codec import encode_message, frame_header_bytes
from kvraft.peer.counters import (
    DROP_LINK_DOWN,
    DROP_OVERSIZED,
    DROP_QUEUE_FULL,
    DROP_UNKNOWN_PEER,
    TransportCounters,
)
from kvraft.peer.listener import AcceptFactory, PeerListenerService
from kvraft.peer.protocol import PeerLink, hello_bytes_max, hello_timeout_s_default
from kvraft.raft.types import LOCAL_MESSAGES, Message, MsgType

frame_bytes_max_default = 16 * 1024 * 1024
queue_bytes_max_default = 32 * 1024 * 1024
incoming_links_max_default = 256
connect_timeout_s_default = 5.0
backoff_initial_s_default = 0.1  # a restarted peer is back within one election timeout
backoff_max_s_default = 5.0  # a long-dead peer costs one connection attempt per 5 s
backoff_factor = 2.0
unreachable_interval_s_default = 1.0  # on_unreachable at most this often per peer

log = Logger(namespace="kvraft.peer")

Address = tuple[str, int]


class _Outbound:
    """Our link to one peer: its ClientService, the open PeerLink, the send queue."""

    __slots__ = ("peer_id", "address", "service", "link", "pending", "pending_bytes",
                 "pending_snapshots", "failures")

    def __init__(self, peer_id: str, address: Address):
        self.peer_id = peer_id
        self.address = address
        self.service: ClientService | None = None
        self.link: PeerLink | None = None  # set only while OPEN
        self.pending: list[bytes] = []  # encoded frames not yet written
        self.pending_bytes = 0  # 0 <= pending_bytes <= queue_bytes_max
        self.pending_snapshots = 0  # MsgSnap frames among pending (for snapshot status)
        self.failures = 0  # connections in a row that closed before the hello exchange


class _LinkFactory(Factory):
    """Builds PeerLinks: dialing one peer (``outbound``) or accepting any."""

    noisy = False

    def __init__(self, transport: PeerTransport, outbound: _Outbound | None):
        self.transport = transport
        self.outbound = outbound

    def buildProtocol(self, addr) -> PeerLink:
        dialed = self.outbound.peer_id if self.outbound is not None else None
        link = PeerLink(self.transport, dialed)
        link.outbound = self.outbound
        if self.outbound is None:
            self.transport._incoming.add(link)
        else:
            self.transport._outgoing.add(link)
        return link


class _PromptTLSFactory(TLSMemoryBIOFactory):
    """TLS for the links we send on, without Twisted's aggregation of small writes
    (which holds every write for one more reactor iteration): the transport already
    writes once per peer per turn, and that write should leave at once."""

    protocol = TLSMemoryBIOProtocol


@implementer(IStreamClientEndpoint)
class _PromptTLSEndpoint:
    """``wrapClientTLS`` with ``_PromptTLSFactory``."""

    def __init__(self, creator, endpoint, clock):
        self._creator = creator
        self._endpoint = endpoint
        self._clock = clock

    def connect(self, factory) -> Deferred:
        tls_factory = _PromptTLSFactory(self._creator, True, factory, clock=self._clock)
        return self._endpoint.connect(tls_factory).addCallback(
            lambda protocol: protocol.wrappedProtocol)


class _PeersService(MultiService):
    """The ``"peers"`` MultiService: aborts our links before stopping the dialers.

    ClientService stops a connection with ``loseConnection``, and Twisted's TLS
    transport waits for a registered producer (our flow control) to unregister before
    it closes, and for the peer's close_notify after that; a peer link never
    unregisters, and a hung peer never answers, so a graceful close could wait until
    TCP gave up. Raft needs no graceful goodbye: abort.
    """

    def __init__(self, transport: PeerTransport):
        super().__init__()
        self.transport = transport
        self.setName("peers")

    def stopService(self) -> Deferred:
        stopped = super().stopService()  # marks us stopped first: no unreachable reports
        for link in list(self.transport._outgoing):
            link.close()
        return stopped


class PeerTransport:
    """Raft message transport between cluster members over mutual TLS.

    ``peers`` maps every other member's id to its peer address (``(host, port)`` or any
    object with ``.host`` and ``.port``); an entry for ``node_id`` itself is ignored.
    ``tls_options`` is our ``kvraft.tls.TLSCredentials``: its certificate must be node
    ``node_id``'s. ``on_message(msg)`` receives each checked message from a peer;
    ``on_unreachable(peer_id)`` hears, rate-limited, that messages to a peer were
    dropped. ``on_snapshot_status(peer_id, ok)`` hears, once per MsgSnap, whether it was
    written to the peer's connection (True) or dropped (False): wire it to the core's
    ``report_snapshot`` or a dropped snapshot leaves that follower waiting forever. All
    three are plain attributes and may be set after construction.

    ``service`` (a ``MultiService`` named ``"peers"``, one ``ClientService`` per peer)
    dials the peers while running; ``listener_service(endpoint)`` makes the service that
    accepts their links. Everything runs on ``reactor`` (the global one by default).
    """

    def __init__(self, node_id: str, peers: Mapping[str, object],
                 tls_options: tls.TLSCredentials,
                 on_message: Callable[[Message], None] | None, reactor=None,
                 frame_bytes_max: int = frame_bytes_max_default,
                 queue_bytes_max: int = queue_bytes_max_default,
                 on_unreachable: Callable[[str], None] | None = None, *,
                 cluster: str = "kvraft",
                 hello_timeout_s: float = hello_timeout_s_default,
                 connect_timeout_s: float = connect_timeout_s_default,
                 backoff_initial_s: float = backoff_initial_s_default,
                 backoff_max_s: float = backoff_max_s_default,
                 unreachable_interval_s: float = unreachable_interval_s_default,
                 incoming_links_max: int = incoming_links_max_default,
                 rng: random.Random | None = None):
        if reactor is None:
            from twisted.internet import reactor
        if frame_bytes_max < hello_bytes_max:
            raise ValueError(f"frame_bytes_max must be at least {hello_bytes_max} bytes, "
                             f"got {frame_bytes_max}")
        if queue_bytes_max < frame_bytes_max + frame_header_bytes:
            raise ValueError(f"queue_bytes_max ({queue_bytes_max}) must hold at least one "
                             f"maximal frame (frame_bytes_max={frame_bytes_max})")
        if not tls.matches_node_id(tls_options.certificate, node_id):
            names = ", ".join(tls.certificate_names(tls_options.certificate)) or "no DNS name"
            raise ValueError(
                f"the certificate {tls_options.cert_path} is not for node {node_id!r} (it is "
                f"for {names}): issue one with `kvraft certs node {node_id}`")
        self.node_id = node_id
        self.cluster = cluster
        self.tls = tls_options
        self.on_message = on_message
        self.on_unreachable = on_unreachable
        self.on_snapshot_status: Callable[[str, bool], None] | None = None
        self.reactor = reactor
        self.clock = reactor
        self.frame_bytes_max = frame_bytes_max
        self.queue_bytes_max = queue_bytes_max
        self.hello_timeout_s = hello_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.unreachable_interval_s = unreachable_interval_s
        self.incoming_links_max = incoming_links_max
        self.counters = TransportCounters()
        self.service = _PeersService(self)
        self._rng = rng or random.Random()
        self._outbound: dict[str, _Outbound] = {}
        self._incoming: set[PeerLink] = set()  # every accepted link, open or not
        self._outgoing: set[PeerLink] = set()  # every dialed link, open or not
        self._incoming_open: dict[str, PeerLink] = {}  # the open accepted link per peer
        self._dirty: set[_Outbound] = set()  # peers with frames to flush this turn
        self._flush_call = None
        self._last_unreachable: dict[str, float] = {}
        for peer_id, address in peers.items():
            if peer_id != node_id:
                self.add_peer(peer_id, address)

    # -- membership -----------------------------------------------------------------------

    @property
    def peers(self) -> dict[str, Address]:
        """Every peer this node dials, with its address."""
        return {peer_id: out.address for peer_id, out in self._outbound.items()}

    def add_peer(self, peer_id: str, address: object) -> None:
        """Start dialing ``peer_id`` at ``address`` (replaces a different address)."""
        if peer_id == self.node_id:
            raise ValueError(f"node {peer_id!r} cannot be its own peer")
        host, port = _address(address, f"peer {peer_id!r}")
        current = self._outbound.get(peer_id)
        if current is not None:
            if current.address == (host, port):
                return
            self.remove_peer(peer_id)
        out = _Outbound(peer_id, (host, port))
        endpoint = _PromptTLSEndpoint(self.tls.peer_client_creator(peer_id),
                                      self._client_endpoint(host, port), self.reactor)
        out.service = ClientService(endpoint, _LinkFactory(self, out),
                                    retryPolicy=lambda attempt: self._retry_delay(out, attempt),
                                    clock=self.reactor)
        out.service.setName(peer_id)
        self._outbound[peer_id] = out
        out.service.setServiceParent(self.service)  # starts dialing if we are running

    def remove_peer(self, peer_id: str) -> Deferred:
        """Stop dialing ``peer_id`` and close our link to it; queued frames are dropped.
        Its link to us (if any) stays: it may still be catching up on removal."""
        out = self._outbound.pop(peer_id, None)
        if out is None:
            return succeed(None)
        for link in [link for link in self._outgoing if link.outbound is out]:
            link.close()  # link_closed drops the queue
        self._drop_pending(out)
        self._dirty.discard(out)
        out.link = None
        return out.service.disownServiceParent() or succeed(None)

    def is_connected(self, peer_id: str) -> bool:
        """Whether our link to ``peer_id`` is open (messages to it are being written)."""
        out = self._outbound.get(peer_id)
        return out is not None and out.link is not None

    def connected_from(self) -> set[str]:
        """Peers whose links to us are open."""
        return set(self._incoming_open)

    # -- the listener -------------------------------------------------------------------

    def listener_service(self, endpoint: str | int | tuple[str, int] | object
                         ) -> PeerListenerService:
        """The service that accepts peer links on ``endpoint``: a ``(host, port)`` pair or
        an object with ``.host`` and ``.port`` (the config's address; ``0.0.0.0`` or
        ``::`` for all interfaces), a port number (all IPv4 interfaces), a plain stream
        endpoint string (``"tcp:7001:interface=10.0.0.5"``) or an
        ``IStreamServerEndpoint``. TLS is added here: never give ``ssl:``."""
        if isinstance(endpoint, int):
            endpoint = TCP4ServerEndpoint(self.reactor, endpoint)
        elif isinstance(endpoint, str):
            if endpoint.split(":", 1)[0].lower() in ("ssl", "tls", "le", "lets"):
                raise ValueError(f"peer listener endpoint {endpoint!r}: give a plain tcp: "
                                 f"endpoint, the peer transport adds mutual TLS itself")
            endpoint = serverFromString(self.reactor, endpoint)
        elif not IStreamServerEndpoint.providedBy(endpoint):
            host, port = _address(endpoint, "peer listener", port_min=0)
            ip = ipaddress.ip_address(host) if _is_ip(host) else None
            if ip is None:
                raise ValueError(f"peer listener: bind an IP address, not {host!r} "
                                 f"(0.0.0.0 or :: for all interfaces)")
            endpoint_class = TCP4ServerEndpoint if ip.version == 4 else TCP6ServerEndpoint
            endpoint = endpoint_class(self.reactor, port, interface=host)
        tls_factory = TLSMemoryBIOFactory(self.tls.server_creator(require_client_cert=True),
                                          False, _LinkFactory(self, None), clock=self.reactor)
        return PeerListenerService(self, endpoint, AcceptFactory(self, tls_factory))

    # -- sending ------------------------------------------------------------------------

    def send(self, msg: Message) -> None:
        """Queue ``msg`` for its recipient; never blocks. Dropped (counted, and
        ``on_unreachable`` told) if the link is down or its queue is full. A local-only
        message kind or a message to ourselves is a programmer error: ``ValueError``."""
        to = msg.to
        if msg.type in LOCAL_MESSAGES or to == self.node_id:
            raise ValueError(f"{msg.type.name} to {to!r} must not be sent over the network")
        snapshot = msg.type is MsgType.MsgSnap
        out = self._outbound.get(to)
        if out is None:
            self._drop(to, DROP_UNKNOWN_PEER, snapshots=snapshot)
            return
        link = out.link
        if link is None:
            self._drop(to, DROP_LINK_DOWN, snapshots=snapshot)
            return
        data = encode_message(msg)
        size = len(data)
        if size - frame_header_bytes > self.frame_bytes_max:
            log.error("dropping a {size}-byte {kind} to {to}: over frame_bytes_max "
                      "({limit}); lower raft max_msg_bytes or the snapshot chunk size",
                      size=size, kind=msg.type.name, to=to, limit=self.frame_bytes_max)
            self._drop(to, DROP_OVERSIZED, snapshots=snapshot)
            return
        if out.pending_bytes + size > self.queue_bytes_max:
            self._drop(to, DROP_QUEUE_FULL, snapshots=snapshot)
            return
        out.pending.append(data)
        out.pending_bytes += size
        out.pending_snapshots += snapshot
        if not link.paused:
            self._dirty.add(out)
            if self._flush_call is None:
                self._flush_call = self.reactor.callLater(0, self._scheduled_flush)

    def send_many(self, msgs: Iterable[Message]) -> None:
        """``send`` each message in order (a Ready's ``messages``)."""
        for msg in msgs:
            self.send(msg)

    def flush(self) -> None:
        """Write every queued frame now instead of at the end of this reactor turn."""
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        dirty, self._dirty = self._dirty, set()
        for out in dirty:
            self._flush_out(out)

    def _scheduled_flush(self) -> None:
        self._flush_call = None
        self.flush()

    def _flush_out(self, out: _Outbound) -> None:
        link = out.link
        if link is None or link.paused or not out.pending:
            return
        pending, out.pending = out.pending, []
        size, out.pending_bytes = out.pending_bytes, 0
        snapshots, out.pending_snapshots = out.pending_snapshots, 0
        link.write_now(pending[0] if len(pending) == 1 else b"".join(pending))
        counters = self.counters.peer(out.peer_id)
        counters.frames_sent += len(pending)
        counters.bytes_sent += size
        self._report_snapshots(out.peer_id, snapshots, True)

    def _drop(self, peer_id: str, reason: str, frames: int = 1, snapshots: int = 0) -> None:
        self.counters.drops[reason] += frames
        self.counters.peer(peer_id).frames_dropped += frames
        self._report_snapshots(peer_id, snapshots, False)
        self._report_unreachable(peer_id)

    def _drop_pending(self, out: _Outbound) -> None:
        if out.pending:
            self.counters.drops[DROP_LINK_DOWN] += len(out.pending)
            self.counters.peer(out.peer_id).frames_dropped += len(out.pending)
        snapshots = out.pending_snapshots
        out.pending, out.pending_bytes, out.pending_snapshots = [], 0, 0
        self._report_snapshots(out.peer_id, snapshots, False)

    def _report_snapshots(self, peer_id: str, count: int, ok: bool) -> None:
        callback = self.on_snapshot_status
        if not count or callback is None:
            return
        for _ in range(count):
            try:
                callback(peer_id, ok)
            except Exception:
                log.failure("on_snapshot_status({peer}, {ok}) raised", peer=peer_id, ok=ok)

    def _report_unreachable(self, peer_id: str) -> None:
        callback = self.on_unreachable
        if callback is None or not self.service.running:
            return
        now = self.reactor.seconds()
        last = self._last_unreachable.get(peer_id)
        if last is not None and now - last < self.unreachable_interval_s:
            return
        self._last_unreachable[peer_id] = now
        try:
            callback(peer_id)
        except Exception:
            log.failure("on_unreachable({peer}) raised", peer=peer_id)

    # -- LinkOwner: called by PeerLink ----------------------------------------------------

    def check_identity(self, link: PeerLink, claimed_id: str) -> str | None:
        """None if ``link``'s client certificate is node ``claimed_id``'s, else why not."""
        cert = tls.peer_certificate(link.tls_handle)
        if cert is None:
            return tls.NO_CERTIFICATE
        if not tls.matches_node_id(cert, claimed_id):
            return tls.WRONG_IDENTITY
        return None

    def link_opened(self, link: PeerLink) -> None:
        """A link finished its hello exchange."""
        out = link.outbound
        if out is not None:
            if self._outbound.get(out.peer_id) is not out:
                link.close()  # the peer was removed (or re-added) while this link opened
                return
            out.link = link
            out.failures = 0
            self.counters.peer(out.peer_id).links_opened += 1
            log.info("peer link to {peer} open ({remote})", peer=out.peer_id,
                     remote=link.remote())
            return
        previous = self._incoming_open.get(link.peer_id)
        self._incoming_open[link.peer_id] = link
        if previous is not None and previous is not link:
            previous.close()  # the peer re-dialed: its old link is dead or dying
        log.info("peer link from {peer} open ({remote})", peer=link.peer_id,
                 remote=link.remote())

    def link_closed(self, link: PeerLink, reason: Failure, was_open: bool) -> None:
        """A link's connection is gone."""
        out = link.outbound
        if out is None:
            self._incoming.discard(link)
            if self._incoming_open.get(link.peer_id) is link:
                del self._incoming_open[link.peer_id]
            return
        self._outgoing.discard(link)
        if out.link is link:
            out.link = None
            self._dirty.discard(out)
            self._drop_pending(out)
        if not was_open:
            out.failures += 1
            return
        if self.service.running and self._outbound.get(out.peer_id) is out:
            log.info("peer link to {peer} lost: {why}", peer=out.peer_id,
                     why=reason.getErrorMessage() if reason is not None else "closed")
            self._report_unreachable(out.peer_id)

    def link_writable(self, link: PeerLink) -> None:
        """The link drained after a pause: write what queued up meanwhile."""
        out = link.outbound
        if out is not None and out.link is link:
            self._flush_out(out)

    def deliver(self, link: PeerLink, msg: Message) -> None:
        """Hand a checked message to ``on_message``; its exceptions stay here."""
        handler = self.on_message
        if handler is None:
            return
        try:
            handler(msg)
        except Exception:
            self.counters.handler_errors += 1
            log.failure("on_message raised on {kind} from {peer}", kind=msg.type.name,
                        peer=msg.frm)

    # -- internals ----------------------------------------------------------------------

    def close_incoming_links(self) -> None:
        """Close every link peers dialed to us (the listener is stopping)."""
        for link in list(self._incoming):
            link.close()

    def incoming_link_count(self) -> int:
        """Links peers dialed to us, authenticated or not yet."""
        return len(self._incoming)

    def _client_endpoint(self, host: str, port: int):
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return HostnameEndpoint(self.reactor, host, port, timeout=self.connect_timeout_s)
        endpoint_class = TCP4ClientEndpoint if ip.version == 4 else TCP6ClientEndpoint
        return endpoint_class(self.reactor, host, port, timeout=self.connect_timeout_s)

    def _retry_delay(self, out: _Outbound, attempt: int) -> float:
        # ClientService counts failed TCP connects; out.failures counts connections that
        # closed before the hello exchange (refused certificate, wrong cluster...), which
        # ClientService sees as successful connects. Back off on either.
        failures = max(attempt, out.failures, 1)
        delay = min(self.backoff_initial_s * backoff_factor ** min(failures - 1, 30),
                    self.backoff_max_s)
        return delay * (1.0 + 0.25 * self._rng.random())  # jitter: peers do not sync up


def _address(address: object, what: str, port_min: int = 1) -> Address:
    if isinstance(address, tuple) and len(address) == 2:
        host, port = address
    else:
        host, port = getattr(address, "host", None), getattr(address, "port", None)
    if not isinstance(host, str) or not host or not isinstance(port, int) or not (
            port_min <= port < 65536):
        raise ValueError(f"{what}: address must be (host, port) with a port "
                         f"{port_min}..65535, got {address!r}")
    return host, port


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True

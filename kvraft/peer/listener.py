"""The peer listener: the ``"peer-listener"`` service and its connection limit.

``PeerTransport.listener_service(endpoint)`` builds these; nothing else should.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

if TYPE_CHECKING:
    from kvraft.peer.transport import PeerTransport

TOO_MANY_LINKS = "too many links"

log = Logger(namespace="kvraft.peer")


class AcceptFactory(Factory):
    """Refuses connections beyond ``incoming_links_max`` before spending a handshake."""

    noisy = False

    def __init__(self, transport: PeerTransport, tls_factory: TLSMemoryBIOFactory):
        self.transport = transport
        self.tls_factory = tls_factory

    def buildProtocol(self, addr):
        transport = self.transport
        links = transport.incoming_link_count()
        if links >= transport.incoming_links_max:
            transport.counters.handshake_failures[TOO_MANY_LINKS] += 1
            log.warn("peer listener: refusing {addr}: {n} links already (incoming_links_max)",
                     addr=addr, n=links)
            return None  # Twisted closes the socket
        return self.tls_factory.buildProtocol(addr)


class PeerListenerService(Service):
    """Accepts peer links on ``endpoint`` (named ``"peer-listener"``). Fails to start
    (raises) if it cannot listen, so ``twistd`` exits with the reason."""

    def __init__(self, transport: PeerTransport, endpoint: IStreamServerEndpoint,
                 factory: Factory):
        self.transport = transport
        self.endpoint = endpoint
        self.factory = factory
        self.port: IListeningPort | None = None
        self._waiters: list[Deferred] = []
        self._failure: Failure | None = None
        self.setName("peer-listener")

    def startService(self) -> None:
        super().startService()
        self._failure = None
        listening = self.endpoint.listen(self.factory)
        listening.addCallbacks(self._listening, self._listen_failed)
        if self._failure is not None:
            self._failure.raiseException()

    def stopService(self) -> Deferred:
        super().stopService()
        self.transport.close_incoming_links()
        port, self.port = self.port, None
        if port is None:
            return succeed(None)
        return port.stopListening() or succeed(None)

    def when_listening(self) -> Deferred:
        """Fires with the ``IListeningPort`` (``.getHost().port`` is the bound port)."""
        if self.port is not None:
            return succeed(self.port)
        if self._failure is not None:
            return fail(self._failure)
        waiter: Deferred = Deferred()
        self._waiters.append(waiter)
        return waiter

    def _listening(self, port: IListeningPort) -> None:
        self.port = port
        host = port.getHost()
        log.info("peer listener on {address}",
                 address=f"{getattr(host, 'host', host)}:{getattr(host, 'port', '')}")
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(port)

    def _listen_failed(self, failure: Failure) -> None:
        self._failure = failure
        log.error("peer listener cannot listen on {endpoint}: {error}",
                  endpoint=self.endpoint, error=failure.getErrorMessage())
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.errback(failure)

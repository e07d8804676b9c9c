"""The reactor ``twistd kvraft`` runs on: Twisted's epoll reactor, one Python call lighter.

Twisted's ``EPollReactor.doPoll`` wraps every ready descriptor in
``log.callWithLogger``: it asks the selectable for its ``logPrefix()``, pushes a logging
context, calls ``_doReadOrWrite`` and pops the context again. On this kind of machine that
wrapper costs about as much as the read and the reply themselves: an unpipelined
``PING_INLINE`` echo served ~29k requests per second with it and ~45k without (redis-benchmark
-c 50, same process, same machine). A node serves one request per ready descriptor when
clients do not pipeline, so the wrapper sits on every request's path.

``KvraftReactor`` differs from ``EPollReactor`` in that loop only. It keeps the wrapper's one
guarantee that matters: an exception escaping a descriptor's handler is logged (with the
descriptor it came from) and does not stop the reactor. ``_doReadOrWrite`` still catches
errors from ``doRead``/``doWrite`` and disconnects the descriptor, as before. What is lost is
the legacy ``system`` log field (``ClientProtocol,4,127.0.0.1``) on events logged while
handling a read; kvraft's log observer (``kvraft.logs``) never used it.

``twistd kvraft`` installs this reactor unless ``--reactor``/``-r`` chose another one
(``twistd -r kvraft ...`` names it explicitly; ``twistd --help-reactors`` lists it). INFO
server reports the running one as ``multiplexing_api``.
"""

from __future__ import annotations

import errno
import sys

from twisted.internet.epollreactor import EPollReactor
from twisted.logger import Logger

log = Logger(namespace="kvraft.reactor")

MULTIPLEXING_API = "kvraft-epoll"
"""What INFO server's ``multiplexing_api`` says when this reactor runs."""


class KvraftReactor(EPollReactor):
    """``EPollReactor`` without the per-event logging context."""

    multiplexing_api = MULTIPLEXING_API

    def doPoll(self, timeout):
        if timeout is None:
            timeout = -1  # block until something is ready or a timed call is due
        try:
            events = self._poller.poll(timeout, len(self._selectables))
        except OSError as err:
            if err.errno == errno.EINTR:
                return
            raise
        selectables = self._selectables
        handle = self._doReadOrWrite
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is None:
                continue  # removed by a handler earlier in this batch
            try:
                handle(selectable, fd, event)
            except Exception:
                log.failure("unhandled error handling {selectable!r} (fd {fd}); "
                            "the reactor goes on", selectable=selectable, fd=fd)

    doIteration = doPoll


def multiplexing_api(reactor) -> str:
    """A short name of ``reactor``'s event loop, as INFO server reports it."""
    name = getattr(reactor, "multiplexing_api", None)
    if name:
        return name
    cls = type(reactor).__name__
    return cls[:-len("Reactor")].lower() if cls.endswith("Reactor") else cls.lower()


def install() -> KvraftReactor:
    """Install ``KvraftReactor`` as the global reactor (before anything imports it)."""
    from twisted.internet.main import installReactor
    reactor = KvraftReactor()
    installReactor(reactor)
    return reactor


def install_unless_chosen() -> bool:
    """Install ``KvraftReactor`` if no reactor is installed yet; True if it did.

    ``twistd`` installs the reactor named by ``--reactor`` while parsing its own options,
    before the subcommand's; when none was named nothing is installed until the first
    ``from twisted.internet import reactor``, so the subcommand can still choose."""
    if "twisted.internet.reactor" in sys.modules:
        return False
    install()
    return True


__all__ = ["KvraftReactor", "MULTIPLEXING_API", "install", "install_unless_chosen",
           "multiplexing_api"]

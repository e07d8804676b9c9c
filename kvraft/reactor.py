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

A second difference: writers are registered with epoll lazily. ``transport.write`` asks the
reactor to watch the socket for writability (``epoll_ctl``), and once the buffer is sent the
transport asks it to stop (``epoll_ctl`` again): two system calls and their Python around
every small write, for a socket that was writable all along. ``KvraftReactor`` first only
notes the writer; before it polls, and again after handling the descriptors a poll returned,
it lets every noted writer write. Only a writer whose data the kernel did not take in full is
registered with epoll, and from then on it is watched as before. Several writes to one socket
in one turn leave in one ``send``.

``twistd kvraft`` installs this reactor unless ``--reactor``/``-r`` chose another one
(``twistd -r kvraft ...`` names it explicitly; ``twistd --help-reactors`` lists it). INFO
server reports the running one as ``multiplexing_api``.
"""

from __future__ import annotations

import errno
import sys
from select import EPOLLOUT as _EPOLLOUT

from twisted.internet.epollreactor import EPollReactor
from twisted.logger import Logger

log = Logger(namespace="kvraft.reactor")

MULTIPLEXING_API = "kvraft-epoll"
"""What INFO server's ``multiplexing_api`` says when this reactor runs."""


class KvraftReactor(EPollReactor):
    """``EPollReactor`` without the per-event logging context, registering writers lazily."""

    multiplexing_api = MULTIPLEXING_API

    def __init__(self):
        self._noted_writers: dict = {}
        """Writers that asked to write since the last flush and are not watched by epoll
        (a dict as an insertion-ordered set: they write in the order they asked)."""
        super().__init__()

    def addWriter(self, writer):
        if writer in self._noted_writers or writer.fileno() in self._writes:
            return
        self._noted_writers[writer] = None

    def removeWriter(self, writer):
        if writer in self._noted_writers:
            del self._noted_writers[writer]
            return
        super().removeWriter(writer)

    def getWriters(self):
        return super().getWriters() + list(self._noted_writers)

    def removeAll(self):
        noted = list(self._noted_writers)
        self._noted_writers.clear()
        removed = super().removeAll()
        return removed + [w for w in noted if w not in removed]

    def _flush_noted_writers(self) -> None:
        """Let every noted writer write now; watch those the kernel did not drain."""
        noted = self._noted_writers
        handle = self._doReadOrWrite
        for writer in list(noted):
            if writer not in noted:
                continue  # stopped writing (or was disconnected) meanwhile
            try:
                handle(writer, writer.fileno(), _EPOLLOUT)
            except Exception:
                log.failure("unhandled error writing {selectable!r}; the reactor goes on",
                            selectable=writer)
            if writer in noted:  # it still has data: wait for writability as usual
                del noted[writer]
                super().addWriter(writer)

    def doPoll(self, timeout):
        if self._noted_writers:
            self._flush_noted_writers()
            if self._noted_writers:
                timeout = 0  # those writes asked for more writes: do not block on them
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
        if self._noted_writers:
            self._flush_noted_writers()  # replies written by those handlers leave now

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

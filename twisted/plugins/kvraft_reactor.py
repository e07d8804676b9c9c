"""``twistd --reactor kvraft``: the epoll reactor ``twistd kvraft`` picks by default
(``kvraft.reactor``; listed by ``twistd --help-reactors``)."""

from twisted.application.reactors import Reactor

kvraft = Reactor(
    "kvraft", "kvraft.reactor",
    "epoll without a logging context per ready descriptor (kvraft's default)")

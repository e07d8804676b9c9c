"""kvraft.peer: Raft messages between nodes over mutually authenticated TLS.

* ``codec``: messages <-> length-prefixed msgpack frames (pure, no I/O).
* ``protocol``: ``PeerLink``, one TLS connection: hello exchange, frame checks.
* ``transport``: ``PeerTransport``, the dialers and the send queues.
* ``listener``: the ``"peer-listener"`` service ``PeerTransport`` builds.
* ``counters``: what the transport counts, for the status page and metrics.

Import the submodules directly; this package imports nothing so that the pure codec can
be used without Twisted.
"""

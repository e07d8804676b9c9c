"""Counters kept by the peer transport, read by the status page and, later, Prometheus.

Plain integers and ``collections.Counter``s: the hot path increments attributes, and
``snapshot()`` gives a JSON-ready copy. Label values are fixed words (refusal reasons,
bad-frame kinds, drop reasons) or node ids, never free text, so their number stays small.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass


@dataclass(slots=True)
class LinkCounters:
    """Traffic with one peer: what we wrote to it and what we received from it."""

    frames_sent: int = 0
    bytes_sent: int = 0
    frames_received: int = 0
    bytes_received: int = 0
    frames_dropped: int = 0  # messages for this peer that were never written
    links_opened: int = 0  # outgoing links that completed the hello


DROP_LINK_DOWN = "link down"
DROP_QUEUE_FULL = "queue full"
DROP_UNKNOWN_PEER = "unknown peer"
DROP_OVERSIZED = "oversized"
DROP_REASONS = (DROP_LINK_DOWN, DROP_QUEUE_FULL, DROP_UNKNOWN_PEER, DROP_OVERSIZED)


class TransportCounters:
    """Everything the peer transport counts.

    * ``peers[id]``: a ``LinkCounters`` per peer.
    * ``handshake_failures[reason]``: connections *we* refused (``kvraft.tls`` reasons
      plus ``"wrong cluster"``, ``"hello timeout"``, ``"too many links"``).
    * ``refused_by_peer[reason]``: our connections the other side refused (its alert).
    * ``bad_frames[kind]``: links closed for a malformed, oversized, wrong-version or
      misattributed frame (``kvraft.peer.codec.FrameError.kind``).
    * ``drops[reason]``: outgoing messages dropped (``DROP_REASONS``); Raft retransmits.
    * ``handler_errors``: messages ``on_message`` raised on (a bug above the transport).
    """

    def __init__(self) -> None:
        self.peers: dict[str, LinkCounters] = {}
        self.handshake_failures: Counter[str] = Counter()
        self.refused_by_peer: Counter[str] = Counter()
        self.bad_frames: Counter[str] = Counter()
        self.drops: Counter[str] = Counter()
        self.handler_errors = 0

    def peer(self, node_id: str) -> LinkCounters:
        """The counters for ``node_id``, created on first use."""
        counters = self.peers.get(node_id)
        if counters is None:
            counters = self.peers[node_id] = LinkCounters()
        return counters

    def snapshot(self) -> dict:
        """A JSON-ready copy of every counter."""
        return {
            "peers": {node: asdict(c) for node, c in sorted(self.peers.items())},
            "handshake_failures": dict(self.handshake_failures),
            "refused_by_peer": dict(self.refused_by_peer),
            "bad_frames": dict(self.bad_frames),
            "drops": dict(self.drops),
            "handler_errors": self.handler_errors,
        }

"""ClusterTracker: what a single look at the node cannot tell — rates, history, recent
elections and membership changes, when each peer was last heard from, whether apply is
keeping up.

It samples the node every ``sample_interval_s`` on the reactor's clock (a few dict reads:
cheap) and listens to the node's soft-state events, so a leader change is recorded the
moment it happens, not at the next sample. Everything it keeps is bounded
(``events_max``, ``history_max``).
"""

from __future__ import annotations

from collections import deque
from typing import Any

from twisted.application.service import Service
from twisted.internet.task import LoopingCall

sample_interval_s = 0.25
"""How often the tracker samples; also the resolution of ``last_contact_s``."""
history_interval_s = 1.0
"""Spacing of the commit/apply history points the dashboard draws."""
history_max = 120
"""History points kept (two minutes at one per second)."""
events_max = 50
"""Recent elections, leader and membership changes kept."""
rate_window_s = 5.0
"""Commit and apply rates are averaged over this window."""
_CAMPAIGNING = ("candidate", "pre-candidate")


def _role_name(role: Any) -> str:
    return getattr(role, "value", None) or str(role or "follower")


class ClusterTracker(Service):
    """Samples ``node`` (a ``RaftNodeService``) and its ``transport``.

    Read by ``kvraft.web.status`` for ``/status`` and ``/health``. ``clock`` provides
    ``seconds()`` and ``callLater`` (the reactor, or a ``Clock`` in tests)."""

    name = "status-tracker"

    def __init__(self, node, transport=None, clock=None):
        if clock is None:
            from twisted.internet import reactor as clock
        self.node = node
        self.transport = transport
        self.clock = clock
        self.started_s = clock.seconds()
        self.events: deque[dict] = deque(maxlen=events_max)
        self.history: deque[tuple[float, int, int]] = deque(maxlen=history_max)
        self._window: deque[tuple[float, int, int]] = deque()
        self.last_contact: dict[str, float] = {}
        """Peer id -> when a frame from it last arrived (clock seconds)."""
        self._frames_seen: dict[str, int] = {}
        self.apply_progress_s = self.started_s
        """When applied last moved, or was last found caught up with commit."""
        self._last_applied = -1
        self._conf: tuple | None = None
        self._role = ""
        self._leader = ""
        self._term = 0
        self._sampler = LoopingCall(self.sample)
        self._sampler.clock = clock

    def startService(self) -> None:
        super().startService()
        listeners = getattr(self.node, "listeners", None)
        if listeners is not None and self.on_node_event not in listeners:
            listeners.append(self.on_node_event)
        self._sampler.start(sample_interval_s, now=True)

    def stopService(self):
        if self._sampler.running:
            self._sampler.stop()
        listeners = getattr(self.node, "listeners", None)
        if listeners is not None and self.on_node_event in listeners:
            listeners.remove(self.on_node_event)
        return super().stopService()

    # -- inputs --------------------------------------------------------------------------

    def on_node_event(self, kind: str, details: dict) -> None:
        """A ``RaftNodeService.listeners`` callback: record role and leader changes."""
        if kind == "soft_state":
            self._observe_roles(_role_name(details.get("role")), details.get("leader_id") or "")

    def _status(self) -> dict:
        core = getattr(self.node, "core", None)
        return core.status() if core is not None else {}

    def _observe_roles(self, role: str, leader: str) -> None:
        term = self._status().get("term", self._term)
        if role in _CAMPAIGNING and self._role not in _CAMPAIGNING:
            self._event("election", term, f"{self.node.node_id} started an election",
                        node=self.node.node_id)
        if leader != self._leader:
            if leader:
                self._event("leader", term, f"{leader} leads", leader=leader)
            elif self._leader:
                self._event("leader-lost", term, f"{self.node.node_id} lost its leader "
                            f"{self._leader}", leader="")
        self._role, self._leader, self._term = role, leader, term

    def sample(self) -> None:
        """Take one sample (the LoopingCall's work; tests call it directly)."""
        now = self.clock.seconds()
        status = self._status()
        if status:
            self._observe_roles(_role_name(status.get("role")), status.get("leader_id") or "")
            self._observe_conf(status.get("conf_state"), status.get("term", 0))
        commit = status.get("commit_index", 0)
        applied = self._applied()
        if applied != self._last_applied or applied >= commit:
            self.apply_progress_s = now
        self._last_applied = applied
        window = self._window
        window.append((now, commit, applied))
        while len(window) > 2 and now - window[1][0] >= rate_window_s:
            window.popleft()
        if not self.history or now - self.history[-1][0] >= history_interval_s:
            self.history.append((now, commit, applied))
        self._observe_peers(now)

    def _applied(self) -> int:
        machine = getattr(self.node, "machine", None)
        return getattr(machine, "last_applied", 0) if machine is not None else 0

    def _observe_conf(self, conf, term: int) -> None:
        if conf is None:
            return
        key = (tuple(conf.voters), tuple(conf.learners), tuple(conf.voters_outgoing))
        if key == self._conf:
            return
        if self._conf is not None:
            detail = f"voters {','.join(conf.voters) or '-'}"
            if conf.learners:
                detail += f"; learners {','.join(conf.learners)}"
            if conf.voters_outgoing:
                detail += f" (joint with {','.join(conf.voters_outgoing)})"
            self._event("membership", term, detail, voters=list(conf.voters),
                        learners=list(conf.learners))
        self._conf = key

    def _observe_peers(self, now: float) -> None:
        counters = getattr(self.transport, "counters", None)
        if counters is None:
            return
        for peer, link in counters.peers.items():
            received = link.frames_received
            if received != self._frames_seen.get(peer, 0):
                self._frames_seen[peer] = received
                self.last_contact[peer] = now

    def _event(self, kind: str, term: int, text: str, **extra) -> None:
        self.events.append({"time": self.clock.seconds(), "kind": kind, "term": term,
                            "text": text, **extra})

    # -- outputs -------------------------------------------------------------------------

    def rates(self) -> dict[str, float]:
        """Entries committed and applied per second over the last ``rate_window_s``."""
        window = self._window
        if len(window) < 2 or window[-1][0] <= window[0][0]:
            return {"commit_per_s": 0.0, "apply_per_s": 0.0}
        (t0, c0, a0), (t1, c1, a1) = window[0], window[-1]
        span = t1 - t0
        return {"commit_per_s": round((c1 - c0) / span, 2),
                "apply_per_s": round((a1 - a0) / span, 2)}

    def apply_stalled_s(self) -> float:
        """Seconds since applied last moved while entries waited to be applied (0 when
        applied has caught up with commit)."""
        return max(0.0, self.clock.seconds() - self.apply_progress_s)

    def last_contact_s(self, peer: str) -> float | None:
        """Seconds since a frame from ``peer`` arrived, or None if none ever did."""
        seen = self.last_contact.get(peer)
        return None if seen is None else max(0.0, self.clock.seconds() - seen)

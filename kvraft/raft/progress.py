"""Per-follower replication progress as the leader sees it (etcd tracker/progress.go).

A follower is in one of three states:

* ``Probe``: the leader does not know where the follower's log matches; it sends one
  MsgApp at a time and waits for the answer (or a heartbeat response) before the next.
* ``Replicate``: the logs match up to ``match``; the leader streams MsgApps optimistically,
  advancing ``next`` as it sends, bounded by the ``Inflights`` window.
* ``Snapshot``: the follower needs entries the leader compacted; a snapshot is on its
  way and nothing else is sent until the driver reports the outcome.

Invariant: ``0 <= match < next``.
"""

from __future__ import annotations

import enum
from collections import deque


class ProgressState(enum.Enum):
    """How the leader replicates to one follower."""

    Probe = "probe"
    Replicate = "replicate"
    Snapshot = "snapshot"


class Inflights:
    """The window of MsgApps sent but not yet acknowledged to one follower.

    A ring (a bounded deque) of ``(last index, bytes)`` per message; full at
    ``size_max`` messages or ``bytes_max`` bytes (0 = no byte limit).
    """

    __slots__ = ("size_max", "bytes_max", "_ring", "bytes")

    def __init__(self, size_max: int, bytes_max: int = 0):
        self.size_max = size_max
        self.bytes_max = bytes_max
        self._ring: deque[tuple[int, int]] = deque()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._ring)

    def add(self, index: int, nbytes: int) -> None:
        """Record a MsgApp whose last entry is ``index``; the window must not be full."""
        if self.full():
            raise AssertionError("Inflights.add on a full window: check full() first")
        if self._ring and index <= self._ring[-1][0]:
            raise AssertionError(f"Inflights.add({index}) not above {self._ring[-1][0]}")
        self._ring.append((index, nbytes))
        self.bytes += nbytes

    def free_le(self, index: int) -> None:
        """Forget every message whose last index is ``<= index`` (acknowledged)."""
        ring = self._ring
        while ring and ring[0][0] <= index:
            self.bytes -= ring.popleft()[1]

    def full(self) -> bool:
        """True when no further MsgApp may be sent until some are acknowledged."""
        return len(self._ring) >= self.size_max or (
            self.bytes_max > 0 and self.bytes >= self.bytes_max)

    def reset(self) -> None:
        """Forget everything (on a state change)."""
        self._ring.clear()
        self.bytes = 0


class Progress:
    """The leader's view of one follower (or of itself)."""

    __slots__ = ("match", "next", "state", "pending_snapshot", "recent_active",
                 "msg_app_flow_paused", "inflights", "is_learner")

    def __init__(self, next_index: int, inflight_max: int, is_learner: bool = False,
                 match: int = 0, inflight_bytes_max: int = 0):
        self.match = match  # highest index known to be durable on the follower
        self.next = next_index  # next index to send; match < next
        self.state = ProgressState.Probe
        self.pending_snapshot = 0  # index of the snapshot in flight (Snapshot state)
        self.recent_active = False  # heard from it since the last check-quorum round
        self.msg_app_flow_paused = False  # Probe: a probe is out; Replicate: window full
        self.inflights = Inflights(inflight_max, inflight_bytes_max)
        self.is_learner = is_learner

    def _reset_state(self, state: ProgressState) -> None:
        self.msg_app_flow_paused = False
        self.pending_snapshot = 0
        self.state = state
        self.inflights.reset()

    def become_probe(self) -> None:
        """Back to one-at-a-time probing (after a rejection, an unreachable report, or a
        snapshot)."""
        if self.state == ProgressState.Snapshot:
            pending = self.pending_snapshot
            self._reset_state(ProgressState.Probe)
            self.next = max(self.match + 1, pending + 1)
        else:
            self._reset_state(ProgressState.Probe)
            self.next = self.match + 1

    def become_replicate(self) -> None:
        """Stream entries: the follower's log matches up to ``match``."""
        self._reset_state(ProgressState.Replicate)
        self.next = self.match + 1

    def become_snapshot(self, snapshot_index: int) -> None:
        """A snapshot at ``snapshot_index`` is on its way; send nothing else meanwhile."""
        self._reset_state(ProgressState.Snapshot)
        self.pending_snapshot = snapshot_index

    def sent_entries(self, count: int, nbytes: int) -> None:
        """Account for a MsgApp carrying ``count`` entries just sent."""
        if self.state == ProgressState.Replicate:
            if count > 0:
                self.next += count
                self.inflights.add(self.next - 1, nbytes)
            self.msg_app_flow_paused = self.inflights.full()
        elif self.state == ProgressState.Probe:
            # Every MsgApp in Probe state is a probe: wait for its answer (or a heartbeat
            # response) before sending another.
            self.msg_app_flow_paused = True
        else:
            raise AssertionError(f"sending entries in state {self.state.value}")

    def maybe_update(self, index: int) -> bool:
        """An acknowledgement up to ``index`` arrived; True if ``match`` moved."""
        updated = False
        if self.match < index:
            self.match = index
            updated = True
            self.msg_app_flow_paused = False
        self.next = max(self.next, index + 1)
        return updated

    def maybe_decr_to(self, rejected: int, match_hint: int) -> bool:
        """A MsgApp at ``rejected`` was refused; move ``next`` back using the follower's
        hint (fast backtracking, Raft 5.3). False if the rejection is stale."""
        if self.state == ProgressState.Replicate:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, match_hint + 1), self.match + 1)
        self.msg_app_flow_paused = False
        return True

    def is_paused(self) -> bool:
        """True when the leader must not send a MsgApp to this follower now."""
        if self.state == ProgressState.Snapshot:
            return True
        return self.msg_app_flow_paused

    def describe(self) -> dict:
        """Plain data for ``RaftCore.status()``."""
        return {"match": self.match, "next": self.next, "state": self.state.value,
                "inflight": len(self.inflights), "recent_active": self.recent_active,
                "is_learner": self.is_learner, "paused": self.is_paused(),
                "pending_snapshot": self.pending_snapshot}

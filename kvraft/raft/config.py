"""RaftConfig: every knob of the core, with named limits, validated at construction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from kvraft.raft.types import NodeId

MIB = 1024 * 1024

READ_ONLY_SAFE = "safe"
READ_ONLY_LEASE = "lease"


class RandomSource(Protocol):
    """Anything with ``randrange(a, b)`` (``random.Random`` from a simulator, or SplitMix64)."""

    def randrange(self, start: int, stop: int) -> int:
        """A number in ``[start, stop)``."""


class SplitMix64:
    """A tiny, pure, seeded PRNG (Steele et al. 2014) so the core never imports ``random``.

    Good enough to spread election timeouts; not for anything security related.
    """

    _mask = (1 << 64) - 1

    def __init__(self, seed: int = 0):
        self._state = seed & self._mask

    def next_u64(self) -> int:
        """The next 64-bit output."""
        self._state = (self._state + 0x9E3779B97F4A7C15) & self._mask
        z = self._state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & self._mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & self._mask
        return z ^ (z >> 31)

    def randrange(self, start: int, stop: int) -> int:
        """A number in ``[start, stop)``; the modulo bias is negligible for tick ranges."""
        if stop <= start:
            raise ValueError(f"empty range [{start}, {stop})")
        return start + self.next_u64() % (stop - start)


@dataclass
class RaftConfig:
    """Configuration of one RaftCore. Limits are named with their unit last.

    ``voters``/``learners`` bootstrap a new cluster; a node whose storage already holds
    a configuration (``initial_state()`` returns a non-empty ConfState) uses that one. A
    node joining a running cluster lists the cluster's current voters (not itself): it
    learns of its own addition by applying the ConfChange entry, or from a snapshot.

    ``read_only_option`` picks how a leader confirms a read (thesis 6.4): ``"safe"``
    (ReadIndex: a heartbeat round per batch of reads) or ``"lease"`` (no round while
    the leader holds a lease; see ``kvraft.raft.read_only``). A lease is time-based, so
    it rests on a CLOCK ASSUMPTION: every node's ticks advance at the same rate, within
    ``lease_margin_ticks`` per election timeout. The driver must tick in proportion to
    real time, catching up on ticks missed during a pause (GC, SIGSTOP, a blocked
    reactor) before it steps anything received after the pause. ``lease_margin_ticks``
    (default ``max(1, election_ticks // 10)``) shortens the lease to
    ``lease_ticks() = election_ticks - 1 - lease_margin_ticks`` ticks after the send
    tick of the newest heartbeat a quorum acknowledged (the ``- 1`` is tick
    granularity); a leader whose ticks run slower than a follower's by more than a
    factor ``(election_ticks - 1) / lease_ticks()`` may serve a stale read.
    """

    id: NodeId
    voters: tuple[NodeId, ...] = ()
    learners: tuple[NodeId, ...] = ()
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    pre_vote: bool = True
    check_quorum: bool = True
    seed: int = 0
    rng: Any = None
    max_inflight_msgs: int = 256
    max_msg_bytes: int = 1 * MIB
    max_uncommitted_bytes: int = 0
    max_committed_bytes_per_ready: int = 64 * MIB
    applied: int = 0
    disable_proposal_forwarding: bool = False
    read_only_option: str = READ_ONLY_SAFE
    lazy_commit_announce: bool = False
    """True: when the commit index moves, the leader sends no empty MsgApp just to
    announce it; followers learn it from the next MsgApp with entries or heartbeat (at
    most ``heartbeat_ticks`` later). Saves two messages per follower and commit under
    load; the leader's own commit and apply are unchanged."""
    lease_margin_ticks: int | None = None

    def __post_init__(self) -> None:
        self.voters = tuple(self.voters)
        self.learners = tuple(self.learners)
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the bad field and what to use instead."""
        if not isinstance(self.id, str) or not self.id:
            raise ValueError("RaftConfig.id must be a non-empty node id string such as 'n1'")
        for name in ("voters", "learners"):
            ids = getattr(self, name)
            if len(set(ids)) != len(ids):
                raise ValueError(f"RaftConfig.{name} lists a node twice: {ids!r}")
            if any(not isinstance(i, str) or not i for i in ids):
                raise ValueError(f"RaftConfig.{name} must hold non-empty id strings: {ids!r}")
        both = set(self.voters) & set(self.learners)
        if both:
            raise ValueError(f"nodes {sorted(both)} are both voters and learners; pick one")
        if self.heartbeat_ticks < 1:
            raise ValueError("RaftConfig.heartbeat_ticks must be >= 1")
        if self.election_ticks <= self.heartbeat_ticks:
            raise ValueError(
                f"RaftConfig.election_ticks ({self.election_ticks}) must be greater than "
                f"heartbeat_ticks ({self.heartbeat_ticks}); 10x is typical")
        if self.max_inflight_msgs < 1:
            raise ValueError("RaftConfig.max_inflight_msgs must be >= 1 (256 is typical)")
        if self.max_msg_bytes < 1:
            raise ValueError("RaftConfig.max_msg_bytes must be >= 1 (1 MiB is typical)")
        if self.max_uncommitted_bytes < 0:
            raise ValueError("RaftConfig.max_uncommitted_bytes must be >= 0 (0 = unlimited)")
        if self.max_committed_bytes_per_ready < 1:
            raise ValueError("RaftConfig.max_committed_bytes_per_ready must be >= 1")
        if self.applied < 0:
            raise ValueError("RaftConfig.applied must be >= 0")
        if self.read_only_option not in (READ_ONLY_SAFE, READ_ONLY_LEASE):
            raise ValueError(
                f"RaftConfig.read_only_option {self.read_only_option!r} is unknown; "
                f"use {READ_ONLY_SAFE!r} or {READ_ONLY_LEASE!r}")
        if self.read_only_option == READ_ONLY_LEASE and not self.check_quorum:
            raise ValueError("read_only_option='lease' needs check_quorum=True, else a "
                             "deposed leader may serve stale reads")
        if self.lease_margin_ticks is not None and (
                not isinstance(self.lease_margin_ticks, int) or self.lease_margin_ticks < 0):
            raise ValueError(
                f"RaftConfig.lease_margin_ticks must be an int >= 0 (got "
                f"{self.lease_margin_ticks!r}); leave it None for "
                f"max(1, election_ticks // 10)")
        if self.read_only_option == READ_ONLY_LEASE and self.lease_ticks() <= self.heartbeat_ticks:
            raise ValueError(
                f"read_only_option='lease' with election_ticks={self.election_ticks} and "
                f"lease_margin_ticks={self.lease_margin()} leaves a lease of "
                f"{self.lease_ticks()} ticks, not longer than heartbeat_ticks="
                f"{self.heartbeat_ticks}: it would lapse between heartbeats; raise "
                f"election_ticks or lower lease_margin_ticks")
        if self.rng is not None and not callable(getattr(self.rng, "randrange", None)):
            raise ValueError("RaftConfig.rng must have a randrange(a, b) method")

    def lease_margin(self) -> int:
        """``lease_margin_ticks``, or its default ``max(1, election_ticks // 10)``."""
        if self.lease_margin_ticks is not None:
            return self.lease_margin_ticks
        return max(1, self.election_ticks // 10)

    def lease_ticks(self) -> int:
        """How many ticks after sending a heartbeat that a quorum acknowledged a leader
        may serve lease reads: ``election_ticks - 1 - lease_margin()``.

        A follower that got the heartbeat grants no vote for ``election_ticks`` of its
        own ticks, i.e. for at least ``election_ticks - 1`` tick periods of real time
        (its first tick may come right after the heartbeat); the leader, counting whole
        ticks since the send, may be one tick behind real time, hence the ``- 1``.
        """
        return self.election_ticks - 1 - self.lease_margin()

    def make_rng(self) -> RandomSource:
        """The configured random source, or a SplitMix64 seeded with ``seed``."""
        return self.rng if self.rng is not None else SplitMix64(self.seed)

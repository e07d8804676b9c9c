"""Errors the pure core and its storage contract raise (besides ``ProposalDropped``)."""

from __future__ import annotations


class StorageError(Exception):
    """Base class for the storage read contract's expected errors."""


class CompactedError(StorageError):
    """The requested index is below ``first_index() - 1``: a snapshot replaced it.

    The leader reacts by sending a snapshot instead of entries; a driver should never see
    this unless it reads the log itself.
    """


class UnavailableError(StorageError):
    """The requested index is above ``last_index()``: the entry does not exist (yet)."""


class SnapshotTemporarilyUnavailableError(StorageError):
    """``snapshot()`` cannot produce a snapshot right now (one is being written).

    The leader retries on a later heartbeat; the peer stays in probe state meanwhile.
    """


class SnapshotOutOfDateError(StorageError):
    """``apply_snapshot`` was given a snapshot older than the one already held."""


class LogLostError(AssertionError):
    """The leader names as committed an index beyond this node's log, at or below what
    this node had acknowledged: entries it reported durable are gone (a disk that did not
    keep an fsync'd write, a restored backup, a truncated file). Raft's safety rests on
    that durability, so a node that sees this must stop taking part (etcd panics), and
    be rebuilt from an empty data directory."""


class ConfChangeError(ValueError):
    """A membership change that cannot be applied to the current configuration."""

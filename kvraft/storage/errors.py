"""Errors raised by the storage backends.

Two families live here:

* The read contract's range errors, ``CompactedError`` (below ``first_index() - 1``) and
  ``UnavailableError`` (above ``last_index()``). They belong to the pure core; this module
  re-exports the core's classes so that ``except CompactedError`` in the core catches what
  storage raises.
* ``StorageError`` and its subclasses: operating errors an operator must act on (a corrupt
  log, a corrupt snapshot, a disk that refuses writes). Their messages name the file, say
  what is wrong and what to do.
"""

from __future__ import annotations

from kvraft.raft import CompactedError, UnavailableError

__all__ = [
    "CompactedError",
    "CorruptLogError",
    "CorruptSnapshotError",
    "StorageError",
    "UnavailableError",
    "RESTORE_ADVICE",
]

RESTORE_ADVICE = (
    "restore this node from a snapshot: stop it, move its data_dir aside (keep it for "
    "inspection), and re-add it to the cluster with `kvraft member add`"
)
"""What an operator does about a node whose durable state cannot be trusted."""


class StorageError(Exception):
    """The storage cannot go on; the message is meant for an operator.

    A node that sees this stops rather than risk acknowledging writes it cannot keep.
    """


class CorruptLogError(StorageError):
    """A log record before the tail fails its checksum or breaks index continuity."""


class CorruptSnapshotError(StorageError):
    """A snapshot file fails its checksum or is not a kvraft snapshot."""

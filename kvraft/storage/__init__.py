"""kvraft.storage: storage backends for the Raft log, hard state and snapshots.

Backends (each a Twisted plugin providing ``IStorageBackend``, chosen with
``storage.backend = "<name>"``):

* ``wal`` (default, ``kvraft.storage.wal``): segmented write-ahead log with group
  commit; ``data_dir/wal/``, ``data_dir/snap/``, ``data_dir/state``.
* ``sqlite`` (``kvraft.storage.sqlite``): one SQLite database in WAL mode,
  ``data_dir/kvraft.sqlite3``, plus ``data_dir/snap/``.
* ``memory`` (``kvraft.storage.memory``): nothing durable; tests and simulation.

Every backend module has ``open_storage(data_dir, options) -> IStorage``. Importing this
package is cheap: backends are imported only when opened.
"""

from kvraft.storage.errors import (
    CompactedError,
    CorruptLogError,
    CorruptSnapshotError,
    StorageError,
    UnavailableError,
)

__all__ = [
    "CompactedError",
    "CorruptLogError",
    "CorruptSnapshotError",
    "StorageError",
    "UnavailableError",
]

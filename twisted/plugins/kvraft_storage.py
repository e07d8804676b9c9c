"""kvraft's built-in storage backends, found with ``getPlugins(IStorageBackend)``.

Tiny on purpose: discovery imports every module here, so each backend module is
imported only when its plugin's ``open`` is called.
"""

from kvraft.plugins import LazyStorageBackend

wal = LazyStorageBackend(
    "wal", "segmented write-ahead log with group commit (the default)",
    "kvraft.storage.wal")
sqlite = LazyStorageBackend(
    "sqlite", "one SQLite database in WAL mode (data_dir/kvraft.sqlite3)",
    "kvraft.storage.sqlite")
memory = LazyStorageBackend(
    "memory", "in memory, nothing durable: tests and simulation only",
    "kvraft.storage.memory")

"""The seams of kvraft: every pluggable part is one zope.interface here.

Implementations declare themselves with ``@implementer(...)`` and are checked with
``zope.interface.verify.verifyObject`` in tests. Storage backends and state machines are
found as Twisted plugins (``twisted/plugins/``) providing ``IStorageBackend`` or
``IStateMachinePlugin`` and chosen by name in the configuration
(``storage.backend = "wal"``, ``state_machine.plugin = "kv"``).

Who calls what: the node service (``kvraft/node.py``) is the only caller of every
interface below. It calls them from the reactor thread, except the methods marked
"may block", which it may call from one writer thread; it never calls one object from two
threads at once.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class ILogStore(Interface):
    """The replicated log: entries ``first_index() .. last_index()``, plus the term of the
    entry just before ``first_index()`` (the last compacted entry, or 0/0 for a new log).

    Reads are what the pure core uses (``kvraft.raft`` reads storage through exactly
    ``first_index``, ``last_index``, ``term`` and ``entries``); they must be cheap and
    must see every ``append`` at once, synced or not.
    """

    def first_index() -> int:
        """Index of the first entry still held (1 for a new log; snapshot index + 1 after
        compaction)."""

    def last_index() -> int:
        """Index of the last appended entry (``first_index() - 1`` when empty)."""

    def term(index: int) -> int:
        """Term of the entry at ``index``, for ``first_index() - 1 <= index <= last_index()``.

        Raises ``kvraft.raft.CompactedError`` below that range and
        ``kvraft.raft.UnavailableError`` above it.
        """

    def entries(lo: int, hi: int, max_bytes: int | None = None) -> list:
        """Entries ``[lo, hi)``. With ``max_bytes``, stop once the total ``Entry.size()``
        would exceed it, but always return at least one entry. Same errors as ``term``."""

    def append(entries: list) -> None:
        """Append contiguous entries. If ``entries[0].index <= last_index()``, the
        conflicting suffix from that index on is discarded first (Raft 5.3). Appending
        below ``first_index()`` is a programmer error. Not durable until ``sync``."""

    def sync() -> None:
        """Make every appended entry durable (one fsync for all appends since the last
        call: group commit). May block; the node may call it from its writer thread."""

    def compact(index: int) -> None:
        """Discard entries up to and including ``index`` (a snapshot covers them). The
        term of ``index`` stays readable through ``term``. May block."""

    def reset(index: int, term: int) -> None:
        """Discard the whole log and start it after ``index``/``term`` (a snapshot was
        installed from the leader). Durable when it returns. May block."""

    def close() -> None:
        """Release files; the object is unusable afterwards."""


class IFdSyncLogStore(ILogStore):
    """A log whose ``sync`` is one ``fdatasync`` of one file, which the node may start
    itself without blocking (a leader does, through Linux AIO: ``kvraft.storage.aio``)
    and report back. Optional: a log without it is synced with ``sync``."""

    def sync_fd() -> int | None:
        """The descriptor ``sync`` would fdatasync now, or None when every append is
        durable already. It stays open until an ``append`` rolls past its file, or
        ``reset`` or ``close``: the node calls none of these while its flush is in
        flight."""

    def mark_synced() -> None:
        """The descriptor ``sync_fd`` returned was fdatasynced after the last append:
        record what ``sync`` would have (every appended entry is durable)."""


class IStableStore(Interface):
    """Small durable state: the Raft hard state and node metadata."""

    def hard_state():
        """The last saved ``kvraft.raft.HardState`` (all zero for a new node)."""

    def save_hard_state(hard_state) -> None:
        """Persist ``hard_state``. When it returns, ``term`` and ``vote`` are durable.
        ``commit`` may be persisted lazily: restarting with a lower commit index is safe
        because the leader tells the node again. May block."""

    def metadata() -> dict:
        """Node metadata saved with ``save_metadata`` (cluster id, bootstrap members...);
        ``{}`` for a new node."""

    def save_metadata(metadata: dict) -> None:
        """Persist a msgpack-able ``metadata`` dict atomically; durable when it returns."""

    def close() -> None:
        """Release files; the object is unusable afterwards."""


class ISnapshotWriter(Interface):
    """One snapshot being written; see ``ISnapshotStore.create``."""

    def write(chunk: bytes) -> None:
        """Append ``chunk`` to the snapshot body. May block."""

    def commit():
        """Checksum, fsync and atomically publish the snapshot; return its
        ``kvraft.raft.SnapshotMetadata``. May block."""

    def abort() -> None:
        """Throw the partial snapshot away."""


class ISnapshotStore(Interface):
    """Snapshots of the state machine, written atomically, each with a checksum."""

    def create(metadata) -> ISnapshotWriter:
        """Start writing a snapshot described by ``metadata`` (a
        ``kvraft.raft.SnapshotMetadata``: index, term, configuration)."""

    def latest():
        """Metadata of the newest valid snapshot, or ``None``."""

    def list() -> list:
        """Metadata of every valid snapshot, newest first."""

    def open(index: int):
        """An iterator of body chunks of the snapshot at ``index``, its checksum verified
        as it is read (``kvraft.storage.CorruptSnapshotError`` on a mismatch)."""

    def retain(count: int) -> None:
        """Delete all but the newest ``count`` snapshots."""


class IStorage(Interface):
    """What a storage backend opens for one node: three stores over one ``data_dir``."""

    log = Attribute("The ILogStore.")
    stable = Attribute("The IStableStore.")
    snapshots = Attribute("The ISnapshotStore.")

    def close() -> None:
        """Close all three stores."""


class IStorageBackend(Interface):
    """A storage plugin, found with ``twisted.plugin.getPlugins(IStorageBackend)``."""

    name = Attribute("The name used in configuration: ``storage.backend = name``.")
    description = Attribute("One line for ``kvraft --help`` and error messages.")

    def open(data_dir: str, options: dict) -> IStorage:
        """Open (creating if needed) the stores under ``data_dir``. Raises
        ``kvraft.storage.StorageError`` with an operator-facing message on corruption."""


class ISnapshotView(Interface):
    """A consistent, immutable view of the state machine taken by ``snapshot()``."""

    def chunks():
        """Iterate over the serialized snapshot body in bounded chunks. Safe to call from
        a thread other than the one applying commands: it must not read live state."""


class IStateMachine(Interface):
    """The replicated state machine.

    Determinism: ``apply`` must give the same result and the same new state on every
    node for the same sequence of commands: no clocks, no randomness, no iteration over
    unordered containers in results, no I/O. Called only from the reactor thread, in log
    order, exactly once per committed command (restarts replay from the last snapshot).
    """

    last_applied = Attribute("Index of the last log entry applied (0 initially).")

    def apply(index: int, command):
        """Apply one command from the entry at log ``index`` (an entry carries a batch;
        its commands share the index) and return its result. A command the machine
        rejects returns an error result; it never raises for bad user input."""

    def query(command):
        """Answer a read-only command from the current state, without changing it."""

    def snapshot() -> ISnapshotView:
        """A cheap consistent view of the state as of ``last_applied``, serialized later
        (possibly in another thread) while ``apply`` continues."""

    def restore(chunks) -> None:
        """Replace the whole state with the snapshot body read from ``chunks`` (an
        iterable of bytes) and set ``last_applied`` to ``index`` given to
        ``set_last_applied`` by the caller afterwards."""

    def set_last_applied(index: int) -> None:
        """Record the log index the state now reflects (after ``restore``)."""


class IBatchStateMachine(IStateMachine):
    """A state machine that can apply a log entry's whole batch in one call.

    Optional: the node uses ``apply_batch`` when the machine provides this interface and
    calls ``apply`` once per command otherwise. The results and the new state must be
    exactly those of calling ``apply(index, command)`` for each command in order; the
    point is only to pay the per-call overhead once per entry rather than once per
    command.
    """

    def apply_batch(index: int, commands) -> list:
        """Apply ``commands`` (the batch of the entry at log ``index``, in order) and
        return their results, one per command."""


class IStateMachinePlugin(Interface):
    """A state-machine plugin, found with ``twisted.plugin.getPlugins``."""

    name = Attribute("The name used in configuration: ``state_machine.plugin = name``.")
    description = Attribute("One line for error messages.")

    def create(options: dict) -> IStateMachine:
        """A new, empty state machine."""

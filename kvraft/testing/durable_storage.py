"""Storage that models durability, for the simulator.

A node's writes (snapshot install, entry appends, hard state) go to a volatile layer
first: the core sees them at once, as it would see a real log store's page cache. Only
``sync`` (the simulated fsync) makes them durable. ``crash`` throws the volatile layer
away; optionally a prefix of the unsynced writes survives, the last of them torn (an
append cut short), as when the disk had flushed some pages on its own.

Two images of the log are kept incrementally: ``live`` (everything written) and
``durable`` (what a crash keeps). The invariant checker reads ``durable``; the core reads
a ``kvraft.raft.MemoryStorage`` rebuilt from ``durable`` after each crash and then fed
every write.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Any

from kvraft.raft.types import ConfState, Entry, HardState, Snapshot

__all__ = ["LogImage", "SimStorage"]


@dataclass(slots=True)
class LogImage:
    """A log as stored: an optional snapshot, the entries after it, the hard state."""

    snapshot: Snapshot | None = None
    entries: list[Entry] = field(default_factory=list)  # entries[0].index == base + 1
    hard_state: HardState = field(default_factory=HardState)
    # Index/term of the entry before ``entries[0]`` (the snapshot's or a compaction's).
    base_index: int = 0
    base_term: int = 0

    def copy(self) -> LogImage:
        """An independent copy (entries are shared: they are never mutated)."""
        return LogImage(self.snapshot, list(self.entries), replace(self.hard_state),
                        self.base_index, self.base_term)

    @property
    def last_index(self) -> int:
        """Index of the last entry (the base index when there are none)."""
        return self.base_index + len(self.entries)

    def term(self, index: int) -> int | None:
        """Term at ``index``; None if the entry is compacted away or not there."""
        if index == self.base_index:
            return self.base_term
        pos = index - self.base_index - 1
        if 0 <= pos < len(self.entries):
            return self.entries[pos].term
        return None

    def entry(self, index: int) -> Entry | None:
        """The entry at ``index`` if held."""
        pos = index - self.base_index - 1
        return self.entries[pos] if 0 <= pos < len(self.entries) else None

    def covers(self, index: int, term: int) -> bool:
        """Whether this log holds entry ``index`` of ``term`` or a snapshot past it."""
        return index < self.base_index or self.term(index) == term

    # -- writes, with the same semantics as MemoryStorage ------------------------------

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        meta = snapshot.metadata
        self.snapshot = snapshot
        self.entries = []
        self.base_index, self.base_term = meta.index, meta.term

    def append(self, entries: list[Entry]) -> None:
        if not entries:
            return
        skip = self.base_index + 1 - entries[0].index
        if skip > 0:
            entries = entries[skip:]
            if not entries:
                return
        pos = entries[0].index - self.base_index - 1
        if pos > len(self.entries):
            raise AssertionError(
                f"append leaves a gap: log ends at {self.last_index}, entries start at "
                f"{entries[0].index}")
        del self.entries[pos:]
        self.entries.extend(entries)

    def set_hard_state(self, hard_state: HardState) -> None:
        self.hard_state = replace(hard_state)

    def compact(self, snapshot: Snapshot) -> None:
        """Keep ``snapshot`` and drop the entries it covers (the term stays readable)."""
        meta = snapshot.metadata
        if meta.index <= self.base_index:
            return
        cut = meta.index - self.base_index
        self.entries = self.entries[cut:]
        self.base_index, self.base_term = meta.index, meta.term
        self.snapshot = snapshot

    def apply(self, write: tuple[str, Any]) -> None:
        """Replay one recorded write."""
        kind, arg = write
        if kind == "snapshot":
            self.apply_snapshot(arg)
        elif kind == "append":
            self.append(arg)
        elif kind == "hard_state":
            self.set_hard_state(arg)
        else:
            self.compact(arg)


class SimStorage:
    """One node's disk: a durable image, the unsynced writes, and the core's view.

    ``new_core_storage`` builds the MemoryStorage a fresh RaftCore reads (from the
    durable image). Writes go through ``write_*``; ``sync`` makes them durable.
    """

    def __init__(self, conf_state: ConfState, storage_factory: Any):
        self._conf_state = conf_state
        self._factory = storage_factory
        self.durable = LogImage()
        self.live = LogImage()
        self.unsynced: list[tuple[str, Any]] = []
        self._dirty_from: int | None = None  # lowest durable index changed, unchecked
        self.core_storage = self.new_core_storage()

    @property
    def initial_conf(self) -> ConfState:
        """The configuration the disk starts with (empty for a joining node)."""
        return self._conf_state

    def new_core_storage(self) -> Any:
        """A MemoryStorage holding exactly the durable image."""
        ms = self._factory(self._conf_state)
        image = self.durable
        if image.snapshot is not None and not image.snapshot.is_empty():
            ms.apply_snapshot(image.snapshot)
        if image.base_index and (image.snapshot is None
                                 or image.snapshot.metadata.index != image.base_index):
            raise AssertionError("a compacted log must carry the snapshot it compacted to")
        ms.append(list(image.entries))
        ms.set_hard_state(image.hard_state)
        return ms

    # -- the driver's writes ------------------------------------------------------------

    def write_snapshot(self, snapshot: Snapshot) -> None:
        """Install a snapshot from the leader (volatile until ``sync``)."""
        self.core_storage.apply_snapshot(snapshot)
        self._record(("snapshot", snapshot))

    def write_entries(self, entries: list[Entry]) -> None:
        """Append entries, truncating a conflicting suffix (volatile until ``sync``)."""
        if entries:
            self.core_storage.append(entries)
            self._record(("append", list(entries)))

    def write_hard_state(self, hard_state: HardState) -> None:
        """Save the hard state (volatile until ``sync``)."""
        self.core_storage.set_hard_state(hard_state)
        self._record(("hard_state", replace(hard_state)))

    def compact(self, index: int, data: bytes, conf_state: ConfState | None = None
                ) -> Snapshot:
        """Snapshot the state machine at ``index`` (with the configuration in effect
        there, ``conf_state``; None keeps the previous snapshot's) and compact the log up
        to it. Models a snapshot file written, fsynced and renamed: durable at once, so
        unsynced log writes are synced first (a real store orders them the same way)."""
        self.sync()
        snap = self.core_storage.create_snapshot(index, conf_state, data)
        self.core_storage.compact(index)
        self.live.compact(snap)
        self.durable.compact(snap)
        return snap

    def _record(self, write: tuple[str, Any]) -> None:
        self.live.apply(write)
        self.unsynced.append(write)

    def sync(self) -> int:
        """fsync: every write so far becomes durable. Returns how many writes it made
        durable."""
        count = len(self.unsynced)
        for write in self.unsynced:
            self._make_durable(write)
        self.unsynced.clear()
        return count

    def _make_durable(self, write: tuple[str, Any]) -> None:
        kind, arg = write
        if kind == "append" and arg:
            self._mark_dirty(arg[0].index)
        elif kind == "snapshot":
            self._mark_dirty(arg.metadata.index + 1)
        self.durable.apply(write)

    def _mark_dirty(self, index: int) -> None:
        if self._dirty_from is None or index < self._dirty_from:
            self._dirty_from = index

    def take_dirty(self) -> int | None:
        """The lowest index whose durable entry changed since the last call (None if
        none): the invariant checker looks at entries from there on."""
        lo, self._dirty_from = self._dirty_from, None
        return lo

    def crash(self, rng: random.Random | None = None, torn: bool = False) -> str:
        """Lose the volatile layer. With ``rng``, a random prefix of the unsynced writes
        survives (as if flushed by the OS), and with ``torn`` the last surviving append
        may be cut short. Returns a short description for the trace."""
        kept = 0
        note = ""
        if rng is not None and self.unsynced:
            kept = rng.randint(0, len(self.unsynced))
            for write in self.unsynced[:kept]:
                self._make_durable(write)
            if torn and kept < len(self.unsynced) and self.unsynced[kept][0] == "append":
                entries = self.unsynced[kept][1]
                cut = rng.randint(0, len(entries))
                if cut:
                    self._make_durable(("append", entries[:cut]))
                    note = f", torn append kept {cut}/{len(entries)} entries"
        lost = len(self.unsynced) - kept
        self.unsynced.clear()
        self.live = self.durable.copy()
        self.core_storage = self.new_core_storage()
        return f"lost {lost} unsynced writes, {kept} survived{note}"

"""MemoryStorage: the core's storage contract held in memory (tests, simulation).

It offers the read contract the core uses (``initial_state``, ``first_index``,
``last_index``, ``term``, ``entries``, ``snapshot``) plus the writes a driver performs
when it handles a Ready (``append``, ``set_hard_state``, ``apply_snapshot``) and the
compaction hooks (``create_snapshot``, ``compact``). Nothing here is durable: ``sync``
is a no-op, so a "crash" in a simulation is modelled by keeping this object.
"""

from __future__ import annotations

from dataclasses import replace

from kvraft.raft.errors import CompactedError, SnapshotOutOfDateError, UnavailableError
from kvraft.raft.types import ConfState, Entry, HardState, Snapshot, SnapshotMetadata


def limit_size(entries: list[Entry], max_bytes: int | None) -> list[Entry]:
    """The longest prefix of ``entries`` whose total ``size()`` fits ``max_bytes``, but
    at least one entry (so a huge entry still makes progress)."""
    if max_bytes is None or not entries:
        return entries
    total = entries[0].size()
    n = 1
    while n < len(entries):
        total += entries[n].size()
        if total > max_bytes:
            break
        n += 1
    return entries if n == len(entries) else entries[:n]


class MemoryStorage:
    """An in-memory log, hard state and latest snapshot.

    ``_ents[0]`` is a dummy entry carrying the index and term of the last compacted
    entry (0/0 for a new log), so ``term(first_index() - 1)`` always answers.
    """

    def __init__(self, conf_state: ConfState | None = None):
        self._hard_state = HardState()
        self._snapshot = Snapshot()
        if conf_state is not None:
            self._snapshot.metadata.conf_state = conf_state
        self._ents: list[Entry] = [Entry(term=0, index=0)]

    # -- the read contract (what RaftCore calls) ------------------------------------------

    def initial_state(self) -> tuple[HardState, ConfState]:
        """The saved hard state and the configuration of the latest snapshot."""
        return replace(self._hard_state), self._snapshot.metadata.conf_state

    def first_index(self) -> int:
        """Index of the first entry held (1 for a new log)."""
        return self._ents[0].index + 1

    def last_index(self) -> int:
        """Index of the last entry (``first_index() - 1`` when empty)."""
        return self._ents[0].index + len(self._ents) - 1

    def term(self, index: int) -> int:
        """Term of the entry at ``index`` (CompactedError below, UnavailableError above)."""
        offset = self._ents[0].index
        if index < offset:
            raise CompactedError(f"index {index} is compacted (first index {offset + 1})")
        if index - offset >= len(self._ents):
            raise UnavailableError(f"index {index} is beyond the last index "
                                   f"{self.last_index()}")
        return self._ents[index - offset].term

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries ``[lo, hi)``, at most ``max_bytes`` of them but at least one."""
        offset = self._ents[0].index
        if lo <= offset:
            raise CompactedError(f"index {lo} is compacted (first index {offset + 1})")
        if hi > self.last_index() + 1:
            raise UnavailableError(f"entries [{lo}, {hi}) go beyond the last index "
                                   f"{self.last_index()}")
        if lo >= hi:
            return []
        return limit_size(self._ents[lo - offset:hi - offset], max_bytes)

    def snapshot(self) -> Snapshot:
        """The latest snapshot (``is_empty()`` when none was taken)."""
        return self._snapshot

    # -- writes (what a driver does with a Ready) -----------------------------------------

    def set_hard_state(self, hard_state: HardState) -> None:
        """Save the hard state (a copy)."""
        self._hard_state = replace(hard_state)

    def append(self, entries: list[Entry]) -> None:
        """Append contiguous entries, first discarding a conflicting suffix (Raft 5.3).

        Entries at or below the compaction point are ignored (they are in the snapshot).
        """
        if not entries:
            return
        first = self.first_index()
        last = entries[0].index + len(entries) - 1
        if last < first:
            return
        if entries[0].index < first:
            entries = entries[first - entries[0].index:]
        offset = entries[0].index - self._ents[0].index
        if offset > len(self._ents):
            raise ValueError(f"append would leave a gap: log ends at {self.last_index()}, "
                             f"entries start at {entries[0].index}")
        del self._ents[offset:]
        self._ents.extend(entries)

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        """Replace the whole log with ``snapshot`` (installed from the leader)."""
        meta = snapshot.metadata
        if meta.index <= self._snapshot.metadata.index:
            raise SnapshotOutOfDateError(
                f"snapshot at {meta.index} is not newer than the held one at "
                f"{self._snapshot.metadata.index}")
        self._snapshot = snapshot
        self._ents = [Entry(term=meta.term, index=meta.index)]

    def create_snapshot(self, index: int, conf_state: ConfState | None,
                        data: bytes) -> Snapshot:
        """Record a snapshot of the state machine as of ``index`` (which must be held)."""
        if index <= self._snapshot.metadata.index:
            raise SnapshotOutOfDateError(
                f"snapshot at {index} is not newer than the held one at "
                f"{self._snapshot.metadata.index}")
        if index > self.last_index():
            raise UnavailableError(f"cannot snapshot at {index}: the log ends at "
                                   f"{self.last_index()}")
        if conf_state is None:
            conf_state = self._snapshot.metadata.conf_state
        self._snapshot = Snapshot(
            metadata=SnapshotMetadata(index=index, term=self.term(index),
                                      conf_state=conf_state),
            data=data)
        return self._snapshot

    def compact(self, index: int) -> None:
        """Discard entries up to and including ``index``; its term stays readable."""
        offset = self._ents[0].index
        if index <= offset:
            raise CompactedError(f"index {index} is already compacted")
        if index > self.last_index():
            raise UnavailableError(f"cannot compact to {index}: the log ends at "
                                   f"{self.last_index()}")
        cut = index - offset
        sentinel = Entry(term=self._ents[cut].term, index=index)
        self._ents = [sentinel, *self._ents[cut + 1:]]

    # -- ILogStore extras, so drivers can treat it like a real log store --------------------

    def reset(self, index: int, term: int) -> None:
        """Discard the whole log and start it after ``index``/``term``."""
        self._ents = [Entry(term=term, index=index)]

    def sync(self) -> None:
        """Nothing to do: memory is as durable as this storage gets."""

    def close(self) -> None:
        """Nothing to release."""

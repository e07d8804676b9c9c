"""The Raft log as the core sees it: durable storage plus an unstable tail.

``Unstable`` holds what was appended (or a snapshot that was received) but is not yet
confirmed durable by ``RaftCore.advance``: a list of entries starting at ``offset``, not
a dict, so appends and slicing are cheap. ``RaftLog`` stitches it onto the storage read
contract and keeps ``committed`` and ``applied``.

Invariants: ``applied <= applying <= committed <= last_index()``;
``unstable.offset <= unstable.offset_in_progress <= unstable.offset + len(entries)``.
"""

from __future__ import annotations

from kvraft.raft.errors import CompactedError, LogLostError, StorageError, UnavailableError
from kvraft.raft.storage import limit_size
from kvraft.raft.types import Entry, Snapshot


class Unstable:
    """Entries and a snapshot not yet durable. ``offset`` is the index of ``entries[0]``.

    ``offset_in_progress``/``snapshot_in_progress`` mark what was handed to the driver in
    the outstanding Ready (being written) so the next Ready does not repeat it.
    """

    __slots__ = ("snapshot", "entries", "offset", "snapshot_in_progress",
                 "offset_in_progress")

    def __init__(self, offset: int):
        self.snapshot: Snapshot | None = None
        self.entries: list[Entry] = []
        self.offset = offset
        self.snapshot_in_progress = False
        self.offset_in_progress = offset

    def maybe_first_index(self) -> int | None:
        """The first index if a pending snapshot defines it."""
        if self.snapshot is not None:
            return self.snapshot.metadata.index + 1
        return None

    def maybe_last_index(self) -> int | None:
        """The last index if the unstable part defines it."""
        if self.entries:
            return self.offset + len(self.entries) - 1
        if self.snapshot is not None:
            return self.snapshot.metadata.index
        return None

    def maybe_term(self, index: int) -> int | None:
        """The term at ``index`` if the unstable part knows it."""
        if index < self.offset:
            snap = self.snapshot
            if snap is not None and snap.metadata.index == index:
                return snap.metadata.term
            return None
        n = index - self.offset
        if n >= len(self.entries):
            return None
        return self.entries[n].term

    def next_entries(self) -> list[Entry]:
        """Entries not yet handed to the driver."""
        start = self.offset_in_progress - self.offset
        if start >= len(self.entries):
            return []
        return self.entries[start:]

    def next_snapshot(self) -> Snapshot | None:
        """The snapshot, if it was not yet handed to the driver."""
        if self.snapshot is None or self.snapshot_in_progress:
            return None
        return self.snapshot

    def accept_in_progress(self) -> None:
        """Everything unstable now belongs to the outstanding Ready."""
        if self.entries:
            self.offset_in_progress = self.entries[-1].index + 1
        if self.snapshot is not None:
            self.snapshot_in_progress = True

    def stable_to(self, index: int, term: int) -> None:
        """Entries up to ``index`` (of ``term``) are durable; drop them.

        If the entry at ``index`` was replaced meanwhile (a new leader truncated it), the
        write is stale and nothing is dropped: the replacement is written later.
        """
        got = self.maybe_term(index)
        if got is None or index < self.offset or got != term:
            return
        del self.entries[:index + 1 - self.offset]
        self.offset = index + 1
        self.offset_in_progress = max(self.offset_in_progress, self.offset)

    def stable_snap_to(self, index: int) -> None:
        """The snapshot at ``index`` is durable."""
        if self.snapshot is not None and self.snapshot.metadata.index == index:
            self.snapshot = None
            self.snapshot_in_progress = False

    def restore(self, snapshot: Snapshot) -> None:
        """Replace everything with ``snapshot``."""
        self.offset = snapshot.metadata.index + 1
        self.offset_in_progress = self.offset
        self.entries = []
        self.snapshot = snapshot
        self.snapshot_in_progress = False

    def truncate_and_append(self, entries: list[Entry]) -> None:
        """Append ``entries``, discarding any conflicting suffix first."""
        start = entries[0].index
        if start == self.offset + len(self.entries):
            self.entries.extend(entries)
        elif start <= self.offset:
            # Replaces everything unstable (and a suffix of storage, rewritten later).
            self.entries = list(entries)
            self.offset = start
            self.offset_in_progress = start
        else:
            del self.entries[start - self.offset:]
            self.entries.extend(entries)
            self.offset_in_progress = min(self.offset_in_progress, start)

    def slice(self, lo: int, hi: int) -> list[Entry]:
        """Entries ``[lo, hi)``, which must lie within the unstable part."""
        if lo < self.offset or hi > self.offset + len(self.entries) or lo > hi:
            raise AssertionError(f"unstable.slice[{lo},{hi}) out of bounds "
                                 f"[{self.offset},{self.offset + len(self.entries)})")
        return self.entries[lo - self.offset:hi - self.offset]


class RaftLog:
    """Storage plus the unstable tail, with the commit and apply cursors."""

    def __init__(self, storage, max_applying_bytes: int):
        self.storage = storage
        self.max_applying_bytes = max_applying_bytes
        first = storage.first_index()
        last = storage.last_index()
        self.unstable = Unstable(last + 1)
        self.committed = first - 1  # highest index known committed
        self.applied = first - 1  # highest index the driver applied; <= committed
        self.applying = first - 1  # highest index handed out to apply; applied <= it

    # -- indexes and terms --------------------------------------------------------------

    def first_index(self) -> int:
        """Index of the first entry held."""
        i = self.unstable.maybe_first_index()
        return i if i is not None else self.storage.first_index()

    def last_index(self) -> int:
        """Index of the last entry (unstable or durable)."""
        i = self.unstable.maybe_last_index()
        return i if i is not None else self.storage.last_index()

    def term(self, index: int) -> int:
        """Term at ``index``; CompactedError / UnavailableError outside the held range."""
        t = self.unstable.maybe_term(index)
        if t is not None:
            return t
        if index < self.first_index() - 1:
            raise CompactedError(f"index {index} is compacted")
        if index > self.last_index():
            raise UnavailableError(f"index {index} is beyond the last index")
        return self.storage.term(index)

    def zero_term_on_err(self, index: int) -> int:
        """Term at ``index``, or 0 if it is not held."""
        try:
            return self.term(index)
        except StorageError:
            return 0

    def last_term(self) -> int:
        """Term of the last entry."""
        return self.term(self.last_index())

    def match_term(self, index: int, term: int) -> bool:
        """True if the entry at ``index`` has ``term`` (the log-matching check)."""
        try:
            return self.term(index) == term
        except StorageError:
            return False

    def is_up_to_date(self, last_index: int, term: int) -> bool:
        """True if a log ending at ``last_index``/``term`` is at least as up to date as
        ours (Raft 5.4.1)."""
        our_term = self.last_term()
        return term > our_term or (term == our_term and last_index >= self.last_index())

    # -- appending ----------------------------------------------------------------------

    def maybe_append(self, index: int, log_term: int, committed: int,
                     entries: list[Entry]) -> int | None:
        """Follower side of AppendEntries: if our log matches at ``index``/``log_term``,
        append ``entries`` (truncating a conflict), advance the commit index and return
        the index of the last new entry; otherwise return None."""
        if not self.match_term(index, log_term):
            return None
        last_new = index + len(entries)
        conflict = self.find_conflict(entries)
        if conflict:
            if conflict <= self.committed:
                raise AssertionError(f"entry {conflict} conflicts with committed entry "
                                     f"(committed {self.committed})")
            self.append(entries[conflict - (index + 1):])
        self.commit_to(min(committed, last_new))
        return last_new

    def append(self, entries: list[Entry]) -> int:
        """Append (truncating a conflicting suffix) and return the new last index."""
        if not entries:
            return self.last_index()
        after = entries[0].index - 1
        if after < self.committed:
            raise AssertionError(f"append after {after} would rewrite committed entries "
                                 f"(committed {self.committed})")
        self.unstable.truncate_and_append(entries)
        return self.last_index()

    def find_conflict(self, entries: list[Entry]) -> int:
        """Index of the first entry whose term differs from ours (or which we lack), or 0."""
        for e in entries:
            if not self.match_term(e.index, e.term):
                return e.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """The largest index ``<= index`` whose term is ``<= term``, and that term.

        Fast backtracking (Raft 5.3): both sides skip whole terms that cannot match.
        An index we cannot read is returned with term 0 ("unknown, maybe a match").
        """
        while index > 0:
            try:
                ours = self.term(index)
            except StorageError:
                return index, 0
            if ours <= term:
                return index, ours
            index -= 1
        return 0, 0

    # -- reading ------------------------------------------------------------------------

    def slice(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries ``[lo, hi)`` up to ``max_bytes`` (at least one); CompactedError if
        ``lo`` was compacted."""
        if lo > hi:
            raise AssertionError(f"invalid slice [{lo}, {hi})")
        if lo < self.first_index():
            raise CompactedError(f"index {lo} is compacted")
        if hi > self.last_index() + 1:
            raise AssertionError(f"slice [{lo}, {hi}) beyond last index {self.last_index()}")
        if lo == hi:
            return []
        offset = self.unstable.offset
        if lo >= offset:
            return limit_size(self.unstable.slice(lo, hi), max_bytes)
        cut = min(hi, offset)
        ents = self.storage.entries(lo, cut, max_bytes)
        if hi <= cut or len(ents) < cut - lo:
            return ents
        ents = list(ents)
        total = sum(e.size() for e in ents)
        for e in self.unstable.slice(cut, hi):
            total += e.size()
            if max_bytes is not None and total > max_bytes:
                break
            ents.append(e)
        return ents

    def entries_from(self, index: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries from ``index`` to the end, up to ``max_bytes``."""
        last = self.last_index()
        if index > last:
            return []
        return self.slice(index, last + 1, max_bytes)

    def snapshot(self) -> Snapshot:
        """The newest snapshot: a pending unstable one, else storage's."""
        if self.unstable.snapshot is not None:
            return self.unstable.snapshot
        return self.storage.snapshot()

    # -- Ready support ------------------------------------------------------------------

    def next_unstable_entries(self) -> list[Entry]:
        """Entries to hand out in the next Ready for persistence."""
        return self.unstable.next_entries()

    def has_next_unstable_entries(self) -> bool:
        """True if there are entries not yet handed out."""
        u = self.unstable
        return u.offset_in_progress < u.offset + len(u.entries)

    def has_next_or_in_progress_snapshot(self) -> bool:
        """True while a received snapshot is not yet durable."""
        return self.unstable.snapshot is not None

    def next_committed_entries(self) -> list[Entry]:
        """Committed entries to apply next (none while a snapshot is pending)."""
        if self.unstable.snapshot is not None:
            return []
        lo, hi = self.applying + 1, self.committed + 1
        if lo >= hi:
            return []
        return self.slice(lo, hi, self.max_applying_bytes)

    def has_next_committed_entries(self) -> bool:
        """True if committed entries wait to be applied."""
        return self.unstable.snapshot is None and self.committed > self.applying

    # -- cursors ------------------------------------------------------------------------

    def commit_to(self, index: int) -> None:
        """Raise the commit index (never lowers it)."""
        if index > self.committed:
            if index > self.last_index():
                raise LogLostError(
                    f"commit index {index} is beyond the last index {self.last_index()}: "
                    "was the log corrupted, truncated or lost?")
            self.committed = index

    def maybe_commit(self, index: int, term: int) -> bool:
        """Commit ``index`` if it is newer and of ``term`` (Raft 5.4.2: a leader only
        commits entries of its own term by counting replicas)."""
        if index > self.committed and self.zero_term_on_err(index) == term:
            self.commit_to(index)
            return True
        return False

    def applied_to(self, index: int) -> None:
        """The driver applied everything up to ``index``."""
        if index == 0:
            return
        if index > self.committed or index < self.applied:
            raise AssertionError(f"applied index {index} out of range "
                                 f"[{self.applied}, {self.committed}]")
        self.applied = index
        self.applying = max(self.applying, index)

    def accept_applying(self, index: int) -> None:
        """Committed entries up to ``index`` were handed out to be applied."""
        self.applying = max(self.applying, index)

    def restore(self, snapshot: Snapshot) -> None:
        """Replace the log with ``snapshot`` (a follower installing the leader's)."""
        self.committed = snapshot.metadata.index
        self.unstable.restore(snapshot)

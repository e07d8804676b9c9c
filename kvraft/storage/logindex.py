"""The in-memory side of every ILogStore here: index ranges, terms and a tail cache.

Memory budget (the WAL at 1M entries): the terms of all held entries live in one
``array('Q')`` (8 bytes an entry, 8 MB at 1M; the WAL adds 8 bytes of file offset), and
only a suffix of the log is kept as ``Entry`` objects, bounded by ``cache_bytes_max``
counted as real memory (``cache_cost``: data + ``ENTRY_OBJECT_BYTES``). The core reads
that suffix constantly (entries to send to followers that keep up, committed entries to
apply); older entries, needed by a lagging follower or a restart's replay, are read
back from disk by the backend's ``_read_uncached``. The memory backend keeps every
entry (no bound, nothing on disk).
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence

from kvraft.raft.types import Entry
from kvraft.storage.errors import CompactedError, UnavailableError

ENTRY_OBJECT_BYTES = 160
"""Python memory of an ``Entry`` besides its data (the object, its ints, the bytes
header, the list slot): what the cache charges per entry on top of ``len(data)``."""


def cache_cost(entry: Entry) -> int:
    """Bytes an entry costs the cache: its data plus ``ENTRY_OBJECT_BYTES``."""
    return len(entry.data) + ENTRY_OBJECT_BYTES


def limit_size(entries: list[Entry], max_bytes: int | None, used: int = 0) -> list[Entry]:
    """The longest prefix of ``entries`` whose ``size()`` total, added to ``used``, fits
    ``max_bytes``; at least one entry when ``used`` is 0 (a huge entry still moves)."""
    if max_bytes is None:
        return entries
    total = used
    for n, entry in enumerate(entries):
        total += entry.size()
        if total > max_bytes and (n > 0 or used > 0):
            return entries[:n]
    return entries


class IndexedLog:
    """Ranges, terms and the tail cache; subclasses add durability.

    Invariants (``check_invariants``):

    * ``first_index() == snap_index + 1`` and ``last_index() == snap_index + len(terms)``;
      ``term(snap_index) == snap_term`` (0/0 for a new log).
    * terms never decrease along the log (Raft's Log Matching relies on it).
    * the cache holds entries ``[cache_first, last_index()]`` exactly, contiguous, as the
      list slice ``_cache[_cache_head:]``; ``snap_index < cache_first <= last_index() + 1``.
    * ``_cache_bytes`` is the ``cache_cost`` total of that slice.
    """

    def __init__(self, snap_index: int = 0, snap_term: int = 0,
                 cache_bytes_max: int | None = None):
        self._snap_index = snap_index
        self._snap_term = snap_term
        self._terms = array("Q")
        self._cache: list[Entry] = []
        self._cache_head = 0  # cache[:head] are evicted slots awaiting one bulk delete
        self._cache_first = snap_index + 1
        self._cache_bytes = 0
        self._cache_bytes_max = cache_bytes_max  # None: keep everything (memory backend)

    # -- the read contract -------------------------------------------------------------

    def first_index(self) -> int:
        """Index of the first entry held (snapshot index + 1)."""
        return self._snap_index + 1

    def last_index(self) -> int:
        """Index of the last appended entry (``first_index() - 1`` when empty)."""
        return self._snap_index + len(self._terms)

    def term(self, index: int) -> int:
        """Term of the entry at ``index``; ``CompactedError`` / ``UnavailableError``
        outside ``first_index() - 1 .. last_index()``."""
        offset = index - self._snap_index
        if offset <= 0:
            if offset == 0:
                return self._snap_term
            raise CompactedError(
                f"log index {index} is compacted: the log starts at {self._snap_index + 1}")
        if offset > len(self._terms):
            raise UnavailableError(
                f"log index {index} is beyond the last index {self.last_index()}")
        return self._terms[offset - 1]

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries ``[lo, hi)``, cut to ``max_bytes`` (but at least one)."""
        if lo > hi:
            raise ValueError(f"entries({lo}, {hi}): lo must not exceed hi")
        if lo <= self._snap_index:
            raise CompactedError(
                f"log index {lo} is compacted: the log starts at {self._snap_index + 1}")
        if hi > self.last_index() + 1:
            raise UnavailableError(
                f"entries [{lo}, {hi}) go beyond the last index {self.last_index()}")
        if lo == hi:
            return []
        out: list[Entry] = []
        used = 0
        if lo < self._cache_first:
            cold_hi = min(hi, self._cache_first)
            out = limit_size(self._read_uncached(lo, cold_hi, max_bytes), max_bytes)
            if len(out) < cold_hi - lo or cold_hi == hi:
                return out
            used = sum(e.size() for e in out) if max_bytes is not None else 0
            lo = cold_hi
        base = self._cache_head - self._cache_first
        hot = self._cache[base + lo:base + hi]
        return out + limit_size(hot, max_bytes, used) if out else limit_size(hot, max_bytes)

    def _read_uncached(self, lo: int, hi: int, max_bytes: int | None) -> list[Entry]:
        """Entries ``[lo, hi)`` (all below the cache) from durable storage; may stop early
        once ``max_bytes`` is exceeded. Backends with a bounded cache override this."""
        raise AssertionError(f"entries [{lo}, {hi}) are not cached and there is no disk")

    # -- mutations, called by the backends after their durable step ---------------------

    def _check_append(self, entries: Sequence[Entry]) -> bool:
        """Validate ``entries`` for ``append``; True when they truncate a suffix.

        Raises ``ValueError`` for programmer errors: gaps, non-contiguous indexes,
        decreasing terms, or an append below ``first_index()``.
        """
        first = entries[0].index
        if first <= self._snap_index:
            raise ValueError(
                f"append at index {first} is below the first index {self._snap_index + 1}: "
                "compacted entries cannot be replaced")
        last = self.last_index()
        if first > last + 1:
            raise ValueError(f"append at index {first} leaves a gap after the last index "
                             f"{last}")
        previous_term = self.term(first - 1)
        for offset, entry in enumerate(entries):
            if entry.index != first + offset:
                raise ValueError(f"append: entry {offset} has index {entry.index}, "
                                 f"expected {first + offset} (entries must be contiguous)")
            if entry.term < previous_term:
                raise ValueError(f"append: entry {entry.index} has term {entry.term}, "
                                 f"below the term {previous_term} before it")
            previous_term = entry.term
        return first <= last

    def _index_append(self, entries: Sequence[Entry]) -> None:
        """Record ``entries`` starting at ``last_index() + 1``."""
        self._terms.extend(e.term for e in entries)
        self._cache.extend(entries)
        self._cache_bytes += sum(map(cache_cost, entries))
        self._evict()

    def _index_truncate(self, index: int) -> None:
        """Forget entries ``index`` and later."""
        del self._terms[index - self._snap_index - 1:]
        if index <= self._cache_first:
            self._clear_cache(index)
            return
        cut = self._cache_head + index - self._cache_first
        self._cache_bytes -= sum(map(cache_cost, self._cache[cut:]))
        del self._cache[cut:]

    def _index_compact(self, index: int) -> None:
        """Forget entries up to and including ``index``, keeping its term."""
        self._snap_term = self.term(index)
        del self._terms[:index - self._snap_index]
        self._snap_index = index
        if self._cache_first <= index:
            drop = index + 1 - self._cache_first
            end = self._cache_head + drop
            self._cache_bytes -= sum(map(cache_cost, self._cache[self._cache_head:end]))
            self._cache_head = end
            self._cache_first = index + 1
            self._pack_cache()

    def _index_reset(self, index: int, term: int) -> None:
        """Forget every entry; the log restarts after ``index``/``term``."""
        self._snap_index, self._snap_term = index, term
        self._terms = array("Q")
        self._clear_cache(index + 1)

    def _clear_cache(self, first: int) -> None:
        self._cache = []
        self._cache_head = 0
        self._cache_first = first
        self._cache_bytes = 0

    def _evict(self) -> None:
        limit = self._cache_bytes_max
        if limit is None or self._cache_bytes <= limit:
            return
        cache, head = self._cache, self._cache_head
        while self._cache_bytes > limit and head < len(cache):
            self._cache_bytes -= cache_cost(cache[head])
            head += 1
        self._cache_first += head - self._cache_head
        self._cache_head = head
        self._pack_cache()

    def _pack_cache(self) -> None:
        # Evicting from the front of a list one by one is quadratic; drop the evicted
        # slots in one go once they are half the list.
        if self._cache_head and self._cache_head * 2 >= len(self._cache):
            del self._cache[:self._cache_head]
            self._cache_head = 0

    def check_invariants(self) -> None:
        """Assert the invariants listed in the class docstring (tests call this)."""
        assert self.first_index() == self._snap_index + 1
        assert self.last_index() == self._snap_index + len(self._terms)
        assert self._snap_index < self._cache_first <= self.last_index() + 1
        hot = self._cache[self._cache_head:]
        assert len(hot) == self.last_index() + 1 - self._cache_first, "cache is not a suffix"
        assert self._cache_bytes == sum(map(cache_cost, hot))
        for offset, entry in enumerate(hot):
            assert entry.index == self._cache_first + offset
            assert entry.term == self.term(entry.index)
        previous = self._snap_term
        for term in self._terms:
            assert term >= previous, "terms decrease"
            previous = term

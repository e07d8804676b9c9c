"""Raft safety properties, checked continuously while a simulation runs (Raft paper,
Figure 3), plus durability: nothing committed is ever lost to a crash.

The simulator calls the ``note_*`` hooks as things happen; each hook checks what it can
in O(1) or O(entries touched), except ``note_leader`` which walks the committed log once
per election. A broken property raises ``InvariantViolation`` at the first event that
shows it, so the trace ends right where things went wrong.
"""

from __future__ import annotations

from typing import Any

from kvraft.testing.durable_storage import LogImage

__all__ = ["InvariantViolation", "SafetyMonitor"]


class InvariantViolation(AssertionError):  # noqa: N818 (the name issue #3 asks for)
    """A safety property failed. ``name`` is the property, ``detail`` what was seen;
    ``seed`` (set by the simulator) replays it: ``python -m kvraft.testing.sim --seed N
    --trace``."""

    def __init__(self, name: str, detail: str, seed: int | None = None):
        self.name = name
        self.detail = detail
        self.seed = seed
        super().__init__(self._text())

    def _text(self) -> str:
        where = f" (seed {self.seed})" if self.seed is not None else ""
        return f"invariant {self.name!r} violated{where}: {self.detail}"

    def with_seed(self, seed: int) -> InvariantViolation:
        """Record the seed and refresh the message."""
        self.seed = seed
        self.args = (self._text(),)
        return self


class SafetyMonitor:
    """The cluster-wide facts the invariants need, updated by the simulator's hooks."""

    def __init__(self, nodes: tuple[str, ...]):
        self.nodes = nodes
        self.quorum = len(nodes) // 2 + 1
        self.leaders: dict[int, str] = {}  # term -> the one leader of that term
        # Log matching: every (index, term) ever made durable anywhere, with its data and
        # the term of the entry before it. Raft creates each (index, term) once.
        self._entries: dict[tuple[int, int], tuple[bytes, int | None, str]] = {}
        # State machine safety: index -> (term, data, node) of the first application.
        self.applied: dict[int, tuple[int, bytes, str]] = {}
        # The lowest term in which each applied index was known committed (the applier's
        # term bounds the committing leader's term from above): leader completeness binds
        # only leaders of LATER terms; a stale leader of an earlier term may lack it.
        self.commit_terms: dict[int, int] = {}
        self._max_applied = 0
        self.commit_index = 0
        self.commit_term = 0
        # The configuration the leader counted when it committed ``commit_index``:
        # (incoming voters, outgoing voters); outgoing is empty outside a joint change.
        self.commit_voters: tuple[tuple[str, ...], tuple[str, ...]] = (nodes, ())
        self.elections = 0

    # -- election safety ----------------------------------------------------------------

    def note_leader(self, node: str, term: int) -> bool:
        """``node`` is leader of ``term``. Returns True the first time (a new election);
        the caller then checks leader completeness once the leader's whole log is in its
        storage, up to ``max_applied`` as it is now."""
        holder = self.leaders.get(term)
        if holder is not None and holder != node:
            raise InvariantViolation(
                "election safety", f"two leaders in term {term}: {holder} and {node}")
        if holder is None:
            self.leaders[term] = node
            self.elections += 1
            return True
        return False

    @property
    def max_applied(self) -> int:
        """Highest index applied anywhere."""
        return self._max_applied

    def check_leader_completeness(self, node: str, term: int, log: LogImage,
                                  upto: int) -> None:
        """Every entry committed (applied somewhere) up to ``upto`` when ``node`` won
        ``term`` is in its log ``log``."""
        for index in range(1, upto + 1):
            seen = self.applied.get(index)
            if seen is None or self.commit_terms.get(index, 0) >= term:
                continue
            entry_term, _, first = seen
            if not log.covers(index, entry_term):
                have = log.term(index)
                raise InvariantViolation(
                    "leader completeness",
                    f"{node} became leader of term {term} without committed entry "
                    f"{index} (term {entry_term}, first applied by {first}); its log has "
                    f"{'nothing' if have is None else f'term {have}'} there (log ends at "
                    f"{log.last_index}, compacted to {log.base_index})")

    # -- log matching ---------------------------------------------------------------------

    def note_durable(self, node: str, image: LogImage, lo: int) -> None:
        """Entries ``lo..`` of ``node``'s durable ``image`` just became durable."""
        start = max(lo, image.base_index + 1)
        for index in range(start, image.last_index + 1):
            entry = image.entry(index)
            prev = image.term(index - 1)
            key = (index, entry.term)
            seen = self._entries.get(key)
            if seen is None:
                self._entries[key] = (entry.data, prev, node)
                continue
            data, seen_prev, first = seen
            if data != entry.data:
                raise InvariantViolation(
                    "log matching",
                    f"entry {index} of term {entry.term} differs between {first} and {node}: "
                    f"{data[:40]!r} vs {entry.data[:40]!r}")
            if prev is not None and seen_prev is not None and prev != seen_prev:
                raise InvariantViolation(
                    "log matching",
                    f"entry {index} of term {entry.term} follows term {seen_prev} in {first} "
                    f"but term {prev} in {node}: equal entries must have equal prefixes")

    # -- commitment and durability ----------------------------------------------------

    def note_commit(self, node: str, index: int, term: int | None,
                    conf: Any = None) -> None:
        """``node`` learned that entries up to ``index`` (of ``term`` in its log) are
        committed. ``conf`` (a ConfState) is the configuration whose quorum committed
        them, when known (a leader's at the moment its commit index moved); without it
        the cluster's initial nodes are assumed."""
        if index > self.commit_index and term is not None:
            self.commit_index, self.commit_term = index, term
            if conf is not None:
                self.commit_voters = (tuple(conf.voters), tuple(conf.voters_outgoing))

    def check_committed_durable(self, durable: dict[str, LogImage]) -> None:
        """The highest committed entry is in a quorum's durable logs (or their
        snapshots) of the configuration that committed it (a majority of each half of a
        joint configuration): crashes may lose unsynced writes, never committed ones."""
        index, term = self.commit_index, self.commit_term
        if index == 0:
            return
        for half in self.commit_voters:
            if not half:
                continue
            holders = [n for n in half if n in durable and durable[n].covers(index, term)]
            quorum = len(half) // 2 + 1
            if len(holders) < quorum:
                detail = ", ".join(
                    f"{n}: term {durable[n].term(index)} (log ends {durable[n].last_index})"
                    for n in half if n in durable)
                raise InvariantViolation(
                    "committed entries are durable",
                    f"committed entry {index} (term {term}) is durable on only {holders}, "
                    f"fewer than a quorum of {quorum} of voters {list(half)}; durable logs "
                    f"at {index}: {detail}")

    # -- state machine safety -----------------------------------------------------------

    def note_apply(self, node: str, index: int, term: int, data: bytes, last_applied: int,
                   commit_index: int, node_term: int = 0) -> None:
        """``node`` applies entry ``index`` after ``last_applied`` (this incarnation)
        with its commit index at ``commit_index``, while in term ``node_term``."""
        known = self.commit_terms.get(index)
        if node_term and (known is None or node_term < known):
            self.commit_terms[index] = node_term
        if index != last_applied + 1:
            raise InvariantViolation(
                "applied index monotonic",
                f"{node} applied entry {index} right after {last_applied}")
        if index > commit_index:
            raise InvariantViolation(
                "applied never beyond commit",
                f"{node} applied entry {index} but its commit index is {commit_index}")
        seen = self.applied.get(index)
        if seen is None:
            self.applied[index] = (term, data, node)
            self._max_applied = max(self._max_applied, index)
            return
        seen_term, seen_data, first = seen
        if seen_term != term or seen_data != data:
            raise InvariantViolation(
                "state machine safety",
                f"entry {index}: {first} applied term {seen_term} {seen_data[:40]!r}, "
                f"{node} applied term {term} {data[:40]!r}")

    def summary(self) -> dict[str, Any]:
        """Counters for the run summary."""
        return {"elections": self.elections, "commit_index": self.commit_index}

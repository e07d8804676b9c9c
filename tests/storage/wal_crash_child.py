"""Crash-test workload for the WAL, shared by the test process and its children.

As a script it is a *zygote*: it imports the storage code once, then forks one worker
per ``run <data_dir> <seed>`` line read on stdin. A worker appends (sometimes over a
conflicting suffix), compacts and syncs a WAL in a seeded loop and prints
``synced <n>`` to stdout once its n-th operation is durable; the test kills it with
SIGKILL. Forking from a warm zygote makes a kill cost milliseconds instead of an
interpreter start, so a test can afford dozens of them.

Protocol (one line each, stdout written with single ``os.write`` calls, so lines
from the zygote and its workers never interleave inside a line)::

    stdin  run <data_dir> <seed>   ->  stdout  pid <pid>, then the worker's lines
    stdin  wait <pid>              ->  stdout  exit <pid> <wait status>
    stdin  quit
    worker: synced <n> | error <message>
"""

from __future__ import annotations

import os
import random
import sys
from dataclasses import dataclass, field

from storage_support import entry_data

from kvraft.raft.types import Entry

OPTIONS = {"segment_bytes_max": 1500, "cache_bytes_max": 2000}
"""Tiny segments: the workload rolls, truncates across and compacts whole segments."""


@dataclass
class Model:
    """What a log holds: the entry it starts after, and the terms of its entries
    (entry data is ``entry_data(index, term)``, so terms say everything)."""

    snap_index: int = 0
    snap_term: int = 0
    terms: list[int] = field(default_factory=list)

    @property
    def last_index(self) -> int:
        return self.snap_index + len(self.terms)

    @property
    def last_term(self) -> int:
        return self.terms[-1] if self.terms else self.snap_term

    def copy(self) -> Model:
        return Model(self.snap_index, self.snap_term, list(self.terms))

    @classmethod
    def from_log(cls, log) -> Model:
        """Read a log store, checking every entry's data on the way."""
        first, last = log.first_index(), log.last_index()
        model = cls(first - 1, log.term(first - 1), [])
        entries = log.entries(first, last + 1) if last >= first else []
        for offset, entry in enumerate(entries):
            assert entry.index == first + offset, entry
            assert entry.data == entry_data(entry.index, entry.term), entry
            model.terms.append(entry.term)
        return model

    def apply(self, op: tuple) -> None:
        kind = op[0]
        if kind == "append":
            _, start, term, count = op
            del self.terms[start - self.snap_index - 1:]
            self.terms.extend([term] * count)
        elif kind == "compact":
            index = op[1]
            if index > self.snap_index:
                self.snap_term = self.terms[index - self.snap_index - 1]
                del self.terms[:index - self.snap_index]
                self.snap_index = index
        elif kind == "reset":
            _, self.snap_index, self.snap_term = op
            self.terms = []


def next_op(rng: random.Random, model: Model) -> tuple:
    """The next operation of the seeded workload for a log in state ``model``."""
    last = model.last_index
    roll = rng.random()
    if roll < 0.06 and last > model.snap_index:
        return ("compact", rng.randint(model.snap_index + 1, last))
    if roll < 0.08:
        return ("reset", max(model.snap_index, last + rng.randint(-3, 10)),
                model.last_term + 1)
    if roll < 0.25 and last > model.snap_index:
        start = rng.randint(max(model.snap_index + 1, last - 40), last)
        return ("append", start, model.last_term + 1, rng.randint(1, 30))
    return ("append", last + 1, model.last_term, rng.randint(1, 40))


def apply_op(storage, op: tuple) -> None:
    """Perform ``op`` on a storage and make it durable."""
    kind = op[0]
    if kind == "append":
        _, start, term, count = op
        storage.log.append([Entry(term=term, index=i, data=entry_data(i, term))
                            for i in range(start, start + count)])
    elif kind == "compact":
        storage.log.compact(op[1])
    elif kind == "reset":
        storage.log.reset(op[1], op[2])
    storage.log.sync()


def acceptable(observed: Model, before: Model, op: tuple) -> bool:
    """Whether a crash during ``op`` (started from ``before``) may leave ``observed``:
    the state before, the state after, or a prefix-preserving state in between, and
    never stale entries behind new ones."""
    after = before.copy()
    after.apply(op)
    if observed in (before, after):
        return True
    kind = op[0]
    if kind == "append":
        _, start, term, count = op
        if observed.snap_index != before.snap_index:
            return False
        keep = start - before.snap_index - 1
        n = len(observed.terms)
        if observed.terms == before.terms[:n] and n >= keep:
            return True  # the cut happened partly (or not at all), nothing new yet
        return observed.terms == before.terms[:keep] + [term] * (n - keep) and \
            keep <= n <= keep + count
    if kind == "compact":  # the state file and the segments agree either way
        return observed.snap_index == op[1] and observed.terms == after.terms
    return False


def _worker(data_dir: str, seed: int) -> None:
    from kvraft.storage.wal import open_storage

    storage = open_storage(data_dir, OPTIONS)
    model = Model.from_log(storage.log)
    rng = random.Random(seed)
    n = 0
    while True:
        op = next_op(rng, model)
        apply_op(storage, op)
        model.apply(op)
        n += 1
        os.write(1, b"synced %d\n" % n)


def _zygote() -> None:
    import kvraft.storage.wal  # noqa: F401  (warm: workers fork with it imported)

    for line in sys.stdin.buffer:
        words = line.decode().split()
        if words[0] == "run":
            pid = os.fork()
            if pid == 0:
                try:
                    _worker(words[1], int(words[2]))
                except BaseException as e:  # report, never return into the zygote loop
                    os.write(1, f"error {type(e).__name__}: {e}\n".encode())
                os._exit(1)
            os.write(1, b"pid %d\n" % pid)
        elif words[0] == "wait":
            pid = int(words[1])
            _, status = os.waitpid(pid, 0)
            os.write(1, b"exit %d %d\n" % (pid, status))
        elif words[0] == "quit":
            return


if __name__ == "__main__":
    _zygote()

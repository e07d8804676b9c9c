"""The WAL under injected faults: a crash at every system call of truncate, compact,
reset and roll, and failing writes and fsyncs.

``FaultyOs`` replaces the ``os`` module inside the WAL's modules. A *crash* at call n
raises ``SimulatedCrash`` there and abandons the store with its files open, as a killed
process would (everything written before stays, as in the page cache after SIGKILL);
the test then reopens the directory with the real ``os`` and checks what it finds.
"""

from __future__ import annotations

import errno
import os
import shutil

import pytest
from storage_support import make_entries
from wal_crash_child import Model, acceptable, apply_op

from kvraft.raft.types import HardState
from kvraft.storage import StorageError, fsutil, segment, statefile, wal
from kvraft.storage.wal import open_storage

OPTIONS = {"segment_bytes_max": 1500}
MUTATING = frozenset({"pwrite", "write", "ftruncate", "fsync", "fdatasync", "unlink",
                      "posix_fallocate",
                      "replace", "rename", "remove"})
SCENARIO = [
    ("append", 61, 1, 30),  # rolls segments
    ("append", 20, 2, 15),  # cuts inside a segment and drops later segments
    ("compact", 25),  # drops whole segments
    ("append", 35, 3, 40),  # cuts again, right after the compaction point
    ("append", 74, 3, 1),
    ("reset", 100, 4),  # replaces the whole log (a new generation)
    ("append", 101, 4, 20),
    ("compact", 110),
]


class SimulatedCrash(BaseException):
    """Raised at the chosen system call; BaseException so no handler swallows it."""


class FaultyOs:
    """The ``os`` module, except that mutating call number ``crash_at`` crashes (or
    raises ``error``) once ``armed``; it remembers open fds to "kill" the process."""

    def __init__(self, crash_at: int = 0, error: OSError | None = None,
                 only: frozenset = MUTATING):
        self.crash_at = crash_at
        self.error = error
        self.only = only
        self.armed = False
        self.calls = 0
        self.fds: set[int] = set()

    def __getattr__(self, name):
        real = getattr(os, name)
        if name == "open":
            def tracked_open(*args, **kwargs):
                fd = real(*args, **kwargs)
                self.fds.add(fd)
                return fd
            return tracked_open
        if name == "close":
            def tracked_close(fd):
                self.fds.discard(fd)
                real(fd)
            return tracked_close
        if name in self.only:
            def call(*args, **kwargs):
                if self.armed:
                    self.calls += 1
                    if self.calls == self.crash_at:
                        if self.error is not None:
                            raise self.error
                        raise SimulatedCrash(name)
                return real(*args, **kwargs)
            return call
        return real

    def die(self) -> None:
        """Close every file the abandoned store held, as process death would."""
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds.clear()


@pytest.fixture
def faulty(monkeypatch):
    """Install a FaultyOs in the WAL modules; returns a function that does it."""
    def install(fake: FaultyOs) -> FaultyOs:
        for module in (fsutil, segment, wal, statefile):
            monkeypatch.setattr(module, "os", fake)
        return fake
    yield install
    monkeypatch.undo()


def base_log(path: str) -> Model:
    storage = open_storage(path, OPTIONS)
    apply_op(storage, ("append", 1, 1, 60))
    storage.close()
    return Model(0, 0, [1] * 60)


def observe(path: str) -> Model:
    storage = open_storage(path, OPTIONS)
    try:
        storage.log.check_invariants()
        return Model.from_log(storage.log)
    finally:
        storage.close()


def run_scenario(path: str, fake: FaultyOs) -> int | None:
    """Run SCENARIO under ``fake``; the index of the operation a crash hit, or None."""
    storage = open_storage(path, OPTIONS)
    fake.armed = True
    for n, op in enumerate(SCENARIO):
        try:
            apply_op(storage, op)
        except SimulatedCrash:
            fake.armed = False
            fake.die()
            return n
    fake.armed = False
    storage.close()
    return None


def test_a_crash_at_any_system_call_leaves_an_acceptable_log(tmp_path, faulty,
                                                             monkeypatch):
    base = str(tmp_path / "base")
    start = base_log(base)
    states = [start]
    for op in SCENARIO:
        states.append(states[-1].copy())
        states[-1].apply(op)
    crash_at, kinds = 1, set()
    while True:
        path = str(tmp_path / f"run{crash_at}")
        shutil.copytree(base, path)
        fake = faulty(FaultyOs(crash_at))
        hit = run_scenario(path, fake)
        monkeypatch.undo()
        observed = observe(path)
        if hit is None:
            assert observed == states[-1]
            break
        kinds.add(SCENARIO[hit][0])
        assert acceptable(observed, states[hit], SCENARIO[hit]), (
            f"crash at system call {crash_at}, during {SCENARIO[hit]}: found {observed}")
        shutil.rmtree(path)
        crash_at += 1
    assert kinds == {"append", "compact", "reset"}
    assert crash_at > 40  # the scenario really went through many crash points


@pytest.mark.parametrize("call, action", [("pwrite", "append to"), ("fdatasync", "fsync")])
def test_a_failed_write_or_fsync_stops_the_log_with_an_operator_message(
        tmp_path, faulty, call, action):
    path = str(tmp_path / "data")
    base_log(path)
    fake = faulty(FaultyOs(1, OSError(errno.ENOSPC, "No space left on device"),
                           only=frozenset({call})))
    storage = open_storage(path, {"segment_bytes_max": 1 << 20})  # no roll here
    fake.armed = True
    with pytest.raises(StorageError) as info:
        apply_op(storage, ("append", 61, 1, 5))  # one pwrite, then one fdatasync
    message = str(info.value)
    assert f"could not {action}" in message and "No space left" in message
    assert "restart the node" in message
    fake.armed = False
    # After a failed write or fsync nothing more is accepted (the page cache can no
    # longer be trusted), even though the disk works again.
    with pytest.raises(StorageError, match="No space left"):
        apply_op(storage, ("append", 61, 1, 5))
    with pytest.raises(StorageError):
        storage.log.sync()
    storage.close()
    observed = observe(path)
    assert observed.terms[:60] == [1] * 60  # the synced log survives


def test_a_commit_only_change_does_not_rewrite_the_state_file(tmp_path, monkeypatch):
    storage = open_storage(str(tmp_path / "data"), OPTIONS)
    writes = []
    real = fsutil.atomic_write
    monkeypatch.setattr(fsutil, "atomic_write",
                        lambda path, data: (writes.append(path), real(path, data)))
    storage.stable.save_hard_state(HardState(term=1, vote="n1", commit=0))
    assert len(writes) == 1  # a new vote: durable at once
    for commit in range(1, 50):
        storage.stable.save_hard_state(HardState(term=1, vote="n1", commit=commit))
    assert len(writes) == 1  # commit-only: nothing written
    storage.stable.save_hard_state(HardState(term=2, vote="", commit=49))
    assert len(writes) == 2
    storage.close()


def test_the_commit_index_is_persisted_lazily_and_never_beyond_the_synced_log(tmp_path):
    path = str(tmp_path / "data")
    storage = open_storage(path, OPTIONS)
    storage.log.append(make_entries(1, 10, term=1))
    storage.log.sync()
    storage.log.append(make_entries(11, 10, term=1))  # not synced
    # A driver that saves before it syncs: the vote must be durable now, but the file
    # must not claim entries the log may still lose.
    storage.stable.save_hard_state(HardState(term=1, vote="n1", commit=20))
    kill(storage)
    reopened = open_storage(path, OPTIONS)
    assert reopened.stable.hard_state() == HardState(term=1, vote="n1", commit=10)
    reopened.stable.save_hard_state(HardState(term=1, vote="n1", commit=15))
    reopened.close()  # close writes the lazily kept commit
    again = open_storage(path, OPTIONS)
    assert again.stable.hard_state().commit == 15
    again.close()


def kill(storage) -> None:
    """Abandon a WAL storage as a killed process would: close its files (segments and
    the data_dir lock) without syncing or writing anything."""
    for seg in storage.log._segments:
        seg.close()
    lock = os.path.join(os.path.dirname(storage.log._dir), "lock")
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == lock:
                os.close(int(name))
        except OSError:
            pass

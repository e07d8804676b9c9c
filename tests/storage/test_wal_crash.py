"""Crash safety of the WAL: SIGKILL at random moments, torn tails and flipped bytes.

The kill test runs a seeded workload in forked workers of a warm zygote process
(wal_crash_child.py) and kills them with SIGKILL; after every kill the test reopens
the log and checks it holds exactly what the workload may have left: everything
reported as synced, then at most a prefix of the operation that was under way.
"""

from __future__ import annotations

import os
import random
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from storage_support import (
    make_entries,
    record_offsets,
    segment_path,
    warnings_in,
    write_log,
)
from wal_crash_child import Model, acceptable, next_op

from kvraft.storage import CorruptLogError
from kvraft.storage.records import RECORD_HEADER
from kvraft.storage.wal import open_storage

CHILD = Path(__file__).with_name("wal_crash_child.py")
KILLS = 60
SEED = 20240611
DEADLINE_S = 120  # a hung worker fails the test instead of hanging it


class Zygote:
    """The crash-test zygote: forks workers, reports their lines."""

    def __init__(self):
        self.proc = subprocess.Popen(
            [sys.executable, str(CHILD)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, cwd=str(CHILD.parent))
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.proc.stdout, selectors.EVENT_READ)
        self.buffer = b""
        self.deadline = time.monotonic() + DEADLINE_S

    def send(self, line: str) -> None:
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def read_line(self) -> str:
        while b"\n" not in self.buffer:
            left = self.deadline - time.monotonic()
            if left <= 0 or not self.selector.select(timeout=left):
                raise AssertionError("the crash-test zygote stopped answering")
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                raise AssertionError("the zygote died: " + self.proc.stderr.read().decode())
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        words = line.decode()
        assert not words.startswith("error"), words
        return words

    def close(self) -> None:
        if self.proc.poll() is None:
            self.send("quit")
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.selector.close()


def reopen_model(data_dir: str) -> Model:
    storage = open_storage(data_dir, {"segment_bytes_max": 1500})
    try:
        storage.log.check_invariants()
        return Model.from_log(storage.log)
    finally:
        storage.close()


def test_sigkill_at_random_moments_leaves_a_prefix_with_everything_synced(tmp_path):
    rng = random.Random(SEED)
    data_dir = str(tmp_path / "data")
    model = Model()
    zygote = Zygote()
    truncations = 0
    try:
        for kill in range(KILLS):
            seed = rng.randrange(2**32)
            zygote.send(f"run {data_dir} {seed}")
            pid = int(zygote.read_line().split()[1])
            synced, wanted = 0, rng.randint(1, 12)
            while synced < wanted:
                synced = int(zygote.read_line().split()[1])
            os.kill(pid, signal.SIGKILL)
            zygote.send(f"wait {pid}")
            while (line := zygote.read_line()).startswith("synced"):
                synced = int(line.split()[1])  # written before the kill landed
            assert line.split()[:2] == ["exit", str(pid)]
            status = int(line.split()[2])
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status

            # Replay the worker's seeded workload up to its last report.
            before, ops = model, random.Random(seed)
            for _ in range(synced):
                op = next_op(ops, before)
                truncations += op[0] == "append" and op[1] <= before.last_index
                before = before.copy()
                before.apply(op)
            in_flight = next_op(ops, before)
            observed = reopen_model(data_dir)
            assert acceptable(observed, before, in_flight), (
                f"kill {kill} (seed {seed}) after {synced} synced operations: the log "
                f"holds {observed}, expected {before} or a crash during {in_flight}")
            model = observed
    finally:
        zygote.close()
    assert truncations >= 10, "the workload should truncate conflicting suffixes"


# -- torn tails and corruption, made by hand -------------------------------------------


@pytest.mark.parametrize("tear", ["short header", "short payload", "bad checksum"])
def test_a_torn_last_record_is_cut_off_with_a_warning(tmp_path, log_events, tear):
    data_dir = str(tmp_path / "data")
    entries = write_log(data_dir)
    offsets = record_offsets(entries)
    path = segment_path(data_dir)
    last = offsets[-2]  # where the final record starts
    with open(path, "r+b") as f:
        if tear == "short header":
            f.truncate(last + RECORD_HEADER.size - 3)
        elif tear == "short payload":
            f.truncate(last + (offsets[-1] - last) // 2)
        elif tear == "bad checksum":
            f.seek(offsets[-1] - 1)
            byte = f.read(1)
            f.seek(offsets[-1] - 1)
            f.write(bytes([byte[0] ^ 0xFF]))
    storage = open_storage(data_dir)
    try:
        assert storage.log.last_index() == 39
        assert storage.log.entries(1, 40) == entries[:39]
        warned = warnings_in(log_events)
        assert any("torn record" in w and path in w and f"byte offset {last}" in w
                   for w in warned), warned
        assert os.path.getsize(path) == last  # repaired on disk, durably
        storage.log.append(make_entries(40, 3, term=2))  # the log goes on after repair
    finally:
        storage.close()
    storage = open_storage(data_dir)
    assert storage.log.last_index() == 42 and storage.log.term(42) == 2
    storage.close()


def test_zeros_after_the_last_record_are_reserved_space_cut_off_without_a_warning(
        tmp_path, log_events):
    # What a crash leaves of preallocated space, or of a final write that never reached
    # the disk (a filesystem that zero-fills what it extended): nothing was torn.
    data_dir = str(tmp_path / "data")
    entries = write_log(data_dir)
    offsets = record_offsets(entries)
    path = segment_path(data_dir)
    last = offsets[-2]
    with open(path, "r+b") as f:
        f.truncate(last)
        f.seek(last)
        f.write(bytes(4096))
    storage = open_storage(data_dir)
    try:
        assert storage.log.entries(1, 40) == entries[:39]
        assert not [w for w in warnings_in(log_events) if "torn" in w]
        assert os.path.getsize(path) == last  # durably: the reserve is not data
        storage.log.append(make_entries(40, 3, term=2))
    finally:
        storage.close()
    storage = open_storage(data_dir)
    assert storage.log.last_index() == 42 and storage.log.term(42) == 2
    storage.close()


def test_a_flipped_byte_inside_a_segment_is_refused_naming_file_and_offset(tmp_path):
    data_dir = str(tmp_path / "data")
    entries = write_log(data_dir)
    offsets = record_offsets(entries)
    path = segment_path(data_dir)
    victim = offsets[20] + RECORD_HEADER.size + 3  # inside entry 21's payload
    with open(path, "r+b") as f:
        f.seek(victim)
        byte = f.read(1)
        f.seek(victim)
        f.write(bytes([byte[0] ^ 0x10]))
    with pytest.raises(CorruptLogError) as info:
        open_storage(data_dir)
    message = str(info.value)
    assert path in message and f"byte offset {offsets[20]}" in message, message
    assert "kvraft member add" in message  # and what the operator can do
    assert os.path.getsize(path) == offsets[-1]  # nothing was cut: no silent loss
    # The refusal released the directory: a fixed copy could be opened by this process.
    with pytest.raises(CorruptLogError):
        open_storage(data_dir)


def test_a_flipped_length_field_is_refused_not_mistaken_for_a_torn_tail(tmp_path):
    data_dir = str(tmp_path / "data")
    entries = write_log(data_dir)
    offsets = record_offsets(entries)
    path = segment_path(data_dir)
    with open(path, "r+b") as f:  # claim a huge length: it would run past the end
        f.seek(offsets[10] + 2)
        f.write(b"\x7f")
    with pytest.raises(CorruptLogError, match=f"byte offset {offsets[10]}"):
        open_storage(data_dir)


def test_a_truncation_then_a_crash_never_brings_stale_entries_back(tmp_path):
    """Entries 1..120 synced across segments, then a conflicting append from 50 in a
    new term, killed before sync: reopening must give the old log, or the new one, but
    never old entries behind new ones."""
    data_dir = str(tmp_path / "data")
    storage = open_storage(data_dir, {"segment_bytes_max": 1500})
    storage.log.append(make_entries(1, 120, term=1))
    storage.log.sync()
    storage.close()
    code = (
        "import os, sys\n"
        "from storage_support import make_entries\n"
        "from kvraft.storage.wal import open_storage\n"
        "s = open_storage(sys.argv[1], {'segment_bytes_max': 1500})\n"
        "s.log.append(make_entries(50, 10, term=2))\n"
        "os.write(1, b'appended\\n')\n"
        "os.kill(os.getpid(), 9)\n")
    result = subprocess.run([sys.executable, "-c", code, data_dir], capture_output=True,
                            cwd=str(CHILD.parent), timeout=60)
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()
    assert result.stdout == b"appended\n"
    observed = reopen_model(data_dir)
    assert observed == Model(0, 0, [1] * 49 + [2] * 10), observed

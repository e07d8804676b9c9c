"""Snapshots and compaction on a real cluster of `twistd kvraft` processes: a node
that was down while 100,000 keys were written (and the log compacted) is brought back
by an InstallSnapshot stream and ends up with the leader's state; disk use stays
bounded during a long write run."""

import hashlib
import os
import time
from pathlib import Path

import pytest

from kvraft.devcluster import LocalCluster

pytestmark = pytest.mark.integration

MIB = 1024 * 1024


def poll(predicate, timeout_s=60.0, what="condition", interval_s=0.2):
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except (OSError, RuntimeError) as e:
            last = e
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval_s)
    raise AssertionError(f"{what} not reached within {timeout_s}s (last: {last!r})")


def write_keys(client, count, prefix="key", value_bytes=16, pipeline=2000, offset=0):
    for start in range(offset, offset + count, pipeline):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(offset + count, start + pipeline)):
            pipe.set(f"{prefix}:{i:08d}", f"{i:0{value_bytes}d}")
        assert all(r is True for r in pipe.execute())


PATTERNS = ["early:*"] + [f"key:0{d}*" for d in range(10)]
"""Together every key the test writes, each under KEYS' reply limit (1,000,000)."""


def digest(client):
    """(DBSIZE, SHA-256 over every key and value in key order), via KEYS and MGET."""
    keys = sorted(k for pattern in PATTERNS for k in client.keys(pattern))
    h = hashlib.sha256()
    for start in range(0, len(keys), 10_000):
        batch = keys[start:start + 10_000]
        for key, value in zip(batch, client.mget(batch), strict=True):
            h.update(key + b"\0" + (value or b"") + b"\0")
    return client.dbsize(), len(keys), h.hexdigest()


def disk_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                pass
    return total


@pytest.mark.parametrize("keys", [100_000, pytest.param(1_000_000, marks=pytest.mark.slow)])
def test_a_node_down_during_many_writes_catches_up_from_a_snapshot(tmp_path, keys):
    cluster = LocalCluster(
        tmp_path / "cluster", size=3,
        raft={"election_timeout_ms": 600, "heartbeat_interval_ms": 100,
              "snapshot_entries": 50, "snapshot_bytes": 512 * 1024,
              "compaction_margin_entries": 10},
        storage={"backend": "wal", "segment_bytes_max": 1 * MIB})
    cluster.prepare()
    cluster.start_all()
    try:
        leader = cluster.wait_for_leader()
        client = cluster.redis(leader, socket_timeout=60)
        write_keys(client, 1000, prefix="early")
        down = next(n for n in cluster.nodes if n != leader)
        before = int(cluster.info(down)["raft_applied_index"])
        cluster.stop(down)
        started = time.monotonic()
        write_keys(client, keys)
        wrote_s = time.monotonic() - started
        info = cluster.info(leader)
        first = int(info["raft_log_first_index"])
        assert first > before + 1, f"the leader's log starts at {first}: not compacted past " \
                                   f"the stopped node's {before}"
        cluster.start(down)
        target = int(cluster.info(leader)["raft_applied_index"])
        poll(lambda: int(cluster.info(down)["raft_applied_index"]) >= target,
             120 * keys // 100_000, f"{down} caught up")
        assert "installed snapshot" in cluster.tail_log(down, lines=400), \
            "brought up to date by a snapshot"
        caught_s = time.monotonic() - started - wrote_s
        print(f"\n{keys:,} keys written in {wrote_s:.1f}s; {down} caught up in "
              f"{caught_s:.1f}s (snapshot index {cluster.info(down)['raft_snapshot_index']})")
        expected = digest(client)
        assert expected[0] == expected[1] == keys + 1000
        for node in cluster.nodes:
            peer = cluster.redis(node, socket_timeout=60)
            assert digest(peer) == expected, node
    finally:
        cluster.close()


def test_log_and_snapshot_disk_use_stay_bounded(tmp_path):
    """Bound (see etc/kvraft/kvraft.toml): (snapshots_retained + 2) snapshots plus the
    log since the last snapshot (snapshot_bytes + compaction_margin_entries entries of
    at most batch_bytes_max, rounded up to segments) plus one segment."""
    snapshot_bytes = 256 * 1024
    batch_bytes_max = 64 * 1024
    margin = 4
    segment = 256 * 1024
    retained = 2
    keys = 500
    cluster = LocalCluster(
        tmp_path / "cluster", size=3,
        raft={"election_timeout_ms": 600, "heartbeat_interval_ms": 100,
              "snapshot_entries": 100_000, "snapshot_bytes": snapshot_bytes,
              "compaction_margin_entries": margin, "batch_bytes_max": batch_bytes_max},
        storage={"backend": "wal", "segment_bytes_max": segment,
                 "snapshots_retained": retained})
    cluster.prepare()
    cluster.start_all()
    try:
        leader = cluster.wait_for_leader()
        client = cluster.redis(leader, socket_timeout=60)
        write_keys(client, keys, prefix="k", value_bytes=100)
        state_bytes = sum(len(k) + 100 + 16 for k in [b"k:00000000"] * keys)
        snapshot_max = 2 * state_bytes  # msgpack framing, revisions, node header
        log_max = snapshot_bytes + (margin + 1) * batch_bytes_max
        log_max = (log_max // segment + 2) * segment
        bound = (retained + 2) * snapshot_max + log_max + 64 * 1024  # + state, lock
        worst = {n: 0 for n in cluster.nodes}
        written = 0
        for _ in range(80):
            write_keys(client, keys, prefix="k", value_bytes=100)  # overwrite: same state
            written += keys * 130
            for node, spec in cluster.nodes.items():
                worst[node] = max(worst[node], disk_bytes(spec.data_dir))
        assert written > 3 * bound, "the run must write well past the bound"
        for node, used in worst.items():
            assert used <= bound, f"{node} used {used} bytes on disk, bound {bound}"
            snaps = list((cluster.nodes[node].data_dir / "snap").glob("*.snap"))
            assert 1 <= len(snaps) <= retained, snaps
        print(f"\nwrote {written / MIB:.1f} MiB of entries; worst disk use "
              f"{max(worst.values()) / MIB:.2f} MiB, bound {bound / MIB:.2f} MiB")
    finally:
        cluster.close()

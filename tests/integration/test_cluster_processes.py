"""A real 3-node cluster: writes, linearizable reads, leader failure and full restarts."""

import time

import pytest
import redis

pytestmark = pytest.mark.integration


def poll(predicate, timeout_s=15.0, interval_s=0.05, what="condition"):
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except (redis.RedisError, OSError) as e:
            last = e
        time.sleep(interval_s)
    raise AssertionError(f"{what} not reached within {timeout_s}s (last: {last!r})")


def test_writes_and_linearizable_reads_through_leader_and_followers(cluster):
    leader = cluster.wait_for_leader(agreed=True)
    clients = {n: cluster.redis(n) for n in cluster.nodes}
    assert clients[leader].set("k-leader", "v1") is True
    # A write sent to a follower is forwarded to the leader and answered once applied.
    follower = next(n for n in cluster.nodes if n != leader)
    assert clients[follower].set("k-follower", "v2") is True
    # Linearizable reads on every node see both writes at once: no polling needed.
    for node_id, client in clients.items():
        assert client.get("k-leader") == b"v1", node_id
        assert client.get("k-follower") == b"v2", node_id
    assert clients[follower].incr("counter") == 1
    assert clients[leader].incr("counter") == 2
    assert clients[follower].mget(["k-leader", "k-follower", "nope"]) == [b"v1", b"v2", None]
    info = clients[follower].info("raft")
    assert info["raft_leader_id"] == leader
    assert info["raft_role"] == "follower"
    # twistd kvraft runs on kvraft.reactor unless --reactor chose another.
    assert clients[leader].info("server")["multiplexing_api"] == "kvraft-epoll"
    # ...and a leader flushes its log through Linux AIO (storage.fsync_aio, the default),
    # so every write above went through that path.
    assert clients[leader].info("server")["fsync_mode"] == "aio"
    # ...and, once its state is loaded, freezes it and raises the collector's thresholds.
    assert "garbage collector: startup state frozen" in cluster.tail_log(leader, lines=400)


def test_leader_killed_new_leader_elected_and_old_one_catches_up(cluster):
    old = cluster.wait_for_leader(agreed=True)
    survivors = [n for n in cluster.nodes if n != old]
    cluster.redis(old).set("before", "1")
    cluster.kill(old)
    started = time.monotonic()
    new = cluster.wait_for_leader(timeout_s=15, among=survivors)
    elapsed = time.monotonic() - started
    assert new != old
    # A few election timeouts (600 ms each, randomized up to 2x) at most.
    assert elapsed < 6.0, f"election took {elapsed:.1f}s"
    client = cluster.redis(new)
    for i in range(50):
        assert client.set(f"after-{i}", str(i)) is True
    assert client.get("before") == b"1"
    cluster.start(old)
    old_client = cluster.redis(old)
    # The restarted node catches up; a linearizable read on it sees the latest write.
    assert poll(lambda: old_client.get("after-49") == b"49", what="old leader caught up")
    applied = {n: int(cluster.info(n)["raft_applied_index"]) for n in cluster.nodes}
    commit = int(cluster.info(new)["raft_commit_index"])
    poll(lambda: all(int(cluster.info(n)["raft_applied_index"]) >= commit
                     for n in cluster.nodes), what=f"all nodes applied {commit} (saw {applied})")


def test_every_acknowledged_write_survives_killing_all_nodes(cluster):
    leader = cluster.wait_for_leader(agreed=True)
    client = cluster.redis(leader)
    pipe_size = 100
    acknowledged = {}
    for start in range(0, 1000, pipe_size):
        pipe = client.pipeline(transaction=False)
        for i in range(start, start + pipe_size):
            pipe.set(f"key-{i}", f"value-{i}")
        for i, ok in zip(range(start, start + pipe_size), pipe.execute(), strict=False):
            assert ok is True
            acknowledged[f"key-{i}"] = f"value-{i}".encode()
    for node_id in cluster.nodes:
        cluster.kill(node_id)
    cluster.start_all()
    leader = cluster.wait_for_leader(timeout_s=30)
    client = cluster.redis(leader)
    keys = sorted(acknowledged)
    values = []
    for start in range(0, len(keys), 200):
        values += client.mget(keys[start:start + 200])
    missing = [k for k, v in zip(keys, values, strict=False) if v != acknowledged[k]]
    assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {missing[:5]}"
    assert client.dbsize() == 1000

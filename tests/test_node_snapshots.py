"""Snapshots and log compaction in the node service (Raft section 7), on real WAL
storage and the real kv machine, driven by a simulated clock."""

from test_node_support import NodeCluster

from kvraft.raft import Role
from kvraft.snapshotter import BOOTSTRAP_INDEX, read_header

SMALL = {"snapshot_entries": 20, "compaction_margin_entries": 5}


def test_a_new_cluster_starts_from_the_empty_bootstrap_snapshot(tmp_path):
    c = NodeCluster(tmp_path)
    try:
        for node in c.nodes.values():
            snaps = node.storage.snapshots.list()
            assert [(s.index, s.term) for s in snaps] == [(BOOTSTRAP_INDEX, 0)]
            assert snaps[0].conf_state.voters == ("n1", "n2", "n3")
            assert node.storage.log.first_index() == BOOTSTRAP_INDEX + 1
            header, _ = read_header(node.storage.snapshots.open(BOOTSTRAP_INDEX))
            assert header["addresses"] == c.members
        leader = c.wait_leader()
        assert c.write(leader, b"SET", b"a", b"1") is not None
        c.run_until(lambda: c.caught_up(), what="all applied")
        assert c.nodes["n2"].machine.query([b"GET", b"a"]) == b"1"
    finally:
        c.close()


def test_snapshot_then_compaction_keeps_a_margin(tmp_path):
    c = NodeCluster(tmp_path, raft=SMALL, storage={"snapshots_retained": 2})
    try:
        leader = c.wait_leader()
        for i in range(60):  # one entry each: writes wait for each other
            c.write(leader, b"SET", b"k%d" % i, b"v%d" % i)
        c.run_until(lambda: all(n.snapshotter.taken >= 2 for n in c.nodes.values()),
                    what="two snapshots on every node")
        for node in c.nodes.values():
            meta = node.snapshotter.meta
            assert meta.index >= 20 and meta.index <= node.machine.last_applied
            assert meta.conf_state.voters == ("n1", "n2", "n3")
            # Compacted up to the snapshot minus the margin, not further.
            assert node.storage.log.first_index() == meta.index - 5 + 1
            indexes = [s.index for s in node.storage.snapshots.list()]
            assert len(indexes) == 2 and indexes[0] == meta.index, indexes
    finally:
        c.close()


def test_restart_restores_the_snapshot_and_replays_the_log_suffix(tmp_path):
    c = NodeCluster(tmp_path, raft=SMALL)
    try:
        leader = c.wait_leader()
        for i in range(45):
            c.write(leader, b"SET", b"k%d" % i, b"v%d" % i)
        c.write(leader, b"INCRBY", b"counter", b"7")
        c.run_until(lambda: c.caught_up(), what="all applied")
        follower = next(n for n in c.nodes if n != leader)
        before = c.digest(follower)
        snap_index = c.nodes[follower].snapshotter.meta.index
        applied = c.nodes[follower].machine.last_applied
        assert snap_index < applied, "the test needs a log suffix after the snapshot"
        c.stop(follower)
        node = c.start(follower)
        # Restored from the snapshot, then the suffix replays once the commit is known.
        assert node.snapshotter.meta.index == snap_index
        assert node.machine.last_applied >= snap_index
        c.run_until(lambda: node.machine.last_applied >= applied, what="replay")
        assert c.digest(follower) == before
        assert node.machine.query([b"GET", b"counter"]) == b"7"
    finally:
        c.close()


def test_restart_finishes_an_installation_cut_short(tmp_path):
    """A snapshot published by the receiver whose log reset never happened (a crash in
    between) holds committed state: the next start installs it."""
    c = NodeCluster(tmp_path, raft=SMALL)
    try:
        leader = c.wait_leader()
        for i in range(30):
            c.write(leader, b"SET", b"k%d" % i, b"v%d" % i)
        c.run_until(lambda: c.caught_up(), what="all applied")
        source = c.nodes[leader]
        meta = source.snapshotter.meta
        body = b"".join(source.storage.snapshots.open(meta.index))
        follower = next(n for n in c.nodes if n != leader)
        c.stop(follower)
        c.stop(leader)
        other = next(n for n in c.nodes)
        c.stop(other)
        # A fresh node directory holding only that snapshot, as if received and
        # published right before a crash.
        from kvraft.storage.wal import open_storage
        storage = open_storage(str(tmp_path / "n9"))
        writer = storage.snapshots.create(meta)
        writer.write(body)
        writer.commit()
        storage.stable.save_metadata({"addresses": dict(c.members)})
        assert storage.log.last_index() == 0
        storage.close()
        from test_node_support import FakeTransport, node_config

        from kvraft.machines.kv import KvStateMachine
        from kvraft.node import RaftNodeService
        config = node_config("n9", tmp_path / "n9", {**c.members, "n9": "127.0.0.1:7009"},
                             join=True)
        node = RaftNodeService(config, open_storage(str(tmp_path / "n9")), KvStateMachine(),
                               FakeTransport(c.net, "n9", {}), reactor=c.reactor)
        node.startService()
        try:
            assert node.machine.last_applied == meta.index
            assert node.storage.log.first_index() == meta.index + 1
            expected = KvStateMachine()
            expected.restore(read_header([body])[1])
            assert node.machine.key_count == expected.key_count > 0
            assert node.machine.query([b"GET", b"k0"]) == b"v0"
        finally:
            node.stopService()
            c.run(0.2)
    finally:
        c.close()


def test_raft_snapshot_command_and_info(tmp_path):
    c = NodeCluster(tmp_path)
    try:
        leader = c.wait_leader()
        c.write(leader, b"SET", b"a", b"1")
        follower = next(n for n in c.nodes if n != leader)
        c.run_until(lambda: c.caught_up(), what="all applied")
        index = c.admin(follower, "RAFT.SNAPSHOT")
        assert index == c.nodes[follower].machine.last_applied
        info = c.nodes[follower].info()
        assert info["raft_snapshot_index"] == index
        assert info["raft_voters"] == "n1,n2,n3" and info["raft_learners"] == ""
        # Nothing applied since: the same snapshot answers at once.
        assert c.admin(follower, "RAFT.SNAPSHOT") == index
        assert c.nodes[follower].snapshotter.taken == 1
        assert c.nodes[leader].core.role == Role.Leader
    finally:
        c.close()

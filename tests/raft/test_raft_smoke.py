"""First end-to-end checks: election, replication, Ready/advance on three nodes."""

from raft_harness import Cluster

from kvraft.raft import Role


def test_election_and_replication_three_nodes():
    c = Cluster(["n1", "n2", "n3"])
    c.elect("n1")
    for node in ("n2", "n3"):
        assert c.core(node).lead == "n1"
        assert c.core(node).role == Role.Follower
    c.propose("n1", b"x")
    c.propose("n2", b"y")  # forwarded to the leader
    c.stabilize()
    for node in c.ids:
        assert c.applied_data(node) == [b"x", b"y"]
        assert c.core(node).status()["commit_index"] == 3

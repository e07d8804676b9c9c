"""Membership changes on a real cluster of `twistd kvraft` processes while a client
workload runs; the workload's history is checked for linearizability at the end.

One scenario (it takes a while to build a cluster, so the steps share it): grow 3 -> 5
through learners, replace a node, shrink 5 -> 3 removing the leader on the way, then
move leadership back and forth. The CLI (`kvraft member`, `kvraft leader`) drives part
of it, the RAFT.* commands the rest.
"""

import random
import subprocess
import sys
import threading
import time

import pytest

from kvraft.devcluster import LocalCluster
from kvraft.testing.chaos.checks import check_registers
from kvraft.testing.chaos.client import RespClient, tls_context
from kvraft.testing.chaos.workload import History, KeySpace, Processes, RegisterClient

pytestmark = pytest.mark.integration

RAFT = {"election_timeout_ms": 600, "heartbeat_interval_ms": 100}


def poll(predicate, timeout_s=30.0, what="condition"):
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except (OSError, RuntimeError) as e:
            last = e
        if last and not isinstance(last, Exception):
            return last
        time.sleep(0.1)
    raise AssertionError(f"{what} not reached within {timeout_s}s (last: {last!r})")


class Workload:
    """Register clients (get/put/cas) on the given nodes' TLS client ports."""

    def __init__(self, cluster: LocalCluster, nodes: list[str], clients: int = 4,
                 seed: int = 7):
        self.history = History()
        self.stop = threading.Event()
        keys = KeySpace(active=8, ops_per_key_max=60, rng=random.Random(seed))
        processes = Processes()
        context = tls_context(cluster.cert_dir)
        self.clients = []
        for i in range(clients):
            node = nodes[i % len(nodes)]
            conn = RespClient(cluster.host, cluster.nodes[node].client_port, context,
                              server_hostname=node, timeout_s=10.0)
            self.clients.append(RegisterClient(
                f"register-{i}", node_id=node, connection=conn, history=self.history,
                stop=self.stop, processes=processes, rng=random.Random(seed * 100 + i),
                think_s=0.01, keys=keys))

    def __enter__(self):
        for client in self.clients:
            client.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for client in self.clients:
            client.join(timeout=30)

    def ok_count(self) -> int:
        """Operations completed ok so far."""
        return sum(1 for r in self.history.snapshot() if r["type"] == "ok")

    def check(self) -> dict:
        history = self.history.snapshot()
        for client in self.clients:
            assert client.crash is None, client.crash
        oks = sum(1 for r in history if r["type"] == "ok")
        result = check_registers(history, timeout_s=60)
        assert result.ok, result.summary if hasattr(result, "summary") else result
        return {"operations": len(history) // 2, "ok": oks}


def members(cluster, node_id):
    rows = cluster.admin(node_id, "RAFT.MEMBERS")
    assert isinstance(rows, list), rows
    table = {}
    for row in rows:
        fields = dict(zip(row[::2], row[1::2], strict=True))
        table[fields[b"id"].decode()] = fields[b"role"].decode()
    return table


def cli(cluster, nodes, *args):
    """Run `kvraft <args>` against the nodes' plaintext ports."""
    command = [sys.executable, "-m", "kvraft.cli", *args]
    for node in nodes:
        command += ["--node", f"{cluster.host}:{cluster.nodes[node].plain_port}"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, (args, out.stdout, out.stderr)
    return out.stdout


def voters(cluster, node_id):
    return sorted(n for n, role in members(cluster, node_id).items() if role == "voter")


@pytest.fixture
def cluster(tmp_path):
    c = LocalCluster(tmp_path / "cluster", size=3, raft=RAFT)
    c.prepare()
    c.start_all()
    try:
        yield c
    finally:
        c.close()


def test_grow_replace_shrink_and_transfer_under_load(cluster):
    leader = cluster.wait_for_leader()
    with Workload(cluster, ["n1", "n3"]) as load:
        # -- grow 3 -> 5 through learners -----------------------------------------------
        for new in ("n4", "n5"):
            cluster.add_node(new)
            cluster.start(new)
            leader = cluster.wait_for_leader()
            reply = cluster.admin(leader, "RAFT.ADD", new, cluster.peer_address(new))
            assert reply == "OK", reply
            assert members(cluster, leader)[new] == "learner"
            assert cluster.info(new)["raft_role"] == "follower"
            out = cli(cluster, list(cluster.nodes), "member", "promote", new, "--wait", "60")
            assert f"{new} is a voter" in out
        leader = cluster.wait_for_leader()
        assert voters(cluster, leader) == ["n1", "n2", "n3", "n4", "n5"]
        # -- replace a follower by n6 (add learner, catch up, promote, remove) ------------
        replaced = next(n for n in ("n2", "n4", "n5") if n != leader)
        cluster.add_node("n6")
        cluster.start("n6")
        live = [n for n in cluster.nodes if n != replaced]
        out = cli(cluster, live, "member", "replace", replaced, "n6",
                  cluster.peer_address("n6"), "--wait", "60")
        assert f"removed {replaced}" in out
        cluster.stop(replaced)
        leader = cluster.wait_for_leader(among=live)
        assert voters(cluster, leader) == sorted(live)
        # -- shrink 5 -> 3, the leader first ----------------------------------------------
        old = leader
        assert cluster.admin(old, "RAFT.REMOVE", old) == "OK"
        live.remove(old)
        leader = cluster.wait_for_leader(among=live, timeout_s=10)
        assert leader != old
        # Answered once C_old,new committed; C_new (without it) follows at once.
        poll(lambda: old not in members(cluster, cluster.wait_for_leader(among=live)), 10,
             f"C_new without {old}")
        cluster.stop(old)
        victim = next(n for n in live if n not in (leader, "n1", "n3"))
        out = cli(cluster, live, "member", "remove", victim)
        assert f"removed {victim}" in out
        cluster.stop(victim)
        live.remove(victim)
        leader = cluster.wait_for_leader(among=live)
        assert voters(cluster, leader) == sorted(live) and len(live) == 3
        # -- leadership back and forth --------------------------------------------------
        for target in [n for n in live if n != leader] + [leader]:
            assert cluster.admin(leader, "RAFT.TRANSFER", target) == "OK"
            poll(lambda t=target: cluster.leader(among=live) == t, 10, f"{target} leads")
            leader = target
        out = cli(cluster, live, "leader", "transfer")
        assert "leads now" in out
        # The workload keeps being served under the last leader (a poll, not a pause).
        done = load.ok_count()
        poll(lambda: load.ok_count() >= done + 20, 10, "operations after the last transfer")
    result = load.check()
    assert result["ok"] > 200, result
    listing = cli(cluster, live, "member", "list")
    for node in live:
        assert node in listing

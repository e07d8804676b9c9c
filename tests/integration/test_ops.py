"""Operations against real `twistd kvraft` processes: the ACL matrix with real TLS
clients, /metrics and TLS refusals by reason, JSON log lines, /health (default and
?serializable) when a majority is gone, certificate rotation on SIGHUP without dropping
the cluster, and the leader's handoff on SIGTERM."""

from __future__ import annotations

import json
import signal
import socket
import ssl
import time
import urllib.error
import urllib.request

import pytest
from cryptography import x509

from kvraft import certs
from kvraft.devcluster import LocalCluster

pytestmark = pytest.mark.integration

ACL = {"reader": "read", "writer": "write", "admin": "admin", "@plaintext": "read"}
RANK = {"connection": 0, "read": 1, "write": 2, "admin": 3}
ROLE_OF = {"reader": "read", "writer": "write", "admin": "admin", "stranger": None}


def poll(predicate, timeout_s: float = 15.0, interval_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        time.sleep(interval_s)


def http_get(cluster, node_id: str, path: str) -> tuple[int, bytes]:
    url = f"http://{cluster.host}:{cluster.nodes[node_id].http_port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def metric(cluster, node_id: str, name: str, **labels) -> float | None:
    from prometheus_client.parser import text_string_to_metric_families
    _, body = http_get(cluster, node_id, "/metrics")
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v
                                           for k, v in labels.items()):
                return sample.value
    return None


def server_certificate(cluster, node_id: str, port: int, identity: str = "client"):
    """The certificate a node presents on a new TLS connection to ``port``."""
    ctx = ssl.create_default_context(cafile=str(cluster.cert_dir / "ca.pem"))
    ctx.check_hostname = False
    ctx.load_cert_chain(str(cluster.cert_dir / f"{identity}.pem"),
                        str(cluster.cert_dir / f"{identity}-key.pem"))
    with socket.create_connection((cluster.host, port), timeout=10) as raw:
        with ctx.wrap_socket(raw) as s:
            return x509.load_der_x509_certificate(s.getpeercert(binary_form=True))


@pytest.fixture(scope="module")
def acl_cluster(tmp_path_factory):
    """One cluster for the read-only checks: [acl] set, JSON log lines."""
    base = tmp_path_factory.mktemp("ops")
    c = LocalCluster(base / "cluster", size=3,
                     raft={"election_timeout_ms": 600, "heartbeat_interval_ms": 100},
                     extra_config={"log": {"format": "json"}})
    c.prepare()
    # Written by hand: devcluster's small TOML writer does not quote keys like "@plaintext".
    table = "".join(f'"{identity}" = "{role}"\n' for identity, role in ACL.items())
    for spec in c.nodes.values():
        with open(spec.config_path, "a", encoding="utf-8") as f:
            f.write(f"\n[acl]\n{table}")
    for name in ("reader", "writer", "stranger"):
        certs.issue_client(c.cert_dir, name)
    c.start_all()
    try:
        c.wait_for_leader()
        yield c
    finally:
        c.close()


def attempt(client, kind: str):
    import redis
    try:
        if kind == "connection":
            client.ping()
        elif kind == "read":
            client.get("acl-key")
        elif kind == "write":
            client.set("acl-key", "v")
        else:
            client.execute_command("RAFT.MEMBERS")
    except redis.exceptions.NoPermissionError:
        return False
    return True


def test_acl_matrix_with_real_tls_clients(acl_cluster):
    leader = acl_cluster.wait_for_leader(agreed=True)
    denied_before = metric(acl_cluster, leader, "kvraft_client_denied_total",
                           **{"class": "write"}) or 0
    results = {}
    for identity, role in ROLE_OF.items():
        client = acl_cluster.redis(leader, identity=identity)
        for kind in ("connection", "read", "write", "admin"):
            results[identity, kind] = attempt(client, kind)
            expected = kind == "connection" or (role is not None and RANK[kind] <= RANK[role])
            assert results[identity, kind] is expected, (identity, kind)
        client.close()
    # The loopback plaintext port is "@plaintext" = read.
    plain = acl_cluster.redis(leader, tls=False)
    assert attempt(plain, "read") and not attempt(plain, "write")
    # Denied writes: stranger and reader over TLS, and the plaintext client.
    assert metric(acl_cluster, leader, "kvraft_client_denied_total",
                  **{"class": "write"}) == denied_before + 3


def test_tls_refusals_are_counted_by_port_and_reason(acl_cluster, tmp_path):
    leader = acl_cluster.wait_for_leader(agreed=True)
    spec = acl_cluster.nodes[leader]
    other = tmp_path / "other-ca"
    certs.init_ca(other)
    certs.issue_client(other, "mallory")
    ctx = ssl.create_default_context(cafile=str(acl_cluster.cert_dir / "ca.pem"))
    ctx.check_hostname = False
    ctx.load_cert_chain(str(other / "mallory.pem"), str(other / "mallory-key.pem"))
    for port in (spec.client_port, spec.peer_port):
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            with socket.create_connection((acl_cluster.host, port), timeout=10) as raw:
                with ctx.wrap_socket(raw) as s:
                    s.sendall(b"PING\r\n")
                    if not s.recv(100):  # TLS 1.3: the refusal shows on the first read
                        raise ConnectionError("closed")
    poll(lambda: metric(acl_cluster, leader, "kvraft_tls_handshake_failures_total",
                        port="client", reason="unknown CA"))
    poll(lambda: metric(acl_cluster, leader, "kvraft_tls_handshake_failures_total",
                        port="peer", reason="unknown CA"))


def test_metrics_of_a_real_node(acl_cluster):
    leader = acl_cluster.wait_for_leader(agreed=True)
    client = acl_cluster.redis(leader, identity="writer")
    before = metric(acl_cluster, leader, "kvraft_commit_index")
    for i in range(10):
        client.set(f"m{i}", "v")
    assert metric(acl_cluster, leader, "kvraft_commit_index") >= before + 1
    assert metric(acl_cluster, leader, "kvraft_client_commands_total", command="set",
                  route="write") >= 10
    assert metric(acl_cluster, leader, "kvraft_write_seconds_count") >= 1
    assert metric(acl_cluster, leader, "kvraft_fsync_seconds_count") > 0
    assert metric(acl_cluster, leader, "kvraft_is_leader") == 1
    for peer in acl_cluster.nodes:
        if peer != leader:
            assert metric(acl_cluster, leader, "kvraft_peer_connected", peer=peer) == 1
            assert metric(acl_cluster, leader, "kvraft_peer_match_index", peer=peer) >= 1
    assert metric(acl_cluster, leader, "process_resident_memory_bytes") > 0
    client.close()


def test_log_lines_are_json_with_node_and_term(acl_cluster):
    for node_id, spec in acl_cluster.nodes.items():
        lines = [line for line in spec.log_path.read_text().splitlines() if line.strip()]
        assert lines
        records = [json.loads(line) for line in lines]
        assert all(r["node"] == node_id and "term" in r and r["message"] is not None
                   for r in records)
        assert any(r["namespace"] == "kvraft.node" and (r["term"] or 0) >= 1 for r in records)


def test_health_default_and_serializable_when_a_majority_is_gone(cluster):
    leader = cluster.wait_for_leader(agreed=True)
    for node_id in cluster.nodes:
        for path in ("/health", "/health?serializable=1"):
            status, body = http_get(cluster, node_id, path)
            assert status == 200, (node_id, path, body)
            assert json.loads(body)["health"] == "true"
    for node_id in cluster.nodes:
        if node_id != leader:
            cluster.kill(node_id)
    # The linearizable check fails first (no quorum confirms a read); once check-quorum
    # makes the leader step down, the local check fails too.
    poll(lambda: http_get(cluster, leader, "/health")[0] == 503)
    poll(lambda: http_get(cluster, leader, "/health?serializable=1")[0] == 503)
    body = json.loads(http_get(cluster, leader, "/health?serializable=1")[1])
    assert body["health"] == "false" and body["reason"] == "no leader"


def test_certificate_rotation_on_sighup_keeps_the_cluster_serving(cluster):
    leader = cluster.wait_for_leader(agreed=True)
    term = cluster.info(leader)["raft_term"]
    client = cluster.redis(leader)
    client.set("before", "rotation")
    old = {n: server_certificate(cluster, n, s.client_port).serial_number
           for n, s in cluster.nodes.items()}
    for node_id in cluster.nodes:
        certs.issue_node(cluster.cert_dir, node_id, hosts=[cluster.host], local_dev=True)
    new = {n: x509.load_pem_x509_certificate(
        (cluster.cert_dir / f"{n}.pem").read_bytes()).serial_number for n in cluster.nodes}
    assert not set(old.values()) & set(new.values())
    for node_id in cluster.nodes:
        cluster.signal(node_id, signal.SIGHUP)
    for node_id, spec in cluster.nodes.items():
        poll(lambda spec=spec: "reloaded TLS certificates" in spec.log_path.read_text())
        # New connections, client port and peer port, get the new certificate...
        assert server_certificate(cluster, node_id, spec.client_port).serial_number == \
            new[node_id]
        assert server_certificate(cluster, node_id, spec.peer_port).serial_number == \
            new[node_id]
    # ...while the established ones carried on: same leader, same term, still serving.
    assert client.set("after", "rotation") is True
    assert cluster.leader() == leader and cluster.info(leader)["raft_term"] == term
    # A restarted member links up with everyone on the new certificates.
    follower = next(n for n in cluster.nodes if n != leader)
    cluster.stop(follower)
    cluster.start(follower)
    status = poll(lambda: _all_linked(cluster, follower))
    assert status["node"]["leader"] == leader
    assert cluster.redis(follower).get("after") == b"rotation"
    client.close()


def _all_linked(cluster, node_id):
    status, body = http_get(cluster, node_id, "/status")
    if status != 200:
        return None
    doc = json.loads(body)
    peers = [m for m in doc["members"] if not m["self"]]
    if doc["node"]["leader"] and all(m["connected_to"] and m["connected_from"] for m in peers):
        return doc
    return None


def test_sigterm_on_the_leader_hands_over_and_flushes(tmp_path):
    # A long election timeout: without the handoff, nobody would lead for seconds.
    c = LocalCluster(tmp_path / "cluster", size=3,
                     raft={"election_timeout_ms": 2000, "heartbeat_interval_ms": 100})
    c.prepare()
    c.start_all()
    try:
        leader = c.wait_for_leader(timeout_s=30)
        client = c.redis(leader)
        client.set("durable", "yes")
        # twistd ends by re-raising the signal it stopped on (systemd counts that as a
        # clean exit); what matters is that it stopped on its own, not by SIGKILL.
        assert c.stop(leader) in (0, -signal.SIGTERM)
        assert "Server Shut Down" in c.nodes[leader].log_path.read_text()
        survivors = [n for n in c.nodes if n != leader]
        stopped = time.monotonic()
        new_leader = poll(lambda: c.leader(among=survivors), timeout_s=10)
        assert time.monotonic() - stopped < 1.5, "a new leader should not need an election"
        log = c.nodes[leader].log_path.read_text()
        assert f"handing leadership to {new_leader}" in log
        assert c.redis(new_leader).get("durable") == b"yes"
        c.start(leader)  # its log was flushed and closed cleanly: it rejoins as follower
        poll(lambda: c.info(leader).get("raft_leader_id") == new_leader)
    finally:
        c.close()

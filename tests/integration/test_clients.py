"""Real clients against a real cluster: redis-cli, redis-benchmark, telnet-style lines,
bad input, the health endpoint and TLS refusals on the client port."""

import datetime
import json
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request

import pytest

pytestmark = pytest.mark.integration


def redis_cli(cluster, node_id, *args, tls=True):
    spec = cluster.nodes[node_id]
    certs = cluster.cert_dir
    cmd = ["redis-cli", "-h", cluster.host]
    if tls:
        cmd += ["-p", str(spec.client_port), "--tls", "--cacert", str(certs / "ca.pem"),
                "--cert", str(certs / "client.pem"), "--key", str(certs / "client-key.pem")]
    else:
        cmd += ["-p", str(spec.plain_port)]
    out = subprocess.run(cmd + list(args), capture_output=True, timeout=30, text=True)
    return out.stdout.strip(), out.returncode


def test_redis_cli_over_tls_and_plaintext(cluster, redis_tools):
    leader = cluster.wait_for_leader(agreed=True)
    assert redis_cli(cluster, leader, "SET", "greeting", "hello") == ("OK", 0)
    follower = next(n for n in cluster.nodes if n != leader)
    assert redis_cli(cluster, follower, "GET", "greeting") == ("hello", 0)
    assert redis_cli(cluster, follower, "GET", "greeting", tls=False) == ("hello", 0)
    assert redis_cli(cluster, leader, "PING") == ("PONG", 0)
    out, _ = redis_cli(cluster, leader, "INFO", "raft")
    assert "raft_role:leader" in out and f"raft_leader_id:{leader}" in out


def test_redis_benchmark_runs_without_errors(cluster, redis_tools):
    leader = cluster.wait_for_leader(agreed=True)
    spec = cluster.nodes[leader]
    out = subprocess.run(
        ["redis-benchmark", "-h", cluster.host, "-p", str(spec.plain_port), "-t", "set,get",
         "-n", "2000", "-c", "10", "-q"], capture_output=True, timeout=120, text=True)
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.replace("\r", "\n").splitlines()
             if "requests per second" in line]
    assert any(line.startswith("SET") for line in lines), out.stdout
    assert any(line.startswith("GET") for line in lines), out.stdout
    client = cluster.redis(leader)
    assert len(client.get("key:__rand_int__")) == 3  # redis-benchmark writes 3-byte values


def telnet_lines(host, port, lines, expect_replies, timeout_s=30.0):
    """Send raw inline lines like a telnet user; read until ``expect_replies`` lines."""
    with socket.create_connection((host, port), timeout=timeout_s) as s:
        s.sendall(b"".join(line + b"\r\n" for line in lines))
        data = b""
        deadline = time.monotonic() + timeout_s
        while data.count(b"\r\n") < expect_replies and time.monotonic() < deadline:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


def test_telnet_style_inline_commands(cluster):
    leader = cluster.wait_for_leader(agreed=True)
    spec = cluster.nodes[leader]
    data = telnet_lines(cluster.host, spec.plain_port,
                        [b"PING", b'SET "spaced key" "a value"', b"GET 'spaced key'",
                         b"INCR n", b"NOSUCH x"], expect_replies=6)
    assert data.startswith(b"+PONG\r\n+OK\r\n$7\r\na value\r\n:1\r\n-ERR unknown command"), data


def test_bad_input_gets_an_error_and_the_node_keeps_serving(cluster):
    leader = cluster.wait_for_leader(agreed=True)
    spec = cluster.nodes[leader]
    for junk in (b"*2000000000\r\n", b"*1\r\n$2000000000\r\n", b"\x00\xff\xfe garbage\r\n" * 3,
                 b"*1\r\n$abc\r\n", b"A" * (70 * 1024)):
        with socket.create_connection((cluster.host, spec.plain_port), timeout=10) as s:
            s.sendall(junk)
            reply = b""
            try:
                while not reply.endswith(b"\r\n"):
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    reply += chunk
            except (ConnectionResetError, TimeoutError):
                pass
            assert reply == b"" or reply.startswith(b"-ERR"), (junk[:20], reply)
    # A half-sent command does not block others.
    half = socket.create_connection((cluster.host, spec.plain_port), timeout=10)
    half.sendall(b"*3\r\n$3\r\nSET\r\n$1\r\nk")
    client = cluster.redis(leader)
    assert client.set("still", "serving") is True
    assert client.get("still") == b"serving"
    half.close()


def test_health_endpoint(cluster):
    leader = cluster.wait_for_leader(agreed=True)
    spec = cluster.nodes[leader]
    with urllib.request.urlopen(f"http://{cluster.host}:{spec.http_port}/health",
                                timeout=5) as r:
        assert r.status == 200
        body = json.loads(r.read())
    assert body["health"] == "true" and body["leader"] == leader
    # With both followers gone the leader steps down (check-quorum): health flips to 503.
    for node_id in cluster.nodes:
        if node_id != leader:
            cluster.kill(node_id)
    deadline = time.monotonic() + 15
    status = None
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://{cluster.host}:{spec.http_port}/health", timeout=5)
            status = 200
        except urllib.error.HTTPError as e:
            status = e.code
            if status == 503:
                break
        time.sleep(0.1)
    assert status == 503


def tls_handshake(cluster, node_id, certfile=None, keyfile=None):
    ctx = ssl.create_default_context(cafile=str(cluster.cert_dir / "ca.pem"))
    ctx.check_hostname = False
    if certfile:
        ctx.load_cert_chain(str(certfile), str(keyfile))
    spec = cluster.nodes[node_id]
    with socket.create_connection((cluster.host, spec.client_port), timeout=10) as raw:
        with ctx.wrap_socket(raw) as s:
            s.sendall(b"PING\r\n")
            return s.recv(100)


def test_client_port_refuses_missing_foreign_and_expired_certificates(cluster, tmp_path):
    from kvraft import certs
    leader = cluster.wait_for_leader(agreed=True)
    assert tls_handshake(cluster, leader, cluster.cert_dir / "client.pem",
                         cluster.cert_dir / "client-key.pem") == b"+PONG\r\n"
    other = tmp_path / "other-ca"
    certs.init_ca(other)
    certs.issue_client(other, "mallory")
    expired = tmp_path / "expired"
    expired.mkdir()
    now = datetime.datetime.now(datetime.UTC)
    certs.issue_client(cluster.cert_dir, "old", not_before=now - datetime.timedelta(days=10),
                       not_after=now - datetime.timedelta(days=1), out_dir=expired)
    for certfile, keyfile in ((None, None),
                              (other / "mallory.pem", other / "mallory-key.pem"),
                              (expired / "old.pem", expired / "old-key.pem")):
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            reply = tls_handshake(cluster, leader, certfile, keyfile)
            # TLS 1.3 reports a refused client certificate on the first read.
            if not reply:
                raise ConnectionError("closed")
    assert tls_handshake(cluster, leader, cluster.cert_dir / "client.pem",
                         cluster.cert_dir / "client-key.pem") == b"+PONG\r\n"

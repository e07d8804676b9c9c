"""End to end: ClientFactory on a real loopback port with the in-memory backend, spoken
to by redis-py, by raw telnet-style lines, and (when installed) by redis-cli and
redis-benchmark. Client code runs in threads; the reactor serves."""

from __future__ import annotations

import shutil
import socket
import subprocess

import pytest
import pytest_twisted
import redis
from client_support import FakeBackend
from twisted.internet import threads

from kvraft.client.server import ClientFactory

TIMEOUT_S = 10.0


@pytest.fixture
def server():
    """(port, backend, factory) of a client listener on 127.0.0.1."""
    from twisted.internet import reactor
    backend = FakeBackend()
    factory = ClientFactory(backend, clock=reactor)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    yield port.getHost().port, backend, factory
    for protocol in list(factory.connections.values()):
        protocol.transport.abortConnection()
    pytest_twisted.blockon(port.stopListening())


def redis_py_session(port: int, protocol: int | None) -> dict:
    options = {} if protocol is None else {"protocol": protocol}
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=TIMEOUT_S, **options)
    try:
        seen = {"ping": client.ping()}
        seen["set"] = client.set("greeting", "hello")
        seen["get"] = client.get("greeting")
        seen["nx"] = client.set("greeting", "other", nx=True)
        seen["getset"] = client.getset("greeting", "bye")
        seen["incr"] = [client.incr("n"), client.incrby("n", 10), client.decr("n")]
        seen["append"] = client.append("greeting", "!")
        seen["strlen"] = client.strlen("greeting")
        seen["mset"] = client.mset({"a": "1", "b": "2"})
        seen["mget"] = client.mget("a", "b", "missing")
        seen["exists"] = client.exists("a", "b", "missing")
        seen["keys"] = sorted(client.keys("*"))
        seen["dbsize"] = client.dbsize()
        seen["delete"] = client.delete("a", "missing")
        pipe = client.pipeline(transaction=False)
        for i in range(16):
            pipe.set(f"p{i}", i)
        for i in range(16):
            pipe.get(f"p{i}")
        seen["pipeline"] = pipe.execute()
        client.client_setname("e2e")
        seen["name"] = client.client_getname()
        seen["info"] = client.info("raft")
        for bad in (("SET", "k", "v", "EX", "10"), ("NOSUCH",), ("GET",)):
            try:
                client.execute_command(*bad)
            except redis.ResponseError as e:
                seen.setdefault("errors", []).append(str(e))
        seen["after_errors"] = client.ping()
        return seen
    finally:
        client.close()


@pytest.mark.parametrize("protocol", [None, 2, 3])  # None: redis-py's default
@pytest_twisted.inlineCallbacks
def test_redis_py_works_unchanged(server, protocol):
    port, backend, factory = server
    seen = yield threads.deferToThread(redis_py_session, port, protocol)
    assert seen["ping"] is True and seen["set"] is True
    assert seen["get"] == b"hello" and seen["nx"] is None and seen["getset"] == b"hello"
    assert seen["incr"] == [1, 11, 10]
    assert (seen["append"], seen["strlen"]) == (4, 4)
    assert seen["mset"] is True and seen["mget"] == [b"1", b"2", None]
    assert seen["exists"] == 2
    assert seen["keys"] == [b"a", b"b", b"greeting", b"n"]
    assert (seen["dbsize"], seen["delete"]) == (4, 1)
    assert seen["pipeline"] == [True] * 16 + [b"%d" % i for i in range(16)]
    assert seen["name"] in (b"e2e", "e2e")  # RESP3 callbacks decode it
    assert seen["info"]["raft_role"] == "leader"
    assert seen["info"]["raft_members"] == ["n1", "n2", "n3"]  # redis-py splits at ","
    assert seen["errors"][0].startswith("expiry is not supported")
    assert seen["errors"][1].startswith("unknown command 'NOSUCH'")
    assert seen["errors"][2] == "wrong number of arguments for 'get' command"
    assert seen["after_errors"] is True
    assert backend.data[b"greeting"] == b"bye!"
    assert factory.stats.protocol_errors == factory.stats.internal_errors == 0


def telnet(port: int, payload: bytes, replies: int) -> bytes:
    """Send raw bytes like a telnet user; read until ``replies`` CRLF-ended lines."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as s:
        s.sendall(payload)
        data = b""
        while data.count(b"\r\n") < replies:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


@pytest_twisted.inlineCallbacks
def test_telnet_inline_lines_work(server):
    port, _, _ = server
    lines = [b"PING", b'SET greeting "a value"', b"GET greeting", b"EXISTS greeting",
             b"bogus x", b"QUIT"]
    data = yield threads.deferToThread(
        telnet, port, b"".join(line + b"\r\n" for line in lines), 7)
    assert data == (b"+PONG\r\n+OK\r\n$7\r\na value\r\n:1\r\n"
                    b"-ERR unknown command 'bogus', with args beginning with: 'x' \r\n+OK\r\n")


@pytest_twisted.inlineCallbacks
def test_garbage_gets_an_error_and_a_closed_connection_and_the_port_keeps_serving(server):
    port, _, _ = server
    data = yield threads.deferToThread(telnet, port, b"*1\r\n$2000000000\r\n", 99)
    assert data.startswith(b"-ERR Protocol error: invalid bulk length 2000000000")
    data = yield threads.deferToThread(telnet, port, b"PING\r\n", 1)
    assert data == b"+PONG\r\n"


def run_tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(shutil.which("redis-cli") is None, reason="redis-cli is not installed")
@pytest_twisted.inlineCallbacks
def test_redis_cli_works_unchanged(server):
    port, _, _ = server
    cli = ("redis-cli", "-h", "127.0.0.1", "-p", str(port))
    out = yield threads.deferToThread(run_tool, *cli, "SET", "k", "v")
    assert out.stdout.strip() == "OK", out.stderr
    out = yield threads.deferToThread(run_tool, *cli, "GET", "k")
    assert out.stdout.strip() == "v"
    out = yield threads.deferToThread(run_tool, *cli, "INFO", "raft")
    assert "raft_leader_id:n1" in out.stdout


@pytest.mark.skipif(shutil.which("redis-benchmark") is None,
                    reason="redis-benchmark is not installed")
@pytest_twisted.inlineCallbacks
def test_redis_benchmark_runs_without_errors(server):
    port, backend, _ = server
    out = yield threads.deferToThread(
        run_tool, "redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-t", "set,get",
        "-n", "2000", "-c", "4", "-P", "16", "-q")
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.replace("\r", "\n").splitlines()
             if "requests per second" in line]
    assert [line.split(":")[0] for line in lines] == ["SET", "GET"], out.stdout
    assert "ERR" not in out.stdout + out.stderr
    assert "Could not fetch server CONFIG" not in out.stderr
    assert len(backend.data[b"key:__rand_int__"]) == 3  # -d 3, the default

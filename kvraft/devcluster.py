"""A cluster of real ``twistd kvraft`` processes on loopback.

Used by ``kvraft dev`` (a local 3-node cluster for people), by the integration tests, the
benchmark and the chaos harness. Each node gets certificates from one cluster CA, a
config file, a data directory and a log file under ``base_dir``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

start_timeout_s = 30.0
"""How long a node may take to open its client port."""
stop_timeout_s = 15.0


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Ports the kernel says are free now (bound and released together)."""
    socks, ports = [], []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind((host, 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


@dataclass
class NodeSpec:
    """Where one node listens and keeps its files."""

    node_id: str
    peer_port: int
    client_port: int
    plain_port: int
    http_port: int
    data_dir: Path
    config_path: Path
    log_path: Path
    process: subprocess.Popen | None = None
    extra: dict = field(default_factory=dict)
    """Config sections for this node only, merged over the cluster's (e.g.
    ``{"cluster": {"join": True}}`` for a node that joins an existing cluster). Written
    by ``prepare`` or ``write_config``."""


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}"
                                for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {value!r} as TOML")


def _toml_key(key: str) -> str:
    bare = key and all(c.isalnum() or c in "-_" for c in key)
    return key if bare else _toml_value(key)


def write_toml(path: Path, doc: dict) -> None:
    """A tiny TOML writer for our flat two-level configuration documents."""
    lines = []
    for section, table in doc.items():
        lines.append(f"[{section}]")
        lines.extend(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in table.items())
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")


class LocalCluster:
    """Certificates, configs and processes of an N-node cluster under ``base_dir``."""

    def __init__(self, base_dir: str | Path, size: int = 3, host: str = "127.0.0.1",
                 base_port: int | None = None, raft: dict | None = None,
                 storage: dict | None = None, python: str | None = None,
                 extra_config: dict | None = None,
                 peer_routes: dict[str, dict[str, str]] | None = None):
        self.base_dir = Path(base_dir).resolve()
        self.size = size
        self.host = host
        self.python = python or sys.executable
        self.raft = {"election_timeout_ms": 1000, "heartbeat_interval_ms": 100}
        self.raft.update(raft or {})
        self.storage = storage or {"backend": "wal"}
        self.extra_config = extra_config or {}
        self.peer_routes: dict[str, dict[str, str]] = {
            k: dict(v) for k, v in (peer_routes or {}).items()}
        """Per-node overrides of the member addresses it dials: ``{from: {to: "host:port"}}``.
        The chaos harness routes every directed peer link through its proxy this way (TLS
        passes through untouched, so the SAN checks still hold). Set before ``prepare``."""
        self.cert_dir = self.base_dir / "certs"
        ids = [f"n{i}" for i in range(1, size + 1)]
        if base_port is None:
            ports = free_ports(4 * size, host)
        else:
            ports = [base_port + k for k in range(4 * size)]
        self.nodes: dict[str, NodeSpec] = {}
        for i, node_id in enumerate(ids):
            node_dir = self.base_dir / node_id
            if base_port is None:
                peer, client, plain, http = ports[4 * i: 4 * i + 4]
            else:
                # Readable fixed ports for `kvraft dev`: 7001.., 6379.., 6479.., 9101..
                peer, client, plain, http = (base_port + 622 + i, base_port + i,
                                             base_port + 100 + i, base_port + 2722 + i)
            self.nodes[node_id] = NodeSpec(
                node_id, peer, client, plain, http, node_dir / "data",
                node_dir / "kvraft.toml", node_dir / "node.log")

    # -- files ---------------------------------------------------------------------------

    def prepare(self) -> None:
        """Create the CA, node and client certificates and the config files (idempotent)."""
        from kvraft import certs
        self.cert_dir.mkdir(parents=True, exist_ok=True)
        if not (self.cert_dir / "ca.pem").exists():
            certs.init_ca(self.cert_dir)
        for spec in self.nodes.values():
            if not (self.cert_dir / f"{spec.node_id}.pem").exists():
                certs.issue_node(self.cert_dir, spec.node_id, hosts=[self.host], local_dev=True)
            spec.config_path.parent.mkdir(parents=True, exist_ok=True)
            write_toml(spec.config_path, self.config_for(spec))
        if not (self.cert_dir / "client.pem").exists():
            certs.issue_client(self.cert_dir, "client")
        if not (self.cert_dir / "admin.pem").exists():
            certs.issue_client(self.cert_dir, "admin")

    def config_for(self, spec: NodeSpec) -> dict:
        members = {n.node_id: f"{self.host}:{n.peer_port}" for n in self.nodes.values()}
        members.update(self.peer_routes.get(spec.node_id, {}))
        doc = {
            "node": {"id": spec.node_id, "data_dir": str(spec.data_dir)},
            "cluster": {"members": members},
            "peer": {"listen": f"{self.host}:{spec.peer_port}"},
            "client": {"listen": f"{self.host}:{spec.client_port}", "tls": True,
                       "plaintext_listen": f"{self.host}:{spec.plain_port}"},
            "http": {"listen": f"{self.host}:{spec.http_port}"},
            "tls": {"ca": str(self.cert_dir / "ca.pem"),
                    "cert": str(self.cert_dir / f"{spec.node_id}.pem"),
                    "key": str(self.cert_dir / f"{spec.node_id}-key.pem")},
            "raft": dict(self.raft),
            "storage": dict(self.storage),
        }
        for section, table in self.extra_config.items():
            doc.setdefault(section, {}).update(table)
        for section, table in spec.extra.items():
            doc.setdefault(section, {}).update(table)
        return doc

    def write_config(self, node_id: str) -> None:
        """Rewrite one node's config file (after changing ``extra`` or routes)."""
        spec = self.nodes[node_id]
        write_toml(spec.config_path, self.config_for(spec))

    # -- processes -------------------------------------------------------------------------

    def command(self, spec: NodeSpec) -> list[str]:
        # `twistd` as a module of this interpreter: no dependency on PATH or a venv's bin/.
        return [self.python, "-c", "from twisted.scripts.twistd import run; run()",
                "--nodaemon", "--pidfile=",
                f"--logfile={spec.log_path}", "kvraft", "--config", str(spec.config_path)]

    def start(self, node_id: str, wait: bool = True) -> None:
        spec = self.nodes[node_id]
        if spec.process is not None and spec.process.poll() is None:
            raise RuntimeError(f"{node_id} is already running (pid {spec.process.pid})")
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        spec.process = subprocess.Popen(
            self.command(spec), cwd=str(self.base_dir), env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=open(spec.log_path.with_suffix(".err"), "ab"),
            start_new_session=True)
        if wait:
            self.wait_listening(node_id)

    def start_all(self) -> None:
        for node_id in self.nodes:
            self.start(node_id, wait=False)
        for node_id in self.nodes:
            self.wait_listening(node_id)

    def wait_listening(self, node_id: str, timeout_s: float = start_timeout_s) -> None:
        spec = self.nodes[node_id]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if spec.process is not None and spec.process.poll() is not None:
                raise RuntimeError(f"{node_id} exited with {spec.process.returncode}; see "
                                   f"{spec.log_path}\n{self.tail_log(node_id)}")
            try:
                with socket.create_connection((self.host, spec.plain_port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"{node_id} did not listen within {timeout_s}s; see "
                           f"{spec.log_path}\n{self.tail_log(node_id)}")

    def tail_log(self, node_id: str, lines: int = 30) -> str:
        text = ""
        spec = self.nodes[node_id]
        for path in (spec.log_path, spec.log_path.with_suffix(".err")):
            if path.exists():
                text += "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) + "\n"
        return text

    def signal(self, node_id: str, sig: int) -> None:
        spec = self.nodes[node_id]
        if spec.process is not None and spec.process.poll() is None:
            os.kill(spec.process.pid, sig)

    def kill(self, node_id: str) -> None:
        """SIGKILL: the process gets no chance to flush anything."""
        spec = self.nodes[node_id]
        self.signal(node_id, signal.SIGKILL)
        if spec.process is not None:
            spec.process.wait(timeout=stop_timeout_s)

    def pause(self, node_id: str) -> None:
        self.signal(node_id, signal.SIGSTOP)

    def resume(self, node_id: str) -> None:
        self.signal(node_id, signal.SIGCONT)

    def stop(self, node_id: str) -> int | None:
        """SIGTERM and wait; SIGKILL if it does not stop in time."""
        spec = self.nodes[node_id]
        if spec.process is None or spec.process.poll() is not None:
            return spec.process.returncode if spec.process else None
        self.signal(node_id, signal.SIGCONT)
        self.signal(node_id, signal.SIGTERM)
        try:
            return spec.process.wait(timeout=stop_timeout_s)
        except subprocess.TimeoutExpired:
            self.kill(node_id)
            return None

    def stop_all(self) -> None:
        for node_id in self.nodes:
            self.stop(node_id)

    def running(self, node_id: str) -> bool:
        spec = self.nodes[node_id]
        return spec.process is not None and spec.process.poll() is None

    # -- looking at it -----------------------------------------------------------------------

    def info(self, node_id: str, timeout_s: float = 2.0) -> dict[str, str]:
        """``INFO raft`` of a node over its loopback plaintext port, as a dict."""
        reply = raw_command(self.host, self.nodes[node_id].plain_port,
                            [b"INFO", b"raft"], timeout_s)
        if not isinstance(reply, bytes):
            raise RuntimeError(f"INFO from {node_id} returned {reply!r}")
        fields = {}
        for line in reply.decode().splitlines():
            if ":" in line and not line.startswith("#"):
                k, _, v = line.partition(":")
                fields[k.strip()] = v.strip()
        return fields

    def leader(self, among: list[str] | None = None, agreed: bool = False) -> str | None:
        """The one running node in ``among`` that says it leads. With ``agreed``, only if
        every running node of ``among`` that answers also names it as its leader (so a
        client of any of them is served at once)."""
        leaders, named = set(), set()
        for node_id in among or list(self.nodes):
            if not self.running(node_id):
                continue
            try:
                info = self.info(node_id, timeout_s=1.0)
            except (OSError, RuntimeError):
                continue
            if info.get("raft_role") == "leader":
                leaders.add(node_id)
            named.add(info.get("raft_leader_id", ""))
        if len(leaders) != 1:
            return None
        leader = leaders.pop()
        return leader if not agreed or named == {leader} else None

    def wait_for_leader(self, timeout_s: float = 20.0, among: list[str] | None = None,
                        agreed: bool = False) -> str:
        """Poll until one node leads (and, with ``agreed``, every answering node of
        ``among`` knows it); raise TimeoutError after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            leader = self.leader(among, agreed)
            if leader is not None:
                return leader
            time.sleep(0.05)
        raise TimeoutError(f"no leader{' all nodes agree on' if agreed else ''} within "
                           f"{timeout_s}s")

    def redis(self, node_id: str, tls: bool = True, identity: str = "client", **kwargs):
        """A redis-py client for ``node_id`` (mutual TLS with ``identity``'s certificate)."""
        import redis
        spec = self.nodes[node_id]
        if not tls:
            return redis.Redis(host=self.host, port=spec.plain_port, **kwargs)
        return redis.Redis(
            host=self.host, port=spec.client_port, ssl=True,
            ssl_ca_certs=str(self.cert_dir / "ca.pem"),
            ssl_certfile=str(self.cert_dir / f"{identity}.pem"),
            ssl_keyfile=str(self.cert_dir / f"{identity}-key.pem"),
            ssl_check_hostname=False, **kwargs)

    # -- membership -----------------------------------------------------------------------

    def add_node(self, node_id: str | None = None) -> NodeSpec:
        """Prepare a node that joins this running cluster (the next ``nN`` by default):
        its certificate, ports, and a config with ``cluster.join = true`` listing the
        current members. Start it with ``start``, then add it with
        ``admin(leader, b"RAFT.ADD", ...)`` (``peer_address`` is its address)."""
        from kvraft import certs
        if node_id is None:
            numbers = [int(n[1:]) for n in self.nodes if n[1:].isdigit()]
            node_id = f"n{max(numbers, default=0) + 1}"
        if node_id in self.nodes:
            raise ValueError(f"{node_id} is already part of this LocalCluster")
        peer, client, plain, http = free_ports(4, self.host)
        node_dir = self.base_dir / node_id
        spec = NodeSpec(node_id, peer, client, plain, http, node_dir / "data",
                        node_dir / "kvraft.toml", node_dir / "node.log")
        self.nodes[node_id] = spec
        if not (self.cert_dir / f"{node_id}.pem").exists():
            certs.issue_node(self.cert_dir, node_id, hosts=[self.host], local_dev=True)
        spec.config_path.parent.mkdir(parents=True, exist_ok=True)
        doc = self.config_for(spec)
        doc["cluster"]["join"] = True
        write_toml(spec.config_path, doc)
        return spec

    def peer_address(self, node_id: str) -> str:
        """``host:port`` where ``node_id`` listens for peers (what RAFT.ADD takes)."""
        return f"{self.host}:{self.nodes[node_id].peer_port}"

    def admin(self, node_id: str, *args: bytes | str, timeout_s: float = 30.0):
        """One command on ``node_id``'s loopback plaintext port (e.g. ``RAFT.MEMBERS``);
        an error reply comes back as a RuntimeError instance, not raised."""
        return raw_command(self.host, self.nodes[node_id].plain_port,
                           [a.encode() if isinstance(a, str) else a for a in args], timeout_s)

    def close(self) -> None:
        for node_id in self.nodes:
            try:
                self.stop(node_id)
            except Exception:
                self.kill(node_id)


def raw_command(host: str, port: int, args: list[bytes], timeout_s: float = 2.0):
    """Send one RESP command on a fresh plaintext connection and parse the reply."""
    with socket.create_connection((host, port), timeout=timeout_s) as s:
        payload = b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)
        s.sendall(payload)
        reader = s.makefile("rb")
        return _read_reply(reader)


def _read_reply(reader):
    line = reader.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("connection closed mid-reply")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        return RuntimeError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = reader.read(n + 2)
        return data[:-2]
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_read_reply(reader) for _ in range(n)]
    raise ConnectionError(f"unexpected reply {line!r}")

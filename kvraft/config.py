"""Node configuration: a TOML file, validated at start with messages that name the key.

The keys documented in ``etc/kvraft/kvraft.toml`` are a stable interface for operators:
extend them, never rename them.
"""

from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

NODE_ID_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
node_id_bytes_max = 63
proposal_gather_ms_max = 1000  # a gather is meant to last a client's round trip, not seconds


class ConfigError(ValueError):
    """The configuration is unusable; the message names the key and what to do."""


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


@dataclass(frozen=True)
class RaftSettings:
    election_timeout_ms: int = 1000
    heartbeat_interval_ms: int = 100
    tick_ms: int = 0  # 0: heartbeat_interval_ms / heartbeat_ticks
    pre_vote: bool = True
    check_quorum: bool = True
    max_inflight_msgs: int = 256
    max_msg_bytes: int = 1 << 20
    max_uncommitted_bytes: int = 64 << 20
    batch_commands_max: int = 4096
    batch_bytes_max: int = 1 << 20
    request_timeout_ms: int = 5000
    proposal_hold_ms: int = 10  # a leader's next batch waits this long for the last one
    proposal_gather_ms: float = 2.0  # ... then this long for the clients it answered
    snapshot_entries: int = 100_000  # snapshot once this many entries applied since the last
    snapshot_bytes: int = 128 << 20  # ... or this many bytes of entry data
    compaction_margin_entries: int = 10_000  # kept below a snapshot for slow followers
    transfer_timeout_ms: int = 5000  # RAFT.TRANSFER and the SIGTERM hand-off give up after
    promote_lag_entries_max: int = 1000  # a learner this close to the leader may be promoted


@dataclass(frozen=True)
class ClientSettings:
    listen: Address | None = None
    tls: bool = True
    plaintext_listen: Address | None = None  # loopback only: telnet and local tools
    line_bytes_max: int = 64 * 1024
    bulk_bytes_max: int = 16 * 1024 * 1024
    args_max: int = 65536
    pending_requests_max: int = 1024
    connections_max: int = 10000
    idle_timeout_s: float = 0.0
    request_bytes_max: int = 32 * 1024 * 1024
    pending_bytes_max: int = 64 * 1024 * 1024
    output_bytes_max: int = 128 * 1024 * 1024


@dataclass(frozen=True)
class Config:
    """A validated node configuration."""

    node_id: str
    data_dir: Path
    members: dict[str, Address]
    peer_listen: Address
    client: ClientSettings
    http_listen: Address | None
    tls_ca: Path
    tls_cert: Path
    tls_key: Path
    raft: RaftSettings = field(default_factory=RaftSettings)
    storage_backend: str = "wal"
    storage_options: dict[str, Any] = field(default_factory=dict)
    state_machine_plugin: str = "kv"
    state_machine_options: dict[str, Any] = field(default_factory=dict)
    cluster_name: str = "kvraft"
    join: bool = False
    preferred_leader: str = ""
    snapshots_retained: int = 2
    fsync_in_thread: bool = False
    fsync_aio: bool = True
    log_format: str = "text"
    acl: dict[str, str] = field(default_factory=dict)
    source: Path | None = None

    def peers(self) -> dict[str, Address]:
        """Every member but this node."""
        return {k: v for k, v in self.members.items() if k != self.node_id}


def parse_address(value: Any, key: str) -> Address:
    """``"host:port"`` or ``"[v6]:port"`` -> Address, or a ConfigError naming ``key``."""
    if not isinstance(value, str) or ":" not in value:
        raise ConfigError(f"{key}: expected \"host:port\", got {value!r}")
    host, _, port_text = value.rpartition(":")
    host = host.strip("[]")
    if not host:
        raise ConfigError(f"{key}: missing host in {value!r} (use 0.0.0.0 for all interfaces)")
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"{key}: port {port_text!r} in {value!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"{key}: port {port} is out of range 0-65535")
    return Address(host, port)


def check_node_id(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key}: a node id must be a non-empty string, got {value!r}")
    if len(value) > node_id_bytes_max or not set(value) <= NODE_ID_CHARS:
        raise ConfigError(
            f"{key}: node id {value!r} must be at most {node_id_bytes_max} characters of "
            "letters, digits, '-', '_' and '.' (it is also the certificate name DNS:<id>)")
    return value


class _Section:
    """Reads one TOML table, remembering which keys were used to reject unknown ones."""

    def __init__(self, doc: dict, name: str, required: bool = False):
        raw = doc.get(name, {})
        if required and name not in doc:
            raise ConfigError(f"[{name}]: section missing")
        if not isinstance(raw, dict):
            raise ConfigError(f"[{name}]: expected a table, got {type(raw).__name__}")
        self.name, self.raw, self.used = name, raw, set()

    def get(self, key: str, kind: type | tuple, default: Any = None, required: bool = False):
        self.used.add(key)
        full = f"{self.name}.{key}"
        if key not in self.raw:
            if required:
                raise ConfigError(f"{full}: required key missing")
            return default
        value = self.raw[key]
        numeric = kind is int or isinstance(kind, tuple) and int in kind
        if numeric and isinstance(value, bool) or not isinstance(value, kind):
            kinds = kind if isinstance(kind, tuple) else (kind,)
            names = " or ".join(k.__name__ for k in kinds)
            raise ConfigError(f"{full}: expected {names}, got {value!r}")
        return value

    def positive(self, key: str, default: int | float, kind: type | tuple = int):
        value = self.get(key, kind, default)
        if value <= 0:
            raise ConfigError(f"{self.name}.{key}: must be greater than 0, got {value!r}")
        return value

    def finish(self) -> None:
        unknown = sorted(set(self.raw) - self.used)
        if unknown:
            raise ConfigError(
                f"[{self.name}]: unknown key(s) {', '.join(unknown)}; "
                "see etc/kvraft/kvraft.toml for the documented keys")


def load(path: str | Path, join: bool = False) -> Config:
    """Read and validate the TOML file at ``path``; ``join`` sets ``cluster.join``
    (``twistd kvraft --join``)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read configuration {path}: {e.strerror or e}") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    if join:
        cluster = doc.setdefault("cluster", {})
        if isinstance(cluster, dict):
            cluster["join"] = True
    return replace(from_dict(doc, base=path.parent), source=path)


def _path(value: str, base: Path | None) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() or base is None else base / p


def from_dict(doc: dict, base: Path | None = None) -> Config:
    """Validate a parsed TOML document; relative paths are taken relative to ``base``."""
    known = {"node", "cluster", "peer", "client", "http", "tls", "raft", "storage",
             "state_machine", "log", "acl"}
    unknown = sorted(set(doc) - known)
    if unknown:
        raise ConfigError(f"unknown section(s) [{'], ['.join(unknown)}]; known: "
                          f"{', '.join(sorted(known))}")
    node = _Section(doc, "node", required=True)
    node_id = check_node_id(node.get("id", str, required=True), "node.id")
    data_dir = _path(node.get("data_dir", str, required=True), base)
    node.finish()

    cluster = _Section(doc, "cluster")
    raw_members = cluster.get("members", dict, {})
    members = {check_node_id(k, f"cluster.members.{k}"): parse_address(v, f"cluster.members.{k}")
               for k, v in raw_members.items()}
    join = cluster.get("join", bool, False)
    cluster_name = cluster.get("name", str, "kvraft")
    preferred = cluster.get("preferred_leader", str, "")
    if preferred:
        check_node_id(preferred, "cluster.preferred_leader")
    cluster.finish()
    if not join and node_id not in members:
        raise ConfigError(
            f"cluster.members: this node ({node_id!r}) is not listed; list every member "
            "including this one, or set cluster.join = true to join an existing cluster")
    if join and not set(members) - {node_id}:
        raise ConfigError(
            "cluster.members: a joining node (cluster.join = true) must list the current "
            "members and their peer addresses, so that it can answer the leader; add this "
            "node with `kvraft member add` first")

    peer = _Section(doc, "peer", required=True)
    peer_listen = parse_address(peer.get("listen", str, required=True), "peer.listen")
    peer.finish()

    client = _section_client(doc)
    http = _Section(doc, "http")
    http_text = http.get("listen", str, None)
    http.finish()
    http_listen = parse_address(http_text, "http.listen") if http_text else None

    tls = _Section(doc, "tls", required=True)
    tls_paths = {k: _path(tls.get(k, str, required=True), base) for k in ("ca", "cert", "key")}
    tls.finish()

    raft = _section_raft(doc)
    storage = _Section(doc, "storage")
    backend = storage.get("backend", str, "wal")
    snapshots_retained = storage.positive("snapshots_retained", 2)
    fsync_in_thread = storage.get("fsync_in_thread", bool, False)
    fsync_aio = storage.get("fsync_aio", bool, True)
    storage_options = {k: storage.raw[k] for k in storage.raw
                       if k not in ("backend", "snapshots_retained", "fsync_in_thread",
                                    "fsync_aio")}
    storage.used.update(storage_options)
    storage.finish()
    machine = _Section(doc, "state_machine")
    plugin = machine.get("plugin", str, "kv")
    machine_options = {k: machine.raw[k] for k in machine.raw if k != "plugin"}
    machine.used.update(machine_options)
    machine.finish()

    log = _Section(doc, "log")
    log_format = log.get("format", str, "text")
    log.finish()
    if log_format not in ("text", "json"):
        raise ConfigError(f"log.format: expected \"text\" or \"json\", got {log_format!r}")

    acl = _section_acl(doc)
    return Config(
        node_id=node_id, data_dir=data_dir, members=members, peer_listen=peer_listen,
        client=client, http_listen=http_listen, tls_ca=tls_paths["ca"],
        tls_cert=tls_paths["cert"], tls_key=tls_paths["key"], raft=raft,
        storage_backend=backend, storage_options=storage_options,
        state_machine_plugin=plugin, state_machine_options=machine_options,
        cluster_name=cluster_name, join=join, preferred_leader=preferred,
        snapshots_retained=snapshots_retained, fsync_in_thread=fsync_in_thread,
        fsync_aio=fsync_aio, log_format=log_format, acl=acl)


def _section_client(doc: dict) -> ClientSettings:
    s = _Section(doc, "client")
    listen_text = s.get("listen", str, None)
    listen = parse_address(listen_text, "client.listen") if listen_text else None
    tls = s.get("tls", bool, True)
    if listen is not None and not tls and not listen.is_loopback():
        raise ConfigError(
            f"client.tls: plaintext clients are refused on {listen} because it is not a "
            "loopback address; set client.tls = true (clients then need a certificate from "
            "the cluster CA) or bind client.listen to 127.0.0.1")
    plain_text = s.get("plaintext_listen", str, None)
    plaintext_listen = parse_address(plain_text, "client.plaintext_listen") if plain_text else None
    if plaintext_listen is not None and not plaintext_listen.is_loopback():
        raise ConfigError(
            f"client.plaintext_listen: {plaintext_listen} is not a loopback address; a "
            "plaintext client port may only bind 127.0.0.1 or ::1")
    d = ClientSettings()
    settings = ClientSettings(
        listen=listen, tls=tls, plaintext_listen=plaintext_listen,
        line_bytes_max=s.positive("line_bytes_max", d.line_bytes_max),
        bulk_bytes_max=s.positive("bulk_bytes_max", d.bulk_bytes_max),
        args_max=s.positive("args_max", d.args_max),
        pending_requests_max=s.positive("pending_requests_max", d.pending_requests_max),
        connections_max=s.positive("connections_max", d.connections_max),
        request_bytes_max=s.positive("request_bytes_max", d.request_bytes_max),
        pending_bytes_max=s.positive("pending_bytes_max", d.pending_bytes_max),
        output_bytes_max=s.positive("output_bytes_max", d.output_bytes_max),
        idle_timeout_s=float(s.get("idle_timeout_s", (int, float), d.idle_timeout_s)),
    )
    s.finish()
    return settings


def _section_raft(doc: dict) -> RaftSettings:
    s = _Section(doc, "raft")
    d = RaftSettings()
    values = {}
    for name in ("election_timeout_ms", "heartbeat_interval_ms", "max_inflight_msgs",
                 "max_msg_bytes", "max_uncommitted_bytes", "batch_commands_max",
                 "batch_bytes_max", "request_timeout_ms", "snapshot_entries", "snapshot_bytes",
                 "transfer_timeout_ms", "promote_lag_entries_max"):
        values[name] = s.positive(name, getattr(d, name))
    values["compaction_margin_entries"] = s.get(
        "compaction_margin_entries", int, d.compaction_margin_entries)
    if values["compaction_margin_entries"] < 0:
        raise ConfigError("raft.compaction_margin_entries: must be 0 or more, got "
                          f"{values['compaction_margin_entries']!r}")
    values["tick_ms"] = s.get("tick_ms", int, 0)
    values["proposal_hold_ms"] = s.get("proposal_hold_ms", int, d.proposal_hold_ms)
    if values["proposal_hold_ms"] < 0:
        raise ConfigError("raft.proposal_hold_ms: must be 0 or more, got "
                          f"{values['proposal_hold_ms']!r}")
    values["proposal_gather_ms"] = float(
        s.get("proposal_gather_ms", (int, float), d.proposal_gather_ms))
    if not 0 <= values["proposal_gather_ms"] <= proposal_gather_ms_max:
        raise ConfigError(
            f"raft.proposal_gather_ms: must be from 0 to {proposal_gather_ms_max}, got "
            f"{values['proposal_gather_ms']!r}")
    values["pre_vote"] = s.get("pre_vote", bool, True)
    values["check_quorum"] = s.get("check_quorum", bool, True)
    s.finish()
    settings = RaftSettings(**values)
    if settings.election_timeout_ms < 3 * settings.heartbeat_interval_ms:
        raise ConfigError(
            f"raft.election_timeout_ms ({settings.election_timeout_ms}) must be at least 3x "
            f"raft.heartbeat_interval_ms ({settings.heartbeat_interval_ms}), or followers "
            "will start elections while the leader is healthy")
    return settings


ACL_ROLES = ("read", "write", "admin")


def _section_acl(doc: dict) -> dict[str, str]:
    raw = doc.get("acl", {})
    if not isinstance(raw, dict):
        raise ConfigError("[acl]: expected a table of identity = \"read\"|\"write\"|\"admin\"")
    for identity, role in raw.items():
        if role not in ACL_ROLES:
            raise ConfigError(f"acl.{identity}: role must be one of {', '.join(ACL_ROLES)}, "
                              f"got {role!r}")
    return dict(raw)

"""``kvraft bench restart``: resident memory of nodes holding N values, and how long a
restarted node takes to serve them again.

The key space is filled once (``key:%012d``, ``--value-bytes`` each), every node is
waited for until it applied the last write, then each node's RSS is read from /proc.
One follower is then stopped (SIGTERM) and started again, timing: the client port
accepting connections, and a READONLY GET of the last key written returning its value
(the node restored its snapshot and replayed its log). ``--all`` restarts the whole
cluster instead and times a linearizable GET (an election included).
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from pathlib import Path

from kvraft.bench import cli, runner
from kvraft.bench.loadgen import command
from kvraft.bench.procstat import memory_kib

serve_timeout_s = 120.0


def main(argv: list[str]) -> int:
    """``kvraft bench restart``."""
    parser = argparse.ArgumentParser(prog="kvraft bench restart",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--value-bytes", type=int, default=100)
    parser.add_argument("--all", action="store_true",
                        help="restart every node, not one follower")
    cli.add_cluster_options(parser)
    cli.add_output_options(parser, "restart")
    args = parser.parse_args(argv)
    if args.target:
        print("kvraft bench restart: needs a local cluster it can restart (no --target)",
              file=sys.stderr)
        return 2
    progress = cli.Progress(args.quiet)
    try:
        with cli.cluster_target(args, progress) as target:
            result = measure(target, args.keys, args.value_bytes, args.all, progress)
    except (OSError, RuntimeError, TimeoutError) as e:
        progress.done()
        print(f"kvraft bench restart: {e}", file=sys.stderr)
        return 1
    progress.done()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{args.name}.json"
    path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    for name, node in result["nodes"].items():
        print(f"{name}: rss {node['rss_mib']:.0f} MiB (peak {node['rss_hwm_mib']:.0f}), "
              f"data {node['data_mib']:.0f} MiB")
    r = result["restart"]
    print(f"restart of {r['nodes']}: client port open after {r['listening_s']:.2f} s, "
          f"serving {result['keys']:,} keys after {r['serving_s']:.2f} s")
    print(f"result: {path}")
    return 0


def measure(target, keys: int, value_bytes: int, restart_all: bool, progress) -> dict:
    """Fill, measure memory, restart, measure time to serve."""
    cluster = target.cluster
    fill_s = runner.fill(target, keys, value_bytes, progress)
    progress.done()
    last_key = b"key:%012d" % (keys - 1)
    deadline = time.monotonic() + serve_timeout_s
    leader_applied = int(cluster.info(target.leader)["raft_applied_index"])
    for node in cluster.nodes:
        while int(cluster.info(node)["raft_applied_index"]) < leader_applied:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{node} did not apply the fill in time")
            time.sleep(0.1)
    nodes = {}
    for name, spec in cluster.nodes.items():
        rss, hwm = memory_kib(spec.process.pid) or (0, 0)
        nodes[name] = {"rss_mib": round(rss / 1024, 1), "rss_hwm_mib": round(hwm / 1024, 1),
                       "data_mib": round(_dir_bytes(spec.data_dir) / 2**20, 1)}
    victims = list(cluster.nodes) if restart_all else [
        next(n for n in cluster.nodes if n != target.leader)]
    progress(f"restarting {', '.join(victims)} ...")
    for name in victims:
        cluster.stop(name)
    started = time.monotonic()
    for name in victims:
        cluster.start(name, wait=False)
    listening = {}
    for name in victims:
        cluster.wait_listening(name, timeout_s=serve_timeout_s)
        listening[name] = time.monotonic() - started
    expected = b"x" * value_bytes
    serving_s = 0.0
    for name in victims:
        port = cluster.nodes[name].plain_port
        readonly = not restart_all
        while True:
            if time.monotonic() - started > serve_timeout_s:
                raise TimeoutError(f"{name} did not serve {last_key!r} within "
                                   f"{serve_timeout_s:.0f} s of its restart")
            if _get(cluster.host, port, last_key, readonly) == expected:
                break
            time.sleep(0.02)
        serving_s = max(serving_s, time.monotonic() - started)
    restarted = {}
    for name in victims:
        rss, hwm = memory_kib(cluster.nodes[name].process.pid) or (0, 0)
        restarted[name] = round(rss / 1024, 1)
    return {"keys": keys, "value_bytes": value_bytes, "fill_s": fill_s, "nodes": nodes,
            "restart": {"nodes": ",".join(victims), "listening_s": round(max(
                listening.values()), 3), "serving_s": round(serving_s, 3),
                "rss_after_restart_mib": restarted}}


def _get(host: str, port: int, key: bytes, readonly: bool) -> bytes | None:
    """GET ``key`` on a fresh connection (READONLY first if asked); None on any failure."""
    try:
        with socket.create_connection((host, port), timeout=2.0) as s:
            if readonly:
                s.sendall(command(b"READONLY"))
                if not s.recv(64).startswith(b"+OK"):
                    return None
            s.sendall(command(b"GET", key))
            data = b""
            while not data.endswith(b"\r\n") or (data.startswith(b"$") and data.count(
                    b"\r\n") < 2 and not data.startswith(b"$-1")):
                chunk = s.recv(65536)
                if not chunk:
                    return None
                data += chunk
    except OSError:
        return None
    if not data.startswith(b"$") or data.startswith(b"$-1"):
        return None
    header, _, rest = data.partition(b"\r\n")
    return rest[:int(header[1:])]


def _dir_bytes(path) -> int:
    total = 0
    for p in Path(path).rglob("*"):
        try:
            if p.is_file():
                total += p.stat().st_size
        except OSError:
            pass
    return total

"""``kvraft dev``: a local 3-node cluster under ./var/dev for trying kvraft out."""

from __future__ import annotations

import argparse
import signal
import time

from kvraft.devcluster import LocalCluster


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="kvraft dev", description=__doc__)
    parser.add_argument("--dir", default="var/dev", help="where certificates, configs, data "
                        "and logs go (default: ./var/dev; kept between runs)")
    parser.add_argument("--nodes", type=int, default=3, help="cluster size (default 3)")
    parser.add_argument("--base-port", type=int, default=6379,
                        help="TLS client port of n1 (default 6379); n2, n3 use the next ones")
    args = parser.parse_args(argv)
    cluster = LocalCluster(args.dir, size=args.nodes, base_port=args.base_port)
    cluster.prepare()
    stopping = []
    signal.signal(signal.SIGINT, lambda *_: stopping.append(True))
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    try:
        cluster.start_all()
        leader = cluster.wait_for_leader()
        print(_banner(cluster, leader), flush=True)
        while not stopping:
            for node_id in cluster.nodes:
                if not cluster.running(node_id) and not stopping:
                    print(f"{node_id} exited; its log: {cluster.nodes[node_id].log_path}")
                    stopping.append(True)
            time.sleep(0.2)
    finally:
        print("stopping the cluster...", flush=True)
        cluster.close()
        print("stopped.")
    return 0


def _banner(cluster: LocalCluster, leader: str) -> str:
    certs = cluster.cert_dir
    n1 = cluster.nodes["n1"]
    lines = [f"kvraft: {len(cluster.nodes)} nodes running, leader {leader}", ""]
    for spec in cluster.nodes.values():
        lines.append(f"  {spec.node_id}: client TLS {cluster.host}:{spec.client_port}  "
                     f"plaintext {cluster.host}:{spec.plain_port}  peer :{spec.peer_port}  "
                     f"http http://{cluster.host}:{spec.http_port}/health  log {spec.log_path}")
    lines += [
        "",
        "connect with redis-cli over mutual TLS:",
        f"  redis-cli -p {n1.client_port} --tls --cacert {certs}/ca.pem "
        f"--cert {certs}/client.pem --key {certs}/client-key.pem",
        "or over the loopback plaintext port (telnet works too):",
        f"  redis-cli -p {n1.plain_port}        telnet {cluster.host} {n1.plain_port}",
        "",
        "Ctrl-C stops all nodes.",
    ]
    return "\n".join(lines)

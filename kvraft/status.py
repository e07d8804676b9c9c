"""``kvraft status``: each member's role, term and indices, read with INFO raft."""

from __future__ import annotations

import argparse

from kvraft.devcluster import raw_command


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="kvraft status", description=__doc__)
    parser.add_argument("addresses", nargs="*", default=["127.0.0.1:6479", "127.0.0.1:6480",
                                                         "127.0.0.1:6481"],
                        help="plaintext client addresses host:port (default: the dev cluster)")
    args = parser.parse_args(argv)
    header = f"{'address':<22} {'node':<6} {'role':<14} {'term':>6} {'leader':<7} " \
             f"{'commit':>8} {'applied':>8}"
    print(header)
    failures = 0
    for address in args.addresses:
        host, _, port = address.rpartition(":")
        try:
            reply = raw_command(host or "127.0.0.1", int(port), [b"INFO", b"raft"])
        except OSError as e:
            print(f"{address:<22} unreachable: {e}")
            failures += 1
            continue
        if not isinstance(reply, bytes):
            print(f"{address:<22} error: {reply}")
            failures += 1
            continue
        info = dict(line.split(":", 1) for line in reply.decode().splitlines()
                    if ":" in line and not line.startswith("#"))
        print(f"{address:<22} {info.get('raft_node_id', '?'):<6} "
              f"{info.get('raft_role', '?'):<14} {info.get('raft_term', '?'):>6} "
              f"{info.get('raft_leader_id', '') or '-':<7} "
              f"{info.get('raft_commit_index', '?'):>8} {info.get('raft_applied_index', '?'):>8}")
    return 1 if failures else 0

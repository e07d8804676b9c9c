"""``kvraft chaos`` / ``python -m kvraft.testing.chaos``: one chaos run from the shell.

Exit status: 0 when the verdict is pass, 1 when a check failed, 2 for bad arguments or
a run that could not start (the message says why).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kvraft.testing.chaos.harness import PROFILES, profile, run
from kvraft.testing.chaos.nemesis import NEMESES


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kvraft chaos",
        description="Run a real kvraft cluster under faults and check what clients saw "
                    "(linearizable registers, no lost writes, convergence, recovery).")
    p.add_argument("--profile", choices=sorted(PROFILES), default="ci",
                   help="ci: 3 nodes, every fault once, ~2.5 minutes; long: 5 nodes, "
                        "30 minutes of faults (default ci)")
    p.add_argument("--nodes", type=int, help="cluster size (default: the profile's)")
    p.add_argument("--duration", type=float, metavar="SECONDS",
                   help="length of the fault schedule (default: the profile's)")
    p.add_argument("--seed", type=int, default=1, help="seed of the schedule and workload")
    p.add_argument("--out", type=Path, default=Path("var/chaos"),
                   help="directory for the report, history, timeline and the cluster's "
                        "files and logs (default ./var/chaos)")
    p.add_argument("--nemesis", action="append", metavar="KIND",
                   help=f"only these faults (repeat the flag); kinds: {', '.join(NEMESES)}")
    p.add_argument("--clients", type=int, metavar="N", help="register clients")
    p.add_argument("--readonly-reads", action="store_true",
                   help="clients read with READONLY (stale local reads): a negative "
                        "control, the checker must reject the run")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.nemesis:
        unknown = [k for k in args.nemesis if k not in NEMESES]
        if unknown:
            print(f"kvraft chaos: unknown nemesis {', '.join(unknown)}; choose from "
                  f"{', '.join(NEMESES)}", file=sys.stderr)
            return 2
    try:
        config = profile(args.profile, nodes=args.nodes, duration_s=args.duration,
                         seed=args.seed, out_dir=args.out,
                         nemeses=tuple(args.nemesis) if args.nemesis else None,
                         register_clients=args.clients,
                         readonly_reads=args.readonly_reads or None)
        summary = run(config)
    except (ValueError, RuntimeError, TimeoutError) as e:
        print(f"kvraft chaos: {e}", file=sys.stderr)
        return 2
    return 0 if summary["verdict"] == "pass" else 1

"""The ``kvraft`` command: operator tools. ``kvraft --help`` lists them.

Each subcommand lives in its own module with a ``main(argv) -> int`` and is imported only
when it runs, so ``kvraft certs`` does not pay for the benchmark's imports.
"""

from __future__ import annotations

import importlib
import sys

SUBCOMMANDS = {
    "bench": ("kvraft.bench", "benchmark a local or given cluster (JSON result, PNG chart)"),
    "certs": ("kvraft.certs", "create a cluster CA and node/client certificates"),
    "chaos": ("kvraft.testing.chaos.cli", "fault-test a real local cluster (Jepsen-style)"),
    "dev": ("kvraft.dev", "run a local 3-node cluster under ./var/dev (Ctrl-C stops it)"),
    "status": ("kvraft.status", "show each member's role, term and indices"),
    "member": ("kvraft.admin.member", "list, add, promote, remove or replace members"),
    "leader": ("kvraft.admin.leader", "transfer leadership to another voter"),
    "snapshot": ("kvraft.admin.snapshot", "snapshot the state and compact the log now"),
}


def usage() -> str:
    width = max(len(name) for name in SUBCOMMANDS)
    lines = ["usage: kvraft <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in SUBCOMMANDS.items()]
    lines += ["", "`kvraft <command> --help` describes a command. Nodes run with "
              "`twistd -n kvraft --config FILE`."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"kvraft: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())

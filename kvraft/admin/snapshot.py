"""``kvraft snapshot``: snapshot the state machine now (and compact the log) on each
given node; prints the index each snapshot covers."""

from __future__ import annotations

import argparse

from kvraft.admin import Admin, add_connection_options, check, run


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="kvraft snapshot", description=__doc__)
    add_connection_options(parser)
    return run(_main, argv, parser)


def _main(args: argparse.Namespace) -> int:
    admin = Admin(args)
    for node in admin.nodes:
        index = check(admin.command(node, "RAFT.SNAPSHOT"))
        print(f"{node}: snapshot at index {index}")
    return 0

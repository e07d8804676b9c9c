"""``kvraft leader transfer [ID]``: move leadership to voter ID (default: the most
caught-up other voter), e.g. before maintenance on the leader's machine."""

from __future__ import annotations

import argparse

from kvraft.admin import Admin, add_connection_options, check, run


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="kvraft leader", description=__doc__)
    sub = parser.add_subparsers(dest="action", required=True)
    transfer = sub.add_parser("transfer", help="hand leadership to another voter")
    transfer.add_argument("id", nargs="?", help="the new leader (default: the most "
                          "caught-up other voter)")
    add_connection_options(transfer)
    return run(_main, argv, parser)


def _main(args: argparse.Namespace) -> int:
    admin = Admin(args)
    command = ["RAFT.TRANSFER"] + ([args.id] if args.id else [])
    check(admin.on_leader(*command))
    print(f"{admin.find_leader()} leads now" if not args.id else f"{args.id} leads now")
    return 0

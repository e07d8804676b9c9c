"""``kvraft member list|add|promote|remove|replace``: change the cluster's membership.

New nodes join as learners (they never count toward a quorum while catching up);
``promote`` makes a caught-up learner a voter; ``replace OLD NEW HOST:PORT`` is add +
wait + promote + remove. Start the new node with ``cluster.join = true`` (or
``twistd kvraft --join``) before or after ``add``.
"""

from __future__ import annotations

import argparse
import time

from kvraft.admin import Admin, AdminError, add_connection_options, check, members_table, run

catch_up_wait_s_default = 300.0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="kvraft member", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="members, roles and (from the leader) replication lag")
    add = sub.add_parser("add", help="add a node (a learner unless --voter)")
    add.add_argument("id")
    add.add_argument("address", metavar="HOST:PORT", help="the new node's peer address")
    add.add_argument("--voter", action="store_true",
                     help="add it as a voter at once (it counts toward quorums while empty)")
    promote = sub.add_parser("promote", help="make a caught-up learner a voter")
    promote.add_argument("id")
    promote.add_argument("--wait", type=float, default=catch_up_wait_s_default,
                         help="seconds to wait for the learner to catch up (default "
                         f"{catch_up_wait_s_default:g})")
    remove = sub.add_parser("remove", help="remove a node (the leader included)")
    remove.add_argument("id")
    replace = sub.add_parser("replace", help="add NEW as a learner, promote it once caught "
                             "up, then remove OLD")
    replace.add_argument("old")
    replace.add_argument("new")
    replace.add_argument("address", metavar="HOST:PORT", help="NEW's peer address")
    replace.add_argument("--wait", type=float, default=catch_up_wait_s_default)
    for action in sub.choices.values():
        add_connection_options(action)
    return run(_main, argv, parser)


def _main(args: argparse.Namespace) -> int:
    admin = Admin(args)
    if args.action == "list":
        print(members_table(check(admin.on_leader("RAFT.MEMBERS"))))
    elif args.action == "add":
        check(admin.on_leader("RAFT.ADD", args.id, args.address,
                              "voter" if args.voter else "learner"))
        print(f"added {args.id} ({args.address}) as a {'voter' if args.voter else 'learner'}")
    elif args.action == "promote":
        promote(admin, args.id, args.wait)
        print(f"{args.id} is a voter")
    elif args.action == "remove":
        check(admin.on_leader("RAFT.REMOVE", args.id))
        print(f"removed {args.id}")
    elif args.action == "replace":
        check(admin.on_leader("RAFT.ADD", args.new, args.address, "learner"))
        print(f"added {args.new} ({args.address}) as a learner; waiting for it to catch up")
        promote(admin, args.new, args.wait)
        print(f"{args.new} is a voter")
        check(admin.on_leader("RAFT.REMOVE", args.old))
        print(f"removed {args.old}")
    return 0


def promote(admin: Admin, node_id: str, wait_s: float) -> None:
    """RAFT.PROMOTE, retried while the learner is still catching up."""
    deadline = time.monotonic() + wait_s
    while True:
        reply = admin.on_leader("RAFT.PROMOTE", node_id)
        if not isinstance(reply, Exception):
            return
        if ("not caught up" not in str(reply) and "in progress" not in str(reply)) \
                or time.monotonic() > deadline:
            raise AdminError(str(reply))
        time.sleep(0.5)

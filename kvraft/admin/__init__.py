"""``kvraft member``, ``kvraft leader`` and ``kvraft snapshot``: cluster administration
over the client port, with the ``RAFT.*`` admin commands (kvraft.membership).

Every tool takes the nodes to talk to as ``--node HOST:PORT`` (repeatable; default: the
``kvraft dev`` cluster's loopback plaintext ports), and ``--tls`` with ``--cacert``,
``--cert`` and ``--key`` for the TLS client port (the certificate's identity needs the
``admin`` role when the node has an [acl]). Membership changes run on the leader: the
tools find it among the given nodes (INFO raft) and follow a ``NOTLEADER`` answer.
"""

from __future__ import annotations

import argparse
import socket
import ssl
import sys
import time

from kvraft.devcluster import _read_reply

DEV_NODES = ["127.0.0.1:6479", "127.0.0.1:6480", "127.0.0.1:6481"]
timeout_s_default = 30.0
leader_attempts_max = 8
"""Times a command follows NOTLEADER, waits for an election or for the previous change
to finish, before giving up (about 15 s in all)."""


class AdminError(Exception):
    """What went wrong, for the operator; the tool prints it and exits 1."""


def add_connection_options(parser: argparse.ArgumentParser) -> None:
    """--node, --tls, --cacert, --cert, --key, --timeout."""
    parser.add_argument("--node", action="append", metavar="HOST:PORT",
                        help="a node's client port (repeat for several; default: the dev "
                        "cluster's plaintext ports " + ", ".join(DEV_NODES) + ")")
    parser.add_argument("--tls", action="store_true",
                        help="connect with TLS (the node's client.listen port)")
    parser.add_argument("--cacert", help="cluster CA certificate (with --tls)")
    parser.add_argument("--cert", help="client certificate (with --tls)")
    parser.add_argument("--key", help="client certificate's key (with --tls)")
    parser.add_argument("--timeout", type=float, default=timeout_s_default,
                        help=f"seconds to wait for an answer (default {timeout_s_default:g})")


class Admin:
    """Sends RAFT.* commands to the nodes named on the command line."""

    def __init__(self, args: argparse.Namespace):
        self.nodes = args.node or list(DEV_NODES)
        self.timeout_s = args.timeout
        self.context = None
        if args.tls:
            if not (args.cacert and args.cert and args.key):
                raise AdminError("--tls needs --cacert, --cert and --key (e.g. from "
                                 "`kvraft certs client admin`)")
            context = ssl.create_default_context(cafile=args.cacert)
            context.load_cert_chain(args.cert, args.key)
            context.check_hostname = False  # nodes are checked against the cluster CA
            self.context = context

    def command(self, node: str, *args: str | bytes):
        """One command on ``node``; the parsed reply (an error reply is an Exception
        instance, returned, not raised)."""
        host, _, port = node.rpartition(":")
        try:
            with socket.create_connection((host or "127.0.0.1", int(port)),
                                          timeout=self.timeout_s) as raw:
                sock = self.context.wrap_socket(raw) if self.context else raw
                payload = [a.encode() if isinstance(a, str) else a for a in args]
                sock.sendall(b"*%d\r\n" % len(payload) + b"".join(
                    b"$%d\r\n%s\r\n" % (len(a), a) for a in payload))
                return _read_reply(sock.makefile("rb"))
        except (OSError, ValueError) as e:
            raise AdminError(f"{node}: {e}") from None

    def info(self, node: str) -> dict[str, str]:
        """INFO raft of ``node`` as a dict."""
        reply = self.command(node, "INFO", "raft")
        if not isinstance(reply, bytes):
            raise AdminError(f"{node}: INFO failed: {reply}")
        return dict(line.split(":", 1) for line in reply.decode().splitlines()
                    if ":" in line and not line.startswith("#"))

    def find_leader(self) -> str:
        """The address (among ``nodes``) of the node that says it leads."""
        errors = []
        for node in self.nodes:
            try:
                if self.info(node).get("raft_role") == "leader":
                    return node
            except AdminError as e:
                errors.append(str(e))
        raise AdminError("no leader among " + ", ".join(self.nodes) + (
            " (" + "; ".join(errors) + ")" if errors else "") + ": list the leader with "
            "--node, or wait for an election")

    def on_leader(self, *args: str):
        """Run a command on the leader, following NOTLEADER answers and elections."""
        reply = None
        for attempt in range(leader_attempts_max):
            try:
                leader = self.find_leader()
            except AdminError:
                if attempt == leader_attempts_max - 1:
                    raise
                time.sleep(1.0)
                continue
            reply = self.command(leader, *args)
            if isinstance(reply, Exception) and str(reply).startswith(
                    ("NOTLEADER", "CLUSTERDOWN", "ERR a membership change is in progress")):
                # A new leader, or the previous change finishing (C_new follows C_old,new
                # within a heartbeat or two): try again shortly.
                time.sleep(0.5 * (attempt + 1))
                continue
            return reply
        if reply is not None:
            return reply  # the last refusal, for the caller to report
        raise AdminError(f"{args[0]}: the leader kept changing; retry")


def check(reply) -> object:
    """The reply, or AdminError if it is an error reply."""
    if isinstance(reply, Exception):
        raise AdminError(str(reply))
    return reply


def run(main_body, argv: list[str], parser: argparse.ArgumentParser) -> int:
    """Parse, run ``main_body(args)``, and turn AdminError into exit status 1."""
    args = parser.parse_args(argv)
    try:
        return int(main_body(args) or 0)
    except AdminError as e:
        print(f"{parser.prog}: {e}", file=sys.stderr)
        return 1


def members_table(rows: list) -> str:
    """RAFT.MEMBERS rows as an aligned table."""
    columns = ["id", "address", "role", "leader", "match", "lag", "state"]
    table = []
    for row in rows:
        fields = {k.decode(): v for k, v in zip(row[::2], row[1::2], strict=True)}
        table.append([_text(fields.get(c, "")) for c in columns])
        table[-1][3] = "*" if fields.get("leader") == 1 else ""
    widths = [max(len(c), *(len(r[i]) for r in table)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
              for r in table]
    return "\n".join(lines)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)

"""The membership nemesis: remove a member (sometimes the leader), run without it, then
bring it back as a new, empty node that joins as a learner and is promoted to voter.

Through the product's admin commands on the leader's loopback plaintext port
(``RAFT.REMOVE``, ``RAFT.ADD id host:port learner``, ``RAFT.PROMOTE``; see
``kvraft.membership``). The removed node's data directory is wiped: it comes back with
``cluster.join = true`` and is brought up to date by a snapshot.

Peer addresses: a member added by ``RAFT.ADD`` is dialed by every node at the one
address in the change, so per-link proxying (``A->X`` vs ``B->X``) cannot exist for
it. The harness gives it the proxy's shared inbound link ``*->X`` instead, and from
then on the nemesis blocks ``*->X`` wherever a partition blocks any link into X (the
fault's description lists the links actually blocked). X's own outgoing links keep
their per-link proxies (they come from X's configuration).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable

from kvraft.devcluster import LocalCluster
from kvraft.testing.chaos.client import (
    ConnectError,
    ErrorReply,
    OutcomeLostError,
    RespClient,
)

admin_timeout_s = 10.0
"""How long the harness waits for the answer to one admin command before it looks at
RAFT.MEMBERS instead. A change is answered once in effect, which takes a second or two
on a healthy cluster; the node itself gives up after 60 s
(``kvraft.membership.change_timeout_s``)."""
change_s_max = 90.0
"""How long one remove, add or promote may take, retries included."""
_RETRYABLE = ("NOTLEADER", "CLUSTERDOWN", "TIMEOUT", "ERR a membership change is in "
              "progress", "ERR the membership change was lost", "lost", "connect", "tls")


def members(cluster: LocalCluster, node_id: str) -> dict[str, str] | None:
    """``{member: role}`` as ``node_id`` sees it (RAFT.MEMBERS), or None."""
    reply = admin(cluster, node_id, [b"RAFT.MEMBERS"], timeout_s=3.0)
    if not isinstance(reply, list):
        return None
    table = {}
    for row in reply:
        fields = dict(zip(row[::2], row[1::2], strict=False))
        table[fields[b"id"].decode()] = fields[b"role"].decode()
    return table


def admin(cluster: LocalCluster, node_id: str, args: list, timeout_s: float = admin_timeout_s):
    """One admin command on ``node_id``'s plaintext port: the reply, or an ErrorReply
    saying what broke."""
    spec = cluster.nodes[node_id]
    conn = RespClient(cluster.host, spec.plain_port, timeout_s=timeout_s, connect_timeout_s=1.0)
    try:
        return conn.call(*args)
    except ConnectError as e:
        return ErrorReply(f"connect {e}")
    except OutcomeLostError as e:
        return ErrorReply(f"lost {e}")
    finally:
        conn.close()


def change(cluster: LocalCluster, args: list, done: Callable[[dict[str, str]], bool],
           retry_also: tuple[str, ...] = (),
           sleep: Callable[[float], None] = time.sleep) -> tuple[bool, str]:
    """Send a membership change to the leader until ``done(members)`` holds; retry
    through leader changes and pending changes. ``(True, how)`` or ``(False, why)``."""
    deadline = time.monotonic() + change_s_max
    last = "no leader"
    while time.monotonic() < deadline:
        leader = cluster.leader()
        if leader is None:
            sleep(0.2)
            continue
        seen = members(cluster, leader)
        if seen is not None and done(seen):
            return True, "done"
        reply = admin(cluster, leader, args)
        if reply == "OK":
            return True, "OK"
        last = str(reply)
        seen = members(cluster, leader)
        if seen is not None and done(seen):
            return True, f"in effect, but the command answered {last[:80]!r}"
        if not isinstance(reply, ErrorReply) or not last.startswith(_RETRYABLE + retry_also):
            return False, last
        sleep(0.3)
    return False, f"not done within {change_s_max} s (last reply: {last})"


class MembershipChange:
    """One remove-then-rejoin round for ``node``; ``remove()`` starts the fault,
    ``rejoin()`` heals it."""

    def __init__(self, cluster: LocalCluster, node: str, address: str,
                 log: Callable[[str], None]):
        self.cluster = cluster
        self.node = node
        self.address = address
        self.log = log
        self.removed = False

    def remove(self) -> str:
        started = time.monotonic()
        ok, how = change(self.cluster, [b"RAFT.REMOVE", self.node],
                         lambda m: self.node not in m)
        if not ok:
            return f"RAFT.REMOVE {self.node} failed: {how}"
        self.removed = True
        self.cluster.kill(self.node)
        shutil.rmtree(self.cluster.nodes[self.node].data_dir, ignore_errors=True)
        return (f"removed {self.node} in {time.monotonic() - started:.1f} s ({how}), "
                "stopped it and wiped its data")

    def rejoin(self) -> list[str]:
        """Add the node back as a learner, start it empty, promote it; notes on what
        did not work (empty if all did)."""
        if not self.removed:
            return []
        notes = []
        spec = self.cluster.nodes[self.node]
        spec.extra.setdefault("cluster", {})["join"] = True
        self.cluster.write_config(self.node)
        ok, how = change(self.cluster, [b"RAFT.ADD", self.node, self.address, b"learner"],
                         lambda m: self.node in m)
        if not ok:
            notes.append(f"RAFT.ADD {self.node} failed: {how}")
        self.cluster.start(self.node, wait=True)
        if ok:
            ok, how = change(self.cluster, [b"RAFT.PROMOTE", self.node],
                             lambda m: m.get(self.node) == "voter",
                             retry_also=("ERR " + self.node + " is not caught up",))
            if not ok:
                notes.append(f"RAFT.PROMOTE {self.node} failed: {how}")
        self.log(f"  {self.node} rejoined as a voter" if not notes else
                 f"  {self.node} rejoin problems: {'; '.join(notes)}")
        return notes

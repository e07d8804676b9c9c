"""Nemeses: the faults the harness injects into a real cluster, and how each heals.

Each fault is one call that starts it and returns a ``Fault`` whose ``heal()`` ends it:

==================  ===================================================================
kill-random         SIGKILL a random node; restart it at heal
kill-leader         SIGKILL the leader; restart it at heal
pause-random        SIGSTOP a random node; SIGCONT at heal
pause-leader        SIGSTOP the leader (it wakes up believing it leads)
partition-halves    random majority / minority halves
partition-leader    the leader alone on one side
partition-bridge    two halves that only one node (the bridge) can talk to
partition-one-way   the leader's outgoing links blocked, or its incoming ones
slow-links          every link delayed (tens to hundreds of ms, with jitter)
torn-wal            SIGKILL a node under load, tear its last WAL write, restart at heal
membership          RAFT.REMOVE a member (the leader one time in three; later rounds the
                    same node again), wipe it; at heal it rejoins empty as a learner and
                    is promoted to voter (``membership.py``)
==================  ===================================================================

Partitions block peer links in the proxy (``kvraft.testing.chaos.proxy``), in ``hold``
mode (bytes held, delivered late at heal) or ``reset`` mode (connections refused), the
mode drawn per fault. Client ports are never cut: clients of a minority node keep
talking to it, which is the point (it must refuse or time out, never answer stale).

The torn write (``tear_wal``) is faithful to "the last, unsynced write was torn": it
appends the first bytes of a further record after the last complete one, as a crash
during a write that was never synced (so never acknowledged) leaves it; the node must
cut it off on restart and carry on. Cutting bytes off the last *complete* record is a
different fault: that record may have been synced and acknowledged (after SIGKILL the
page cache keeps every completed write), and losing acknowledged data breaks the
storage contract Raft relies on; ``tear_wal(..., cut_complete=True)`` does it for the
reproduction of what the node does then (tests/chaos/test_lost_tail.py), never in a
schedule.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvraft.devcluster import LocalCluster
from kvraft.testing.chaos.proxy import HOLD, RESET, ProxyProcess

NEMESES = (
    "kill-random", "kill-leader", "pause-random", "pause-leader", "partition-halves",
    "partition-leader", "partition-bridge", "partition-one-way", "slow-links", "torn-wal",
    "membership",
)
"""Every fault kind, in the order the CI profile introduces them (shuffled by seed)."""

torn_bytes_max = 24
"""At most this many bytes are cut from (or left of) a torn last record."""


def link_name(src: str, dst: str) -> str:
    """The proxy's name for the directed peer link ``src -> dst``."""
    return f"{src}->{dst}"


def shared_link_name(dst: str) -> str:
    """The proxy's shared inbound link of ``dst`` (for a member added by RAFT.ADD)."""
    return f"*->{dst}"


@dataclass
class Fault:
    """One injected fault: what, where, when, and how it went."""

    kind: str
    targets: list[str]
    detail: str
    start: float
    heal_fn: Callable[[], None] | None = None
    end: float | None = None
    recovered: float | None = None
    recovery_s: float | None = None
    recovery_by_node: dict[str, float] = field(default_factory=dict)
    probe_failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def heal(self) -> None:
        """End the fault (once); a heal may return notes on what did not work."""
        if self.heal_fn is not None:
            fn, self.heal_fn = self.heal_fn, None
            self.notes.extend(fn() or [])

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "targets": self.targets, "detail": self.detail,
                "start": round(self.start, 3),
                "end": None if self.end is None else round(self.end, 3),
                "recovered": None if self.recovered is None else round(self.recovered, 3),
                "recovery_s": None if self.recovery_s is None else round(self.recovery_s, 3),
                "recovery_by_node": self.recovery_by_node,
                "probe_failures": self.probe_failures, "notes": self.notes}


class Nemesis:
    """Injects faults into ``cluster`` (processes) and ``proxy`` (peer links)."""

    def __init__(self, cluster: LocalCluster, proxy: ProxyProcess, rng: random.Random,
                 now: Callable[[], float], log: Callable[[str], None] = lambda _: None,
                 inbound: dict[str, str] | None = None):
        self.cluster = cluster
        self.proxy = proxy
        self.rng = rng
        self.now = now
        self.log = log
        self.nodes = list(cluster.nodes)
        self.inbound = inbound or {}
        """Address of the proxy's shared inbound link ``*->X`` of each node X."""
        self.shared_inbound: set[str] = set()
        """Nodes that rejoined through RAFT.ADD: every link into them is ``*->X``."""

    # -- choosing targets ------------------------------------------------------------

    def leader_or_random(self) -> tuple[str, bool]:
        """The current leader (True), or a random live node if none is agreed (False)."""
        leader = self.cluster.leader()
        if leader is not None:
            return leader, True
        return self.rng.choice([n for n in self.nodes if self.cluster.running(n)]), False

    def random_node(self) -> str:
        return self.rng.choice(self.nodes)

    # -- faults ----------------------------------------------------------------------

    def inject(self, kind: str) -> Fault:
        """Start a fault of ``kind``; call ``heal()`` on the result to end it."""
        method = getattr(self, "_" + kind.replace("-", "_"), None)
        if kind not in NEMESES or method is None:
            raise ValueError(f"unknown nemesis {kind!r}; known: {', '.join(NEMESES)}")
        return method()

    def _fault(self, kind: str, targets: list[str], detail: str,
               heal: Callable[[], None]) -> Fault:
        fault = Fault(kind, targets, detail, self.now(), heal)
        self.log(f"fault {kind}: {detail}")
        return fault

    def _kill(self, kind: str, node: str, why: str) -> Fault:
        self.cluster.kill(node)
        return self._fault(kind, [node], f"SIGKILL {node}{why}",
                           lambda: self.cluster.start(node, wait=True))

    def _kill_random(self) -> Fault:
        return self._kill("kill-random", self.random_node(), "")

    def _kill_leader(self) -> Fault:
        node, is_leader = self.leader_or_random()
        return self._kill("kill-leader", node, " (leader)" if is_leader else
                          " (no agreed leader: a random node)")

    def _pause(self, kind: str, node: str, why: str) -> Fault:
        self.cluster.pause(node)
        return self._fault(kind, [node], f"SIGSTOP {node}{why}",
                           lambda: self.cluster.resume(node))

    def _pause_random(self) -> Fault:
        return self._pause("pause-random", self.random_node(), "")

    def _pause_leader(self) -> Fault:
        node, is_leader = self.leader_or_random()
        return self._pause("pause-leader", node, " (leader)" if is_leader else
                           " (no agreed leader: a random node)")

    def resolve_links(self, links: list[str]) -> list[str]:
        """The proxy links that carry ``links`` (``*->X`` for a node that rejoined)."""
        resolved: list[str] = []
        for name in links:
            dst = name.split("->", 1)[1]
            real = shared_link_name(dst) if dst in self.shared_inbound else name
            if real not in resolved:
                resolved.append(real)
        return resolved

    def _block(self, kind: str, links: list[str], targets: list[str], detail: str) -> Fault:
        mode = self.rng.choice((HOLD, RESET))
        real = self.resolve_links(links)
        self.proxy.set(real, blocked=True, mode=mode)
        shared = [name for name in real if name.startswith("*")]
        note = f"; shared inbound {','.join(shared)}" if shared else ""
        return self._fault(kind, targets, f"{detail} [{mode}, {len(real)} links{note}]",
                           self.proxy.heal)

    def _split(self, groups: list[list[str]], bridge: str | None = None) -> list[str]:
        """The directed links between different groups (a bridge talks to all)."""
        side = {n: i for i, group in enumerate(groups) for n in group}
        return [link_name(a, b) for a in self.nodes for b in self.nodes
                if a != b and a != bridge and b != bridge and side[a] != side[b]]

    def _partition_halves(self) -> Fault:
        nodes = self.nodes[:]
        self.rng.shuffle(nodes)
        minority = nodes[:(len(nodes) - 1) // 2]
        majority = nodes[len(minority):]
        return self._block("partition-halves", self._split([minority, majority]),
                           minority, f"minority {','.join(sorted(minority))} | majority "
                           f"{','.join(sorted(majority))}")

    def _partition_leader(self) -> Fault:
        node, is_leader = self.leader_or_random()
        rest = [n for n in self.nodes if n != node]
        return self._block("partition-leader", self._split([[node], rest]), [node],
                           f"isolate {node}{' (leader)' if is_leader else ''}")

    def _partition_bridge(self) -> Fault:
        nodes = self.nodes[:]
        self.rng.shuffle(nodes)
        bridge, rest = nodes[0], nodes[1:]
        half = len(rest) // 2
        left, right = rest[:half], rest[half:]
        return self._block("partition-bridge", self._split([left, right], bridge=bridge),
                           [bridge], f"{','.join(sorted(left))} | bridge {bridge} | "
                           f"{','.join(sorted(right))}")

    def _partition_one_way(self) -> Fault:
        node, is_leader = self.leader_or_random()
        others = [n for n in self.nodes if n != node]
        who = f"{node}{' (leader)' if is_leader else ''}"
        if self.rng.random() < 0.5:
            links = [link_name(node, o) for o in others]
            detail = f"{who} cannot send (its outgoing links blocked)"
        else:
            links = [link_name(o, node) for o in others]
            detail = f"{who} cannot receive (its incoming links blocked)"
        return self._block("partition-one-way", links, [node], detail)

    def _slow_links(self) -> Fault:
        delay_ms = self.rng.choice((20, 50, 100, 200))
        jitter_ms = round(delay_ms * self.rng.uniform(0.2, 0.6))
        self.proxy.set("*", delay_ms=delay_ms, jitter_ms=jitter_ms)
        return self._fault("slow-links", list(self.nodes),
                           f"every link {delay_ms} ms +- {jitter_ms} ms", self.proxy.heal)

    def _membership(self) -> Fault:
        from kvraft.testing.chaos.membership import MembershipChange
        leader, is_leader = self.leader_or_random()
        followers = [n for n in self.nodes if n != leader]
        if self.shared_inbound:
            # Cycle the node that already rejoined once: every other node keeps exact
            # per-link partitions (see membership.py).
            node = self.rng.choice(sorted(self.shared_inbound))
        elif is_leader and self.rng.random() < 1 / 3:
            node = leader
        else:
            node = self.rng.choice(followers)
        round_ = MembershipChange(self.cluster, node, self.inbound[node], self.log)
        what = round_.remove()
        if round_.removed:
            self.shared_inbound.add(node)
        fault = self._fault("membership", [node], what + (" (the leader)" if node == leader
                                                          and is_leader else ""),
                            round_.rejoin)
        if not round_.removed:
            fault.notes.append(what)
        return fault

    def _torn_wal(self) -> Fault:
        node = self.random_node()
        self.cluster.kill(node)
        what = tear_wal(self.cluster.nodes[node].data_dir, self.rng)
        return self._fault("torn-wal", [node], f"SIGKILL {node}, {what}",
                           lambda: self.cluster.start(node, wait=True))


def tear_wal(data_dir: Path, rng: random.Random, cut_complete: bool = False) -> str:
    """Tear the last write of the newest WAL segment under ``data_dir`` (the process
    must be dead): append a partial record, or with ``cut_complete`` cut bytes off the
    last complete record (see the module docstring). Returns what was done."""
    from kvraft.raft.types import Entry
    from kvraft.storage.records import (
        SEGMENT_HEADER,
        RecordError,
        decode_term_index,
        encode_record,
        parse_segment_name,
        read_record,
    )

    wal = Path(data_dir) / "wal"
    segments = sorted(p for p in wal.iterdir() if parse_segment_name(p.name) is not None)
    if not segments:
        return "no WAL segment to tear"
    path = segments[-1]
    data = path.read_bytes()
    pos, last = SEGMENT_HEADER.size, None  # last: (offset, end, term, index)
    while pos < len(data):
        try:
            payload, end = read_record(data, pos)
        except RecordError:
            break  # already torn (the kill interrupted a write): leave it as it is
        term, index = decode_term_index(payload)
        last = (pos, end, term, index)
        pos = end
    if pos < len(data):
        return f"{path.name} already ends in a torn record ({len(data) - pos} bytes)"
    if cut_complete:
        if last is None:
            return f"{path.name} holds no record to cut"
        offset, end, _, index = last
        cut = rng.randint(1, min(torn_bytes_max, end - offset - 1))
        os.truncate(path, len(data) - cut)
        return f"cut {cut} bytes off the last record (entry {index}) of {path.name}"
    term, index = (last[2], last[3] + 1) if last is not None else (1, 1)
    record = encode_record(Entry(term=term, index=index, data=os.urandom(64)))
    keep = rng.randint(1, min(torn_bytes_max, len(record) - 1))
    with open(path, "ab") as f:
        f.write(record[:keep])
    return f"appended {keep} bytes of a torn record for entry {index} to {path.name}"

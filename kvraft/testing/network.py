"""A simulated network between Raft nodes: loss, duplication, delay (hence reordering)
and partitions of every shape, all decided by one seeded ``random.Random``.

The network does not own time: ``send`` returns the delivery times it chose, and the
simulator's event queue delivers each copy then, asking ``link_up`` again at delivery so
a partition that starts while a message is in flight still cuts it.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["NetworkFaults", "SimNetwork"]


@dataclass(slots=True)
class NetworkFaults:
    """Per-message fault rates and delays (time in simulation steps)."""

    drop_rate: float = 0.0
    duplicate_rate: float = 0.0
    delay_steps_min: int = 1
    delay_steps_max: int = 1
    # With this probability a message is held back much longer, so it arrives after
    # later messages on the same link (reordering past a whole round trip).
    long_delay_rate: float = 0.0
    long_delay_steps_max: int = 50

    def validate(self) -> None:
        """Raise ValueError naming the bad field."""
        for name in ("drop_rate", "duplicate_rate", "long_delay_rate"):
            rate = getattr(self, name)
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"NetworkFaults.{name} must be within [0, 1], got {rate}")
        if not 0 <= self.delay_steps_min <= self.delay_steps_max:
            raise ValueError("NetworkFaults needs 0 <= delay_steps_min <= delay_steps_max, "
                             f"got {self.delay_steps_min} and {self.delay_steps_max}")


class SimNetwork:
    """Directed links between ``nodes``; a link is up unless some rule blocks it.

    Partitions are kept as a set of blocked directed pairs, so every shape composes:
    ``partition`` (symmetric groups), ``block`` (one way), ``isolate``, ``bridge``.
    """

    def __init__(self, nodes: Sequence[str], rng: random.Random,
                 faults: NetworkFaults | None = None):
        self.nodes = tuple(nodes)
        self.rng = rng
        self.faults = faults or NetworkFaults()
        self.faults.validate()
        self._blocked: set[tuple[str, str]] = set()
        self.stats: Counter[str] = Counter()

    # -- link state --------------------------------------------------------------------

    def link_up(self, frm: str, to: str) -> bool:
        """Whether a message from ``frm`` to ``to`` can pass right now."""
        return (frm, to) not in self._blocked

    def blocked_links(self) -> list[tuple[str, str]]:
        """The blocked directed links, sorted (stable output for traces)."""
        return sorted(self._blocked)

    def heal(self) -> None:
        """Unblock every link."""
        self._blocked.clear()

    def block(self, frm: str, to: str) -> None:
        """Cut the one-way link ``frm -> to`` (asymmetric partition)."""
        self._check(frm, to)
        self._blocked.add((frm, to))

    def unblock(self, frm: str, to: str) -> None:
        """Restore the one-way link ``frm -> to``."""
        self._blocked.discard((frm, to))

    def partition(self, *groups: Iterable[str]) -> None:
        """Symmetric partition: nodes talk only within their group. Nodes not named in
        any group form one more group."""
        sets = [tuple(g) for g in groups]
        named = {n for g in sets for n in g}
        self._check(*named)
        rest = tuple(n for n in self.nodes if n not in named)
        if rest:
            sets.append(rest)
        group_of = {n: i for i, g in enumerate(sets) for n in g}
        for a in self.nodes:
            for b in self.nodes:
                if a != b and group_of[a] != group_of[b]:
                    self._blocked.add((a, b))

    def isolate(self, node: str) -> None:
        """Cut ``node`` off from everyone, both ways."""
        self.partition((node,))

    def bridge(self, left: Iterable[str], bridge_node: str, right: Iterable[str]) -> None:
        """Two groups that cannot talk to each other, both fully connected to
        ``bridge_node`` (the classic "bridge" nemesis: a leader may be elected on either
        side through the bridge)."""
        left, right = tuple(left), tuple(right)
        self._check(bridge_node, *left, *right)
        for a in left:
            for b in right:
                self._blocked.add((a, b))
                self._blocked.add((b, a))

    def add_node(self, node: str) -> None:
        """A node joins the network (membership changes); its links start up."""
        if node not in self.nodes:
            self.nodes = self.nodes + (node,)

    def _check(self, *names: str) -> None:
        for name in names:
            if name not in self.nodes:
                raise ValueError(f"unknown node {name!r}; the network has {self.nodes}")

    # -- sending -----------------------------------------------------------------------

    def send(self, frm: str, to: str) -> list[int]:
        """Decide the fate of one message: the delays (in steps) of the copies that will
        arrive, ``[]`` if it is lost. Every decision draws from ``rng`` in a fixed order,
        so a seed replays exactly."""
        f = self.faults
        self.stats["sent"] += 1
        if not self.link_up(frm, to):
            self.stats["cut"] += 1
            return []
        if f.drop_rate and self.rng.random() < f.drop_rate:
            self.stats["dropped"] += 1
            return []
        copies = 1
        if f.duplicate_rate and self.rng.random() < f.duplicate_rate:
            copies = 2
            self.stats["duplicated"] += 1
        delays = []
        for _ in range(copies):
            delay = self.rng.randint(f.delay_steps_min, f.delay_steps_max)
            if f.long_delay_rate and self.rng.random() < f.long_delay_rate:
                delay += self.rng.randint(1, f.long_delay_steps_max)
                self.stats["delayed"] += 1
            delays.append(delay)
        return delays

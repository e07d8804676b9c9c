"""The nemesis: injects faults into a SimCluster at random times, from the cluster's rng.

Kinds scheduled over time: ``crash`` (then a restart after a random downtime),
``partition`` (symmetric split), ``oneway`` (asymmetric: some links cut one way),
``isolate_leader``, ``bridge``, ``transfer`` (leadership transfer), ``campaign`` (a
node starts an election unprompted), ``membership`` (a configuration change: add a
learner, promote it, remove a voter or the leader; see ``Nemesis._do_membership``).
Kinds that shape every message or write instead (``drop``, ``duplicate``, ``delay``,
``torn``, ``snapshot``) are set once per run by ``configure``. One network fault is
active at a time and heals after a random spell.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

from kvraft.raft import ConfChange, ConfChangeSingle, ConfChangeType, ProgressState
from kvraft.testing.cluster import NodeSettings, SimCluster
from kvraft.testing.network import NetworkFaults

__all__ = ["FAULT_KINDS", "Nemesis", "NemesisTiming", "configure"]

SCHEDULED_KINDS = ("crash", "partition", "oneway", "isolate_leader", "bridge", "transfer",
                   "campaign", "membership")
STATIC_KINDS = ("drop", "duplicate", "delay", "torn", "snapshot")
FAULT_KINDS = SCHEDULED_KINDS + STATIC_KINDS
"""Every fault kind the simulator knows (``--faults`` picks among them)."""

_WEIGHTS = {"crash": 4, "partition": 3, "oneway": 2, "isolate_leader": 3, "bridge": 1,
            "transfer": 1, "campaign": 1, "membership": 3}

VOTERS_MIN = 3
"""Membership changes keep at least this many voters (or the initial count if smaller)."""
VOTERS_MAX = 7
"""... and at most this many (or the initial count if larger)."""
PROMOTE_LAG_ENTRIES_MAX = 5
"""A learner is promoted only when its match index is this close to the leader's commit
index and the leader replicates to it (not probing, not sending a snapshot)."""


@dataclass(slots=True)
class NemesisTiming:
    """When faults happen and how long they last, in simulation steps."""

    interval_steps_min: int = 100
    interval_steps_max: int = 900
    downtime_steps_min: int = 20
    downtime_steps_max: int = 1500
    spell_steps_min: int = 50
    spell_steps_max: int = 2000


def configure(rng: random.Random, kinds: frozenset[str]) -> tuple[NetworkFaults, NodeSettings]:
    """Per-run levels of the static faults, drawn from ``rng`` (each run differs)."""
    faults = NetworkFaults(delay_steps_min=1, delay_steps_max=3)
    if "drop" in kinds:
        faults.drop_rate = rng.choice((0.0, 0.01, 0.05, 0.15))
    if "duplicate" in kinds:
        faults.duplicate_rate = rng.choice((0.0, 0.01, 0.05))
    if "delay" in kinds:
        faults.delay_steps_max = rng.choice((3, 8, 20))
        faults.long_delay_rate = rng.choice((0.0, 0.01, 0.05))
        faults.long_delay_steps_max = rng.choice((30, 200))
    settings = NodeSettings(
        persist_steps_max=rng.choice((0, 3, 10)),
        torn_writes="torn" in kinds,
        lose_unsynced_prefix="torn" in kinds,
        snapshot_every=rng.choice((0, 8, 30)) if "snapshot" in kinds else 0,
    )
    return faults, settings


class Nemesis:
    """Schedules faults of ``kinds`` on ``cluster`` until ``stop``."""

    def __init__(self, cluster: SimCluster, kinds: frozenset[str],
                 timing: NemesisTiming | None = None):
        unknown = set(kinds) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; choose among "
                             f"{', '.join(FAULT_KINDS)}")
        self.cluster = cluster
        self.rng = cluster.rng
        self.kinds = [k for k in SCHEDULED_KINDS if k in kinds]
        self.timing = timing or NemesisTiming()
        self.counts: Counter[str] = Counter()
        self.stopped = False
        self._spell = 0  # bumped per network fault, so a stale heal does nothing
        self._spell_active = False

    def start(self) -> None:
        """Schedule the first fault."""
        if self.kinds:
            self._schedule_next()

    def stop(self) -> None:
        """No more faults: heal the network and restart every node."""
        self.stopped = True
        self._spell += 1
        self._spell_active = False
        self.cluster.heal()
        for name in self.cluster.active():
            self.cluster.restart(name)

    def _schedule_next(self) -> None:
        t = self.timing
        self.cluster.schedule(self.rng.randint(t.interval_steps_min, t.interval_steps_max),
                              "call", self._act)

    def _act(self) -> None:
        if self.stopped:
            return
        kinds = self.kinds
        if self._spell_active:
            kinds = [k for k in kinds if k in ("crash", "transfer", "campaign",
                                               "membership")]
        if kinds:
            kind = self.rng.choices(kinds, weights=[_WEIGHTS[k] for k in kinds])[0]
            if getattr(self, "_do_" + kind)():
                self.counts[kind] += 1
        self._schedule_next()

    # -- faults (each returns whether it did something) ---------------------------------

    def _do_crash(self) -> bool:
        c = self.cluster
        alive = c.alive()
        if not alive:
            return False
        name = self.rng.choice(alive)
        c.crash(name)
        t = self.timing
        c.schedule(self.rng.randint(t.downtime_steps_min, t.downtime_steps_max), "call",
                   lambda: None if self.stopped else c.restart(name))
        return True

    def _begin_spell(self) -> None:
        self._spell += 1
        self._spell_active = True
        spell = self._spell
        t = self.timing

        def heal() -> None:
            if self._spell == spell and not self.stopped:
                self._spell_active = False
                self.cluster.heal()

        self.cluster.schedule(self.rng.randint(t.spell_steps_min, t.spell_steps_max),
                              "call", heal)

    def _shuffled(self) -> list[str]:
        names = self.cluster.active()
        self.rng.shuffle(names)
        return names

    def _do_partition(self) -> bool:
        names = self._shuffled()
        if len(names) < 2:
            return False
        cut = self.rng.randint(1, len(names) - 1)
        self.cluster.partition(tuple(sorted(names[:cut])), tuple(sorted(names[cut:])))
        self._begin_spell()
        return True

    def _do_oneway(self) -> bool:
        names = self._shuffled()
        pairs = [(a, b) for a in names for b in names if a != b]
        if not pairs:
            return False
        for a, b in self.rng.sample(pairs, self.rng.randint(1, max(1, len(pairs) // 3))):
            self.cluster.block(a, b)
        self._begin_spell()
        return True

    def _do_isolate_leader(self) -> bool:
        leader = self.cluster.leader()
        if leader is None:
            return False
        self.cluster.isolate(leader)
        self._begin_spell()
        return True

    def _do_bridge(self) -> bool:
        names = self._shuffled()
        if len(names) < 3:
            return False
        bridge, rest = names[0], names[1:]
        half = len(rest) // 2
        self.cluster.bridge(tuple(sorted(rest[:half])), bridge, tuple(sorted(rest[half:])))
        self._begin_spell()
        return True

    def _do_transfer(self) -> bool:
        c = self.cluster
        leader = c.leader()
        if leader is None:
            return False
        voters = [n for n in c.nodes[leader].core.tracker.voter_ids() if n != leader]
        if not voters:
            return False
        c.transfer_leadership(leader, self.rng.choice(voters))
        return True

    def _do_campaign(self) -> bool:
        alive = self.cluster.alive()
        if not alive:
            return False
        self.cluster.campaign(self.rng.choice(alive))
        return True

    def _do_membership(self) -> bool:
        """One configuration change at the leader, among: add a new node as a learner,
        promote a caught-up learner (simple or joint change), remove a voter (maybe the
        leader; simple or joint), replace a voter by a learner (joint, auto-leave), or
        drop a learner that does not catch up."""
        c = self.cluster
        leader = c.leader()
        if leader is None:
            return False
        core = c.nodes[leader].core
        cs = core.tracker.conf_state()
        if cs.is_joint():
            return False
        initial = len(c.initial_names)
        voters_min, voters_max = min(VOTERS_MIN, initial), max(VOTERS_MAX, initial)
        voters, learners = list(cs.voters), list(cs.learners)
        caught_up = [n for n in learners if _caught_up(core, n)]
        options = []
        if not learners and len(voters) < voters_max:
            options.append("add_learner")
        if caught_up and len(voters) < voters_max:
            options.append("promote")
        if caught_up:
            options.append("replace")
        if len(voters) > voters_min:
            options.append("remove_voter")
        if learners and not caught_up:
            options.append("remove_learner")
        if not options:
            return False
        op = self.rng.choice(options)
        joint = self.rng.random() < 0.5
        if op == "add_learner":
            joiner = c.joiners[0] if c.joiners else c.add_node()
            cc = ConfChange((ConfChangeSingle(ConfChangeType.AddLearner, joiner),))
        elif op == "promote":
            cc = ConfChange((ConfChangeSingle(ConfChangeType.AddVoter,
                                              self.rng.choice(caught_up)),), joint=joint)
        elif op == "replace":
            cc = ConfChange((ConfChangeSingle(ConfChangeType.AddVoter,
                                              self.rng.choice(caught_up)),
                             ConfChangeSingle(ConfChangeType.RemoveNode,
                                              self.rng.choice(voters))))
        elif op == "remove_voter":
            cc = ConfChange((ConfChangeSingle(ConfChangeType.RemoveNode,
                                              self.rng.choice(voters)),), joint=joint)
        else:
            cc = ConfChange((ConfChangeSingle(ConfChangeType.RemoveNode,
                                              self.rng.choice(learners)),))
        if not c.propose_conf_change(leader, cc):
            return False
        c.stats["membership_" + op] += 1
        return True


def _caught_up(core: Any, node: str) -> bool:
    pr = core.tracker.progress.get(node)
    return (pr is not None and pr.state == ProgressState.Replicate
            and pr.match + PROMOTE_LAG_ENTRIES_MAX >= core.log.committed)

"""Deterministic simulation of a kvraft cluster under faults, checked for Raft safety
and for linearizability of what its clients saw.

One seed drives everything: the fault levels, the nemesis, the network, the disks, the
clients and (through ``RaftConfig.rng``) the cores. The same seed replays the same run
event for event. A run has a chaos phase (``steps`` simulation steps: clients work, the
nemesis strikes) and a settle phase (faults healed, every node up, no new operations)
so that outstanding operations finish; then the history is checked.

Command line::

    python -m kvraft.testing.sim --seeds 1-500 --nodes 5 --steps 20000 --jobs 2
    python -m kvraft.testing.sim --seed 17 --nodes 5 --steps 20000 --trace

It prints a summary, and on a violation the seed, the invariant and the last events,
and exits with status 1.
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from kvraft.raft import RaftCore
from kvraft.testing.clients import ClientConfig, SimClient
from kvraft.testing.cluster import SimCluster
from kvraft.testing.invariants import InvariantViolation
from kvraft.testing.linearizability import check
from kvraft.testing.nemesis import FAULT_KINDS, Nemesis, NemesisTiming, configure

__all__ = ["SimConfig", "SeedReport", "run_seed", "run_seeds", "main"]


@dataclass(slots=True)
class SimConfig:
    """One simulation run's shape (times in simulation steps; a tick is 10 steps)."""

    nodes: int = 3
    steps: int = 20_000
    settle_steps: int = 4_000
    clients: int = 3
    faults: frozenset[str] = frozenset(FAULT_KINDS)
    check_history: bool = True
    history_timeout_s: float = 30.0
    digest: bool = False  # compute a trace digest (determinism checks; costs ~10%)
    # Clock skew: each node ticks every 10 +- up to this many steps (fixed per node).
    tick_skew_steps: int = 1
    client: ClientConfig = field(default_factory=ClientConfig)
    timing: NemesisTiming = field(default_factory=NemesisTiming)


@dataclass(slots=True)
class SeedReport:
    """What one seed did (picklable, for ``--jobs``). ``violation`` is set on failure."""

    seed: int
    steps: int = 0
    elections: int = 0
    commit_index: int = 0
    faults: Counter = field(default_factory=Counter)
    operations: Counter = field(default_factory=Counter)  # by completion type
    history_unknown: bool = False
    converged: bool = False
    digest: str = ""
    elapsed_s: float = 0.0
    violation: tuple[str, str] | None = None  # (invariant, detail)
    recent_events: list[str] = field(default_factory=list)


def run_seed(seed: int, config: SimConfig | None = None, *,
             core_factory: Callable[..., Any] | None = None,
             trace: Callable[[str], None] | None = None,
             raise_violation: bool = True) -> SeedReport:
    """Run one seed. A safety violation raises InvariantViolation (with ``seed``) unless
    ``raise_violation`` is False, in which case it is returned in the report.
    ``core_factory(config, storage)`` builds each core (default: ``RaftCore``)."""
    config = config or SimConfig()
    core_factory = core_factory or RaftCore
    started = time.monotonic()
    rng = random.Random(seed)
    faults, settings = configure(rng, config.faults)
    settings.tick_skew_steps = config.tick_skew_steps
    cluster = SimCluster(config.nodes, seed=seed, rng=rng, faults=faults, settings=settings,
                         core_factory=core_factory, trace=trace, digest=config.digest,
                         start=False)
    report = SeedReport(seed=seed)
    run = _Run(cluster, config)
    try:
        run.execute(report)
    except InvariantViolation as violation:
        violation.with_seed(seed)
        report.violation = (violation.name, violation.detail)
        report.recent_events = cluster.recent_events()
        if raise_violation:
            raise
    finally:
        run.fill(report)
        report.elapsed_s = time.monotonic() - started
    return report


class _Run:
    """One seed's cluster, clients and nemesis, and the counters of what they did."""

    def __init__(self, cluster: SimCluster, config: SimConfig):
        self.cluster = cluster
        self.config = config
        self.history: list[dict] = []
        self.clients: list[SimClient] = []
        self.nemesis = Nemesis(cluster, config.faults, config.timing)

    def execute(self, report: SeedReport) -> None:
        cluster, config = self.cluster, self.config
        for name in cluster.names:
            cluster.restart(name)
        client_config = config.client.varied(cluster.rng)
        for i in range(config.clients):
            client = SimClient(i + 1, tuple(cluster.members()), cluster.rng, cluster,
                               self.history, client_config)
            cluster.add_client(client)
            self.clients.append(client)
            cluster.client_wake(client, cluster.rng.randint(1, 200))
        self.nemesis.start()
        cluster.run_until(config.steps)
        self.nemesis.stop()
        for client in self.clients:
            client.stop()
        cluster.run_until(config.steps + config.settle_steps)
        report.converged = _check_converged(cluster)
        if config.check_history:
            result = check(self.history, timeout_s=config.history_timeout_s)
            report.history_unknown = result.unknown
            if not result.ok and not result.unknown:
                raise InvariantViolation(
                    "linearizability",
                    result.explanation + "\n    " + "\n    ".join(result.operations))

    def fill(self, report: SeedReport) -> None:
        """Copy the counters into ``report`` (also after a violation)."""
        cluster = self.cluster
        report.digest = cluster.trace_digest()
        report.elections = cluster.monitor.elections
        report.commit_index = cluster.monitor.commit_index
        report.steps = cluster.now
        report.faults = Counter(self.nemesis.counts)
        for kind, stat in (("drop", "dropped"), ("duplicate", "duplicated"),
                           ("delay", "delayed")):
            if cluster.network.stats[stat]:
                report.faults[kind] = cluster.network.stats[stat]
        if cluster.stats["snapshots"]:
            report.faults["snapshot"] = cluster.stats["snapshots"]
        for stat, count in sorted(cluster.stats.items()):
            if stat.startswith("membership_") or stat in ("conf_changes", "retired"):
                report.faults[stat] = count
        report.operations = Counter(r["type"] for r in self.history if r["type"] != "invoke")
        report.operations["pending"] = sum(1 for c in self.clients if c.op is not None)


def _check_converged(cluster: SimCluster) -> bool:
    """After settling: do all members (of the newest configuration) hold the same
    state? Equal applied index with different data is a safety violation; unequal
    indexes only mean "not converged"."""
    nodes = [cluster.nodes[n] for n in cluster.members()]
    applied = {node.applied for node in nodes}
    if len(applied) != 1:
        return False
    states = {node.id: node.kv.snapshot() for node in nodes}
    first = nodes[0].id
    for name, state in states.items():
        if state != states[first]:
            raise InvariantViolation(
                "replica convergence",
                f"{first} and {name} applied the same {nodes[0].applied} entries but hold "
                "different state machine contents")
    return True


def run_seeds(seeds: Iterable[int], config: SimConfig, jobs: int = 1,
              on_report: Callable[[SeedReport], None] | None = None) -> list[SeedReport]:
    """Run many seeds (in ``jobs`` processes); violations are returned in the reports."""
    seeds = list(seeds)
    reports = []
    if jobs <= 1:
        iterator = (run_seed(s, config, raise_violation=False) for s in seeds)
        for report in iterator:
            reports.append(report)
            if on_report:
                on_report(report)
        return reports
    with multiprocessing.get_context("fork").Pool(jobs) as pool:
        for report in pool.imap(_worker, [(s, config) for s in seeds], chunksize=1):
            reports.append(report)
            if on_report:
                on_report(report)
    return reports


def _worker(args: tuple[int, SimConfig]) -> SeedReport:
    seed, config = args
    return run_seed(seed, config, raise_violation=False)


# == command line ========================================================================

def parse_seeds(text: str) -> list[int]:
    """``"1-500"``, ``"3,7,9-12"`` -> the seed numbers."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            seeds.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"bad seed range {part!r}: use N, N-M or a comma-separated list") from None
    return seeds


def _parse_faults(text: str) -> frozenset[str]:
    if text in ("all", ""):
        return frozenset(FAULT_KINDS)
    if text == "none":
        return frozenset()
    kinds = frozenset(k.strip() for k in text.split(",") if k.strip())
    unknown = kinds - set(FAULT_KINDS)
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown fault kinds {sorted(unknown)}; choose among {', '.join(FAULT_KINDS)}")
    return kinds


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m kvraft.testing.sim",
        description="Deterministic fault-injection simulation of a kvraft cluster.")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--seeds", type=parse_seeds, default=parse_seeds("1-20"),
                       help="seeds to run: N-M or a comma list (default 1-20)")
    which.add_argument("--seed", type=int, help="run one seed (use with --trace)")
    p.add_argument("--nodes", type=int, default=3, help="cluster size (default 3)")
    p.add_argument("--steps", type=int, default=20_000,
                   help="chaos-phase length in simulation steps; 10 steps = 1 tick")
    p.add_argument("--settle-steps", type=int, default=4_000,
                   help="fault-free phase after the chaos, so operations finish")
    p.add_argument("--clients", type=int, default=3, help="simulated clients")
    p.add_argument("--tick-skew-steps", type=int, default=1,
                   help="clock skew: a node ticks every 10 +- up to this many steps")
    p.add_argument("--faults", type=_parse_faults, default=frozenset(FAULT_KINDS),
                   help=f"comma list among {','.join(FAULT_KINDS)}, or all / none")
    p.add_argument("--jobs", type=int, default=1, help="worker processes")
    p.add_argument("--trace", action="store_true", help="print every event as it happens")
    p.add_argument("--no-history-check", action="store_true",
                   help="skip the linearizability check (invariants only)")
    args = p.parse_args(argv)
    if args.nodes < 1:
        p.error("--nodes must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit status."""
    args = _arguments(argv)
    config = SimConfig(nodes=args.nodes, steps=args.steps, settle_steps=args.settle_steps,
                       clients=args.clients, faults=args.faults,
                       tick_skew_steps=args.tick_skew_steps,
                       check_history=not args.no_history_check)
    seeds = [args.seed] if args.seed is not None else args.seeds
    config.digest = args.seed is not None
    started = time.monotonic()
    if args.trace:
        reports = [run_seed(s, config, trace=print, raise_violation=False) for s in seeds]
    else:
        reports = run_seeds(seeds, config, jobs=args.jobs)
    print(summarize(reports, config, time.monotonic() - started))
    if args.seed is not None:
        print(f"trace digest: {reports[0].digest}")
    failed = [r for r in reports if r.violation is not None]
    for report in failed[:3]:
        print(describe_violation(report, config))
    return 1 if failed else 0


def summarize(reports: list[SeedReport], config: SimConfig, elapsed_s: float) -> str:
    """The run summary, several lines."""
    faults: Counter[str] = Counter()
    ops: Counter[str] = Counter()
    for r in reports:
        faults.update(r.faults)
        ops.update(r.operations)
    seeds = [r.seed for r in reports]
    failed = [r.seed for r in reports if r.violation is not None]
    checked = ops["ok"] + ops["fail"] + ops["info"]
    lines = [
        f"seeds: {len(reports)} ({min(seeds)}..{max(seeds)})" if seeds else "seeds: 0",
        f"cluster: {config.nodes} nodes, {config.clients} clients, "
        f"{config.steps} + {config.settle_steps} steps per seed",
        f"steps: {sum(r.steps for r in reports)}",
        f"elections: {sum(r.elections for r in reports)}",
        f"commits: {sum(r.commit_index for r in reports)} (highest commit index, summed)",
        "faults: " + (", ".join(f"{k} {faults[k]}" for k in sorted(faults)) or "none"),
        f"operations checked: {checked} (ok {ops['ok']}, fail {ops['fail']}, "
        f"info {ops['info']}; {ops['pending']} unfinished)",
        f"converged after settling: {sum(r.converged for r in reports)}/{len(reports)}",
        f"history checks that timed out: {sum(r.history_unknown for r in reports)}",
        f"time: {elapsed_s:.1f} s",
        f"violations: {len(failed)}" + (f" (seeds {failed[:20]})" if failed else ""),
    ]
    return "\n".join(lines)


def describe_violation(report: SeedReport, config: SimConfig) -> str:
    """Seed, invariant, detail, the last events, and how to replay."""
    name, detail = report.violation
    faults = ",".join(sorted(config.faults)) if config.faults != frozenset(FAULT_KINDS) \
        else "all"
    replay = (f"python -m kvraft.testing.sim --seed {report.seed} --nodes {config.nodes} "
              f"--steps {config.steps} --settle-steps {config.settle_steps} "
              f"--clients {config.clients} --faults {faults} "
              f"--tick-skew-steps {config.tick_skew_steps} --trace")
    tail = "\n".join("  " + line for line in report.recent_events[-60:])
    return (f"\nVIOLATION seed {report.seed}: invariant {name!r}\n  {detail}\n"
            f"last events:\n{tail}\nreplay: {replay}")


if __name__ == "__main__":
    sys.exit(main())

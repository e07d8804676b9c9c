"""``kvraft bench suite``: the targets of issue 7 against one cluster, one after another.

Every test is a ``kvraft bench run`` with fixed options; the suite writes each test's
JSON and chart plus ``suite.json`` with a verdict per target. The targets assume a quiet
2-core machine: ``machine.load_before`` in each result says how quiet it was.

On a shared VM one run of a test can differ from the next by 20-30%. ``--repeat N`` runs
each test N times in a row and judges every target on the median of its N values (each
run's JSON is kept, ``<name>-<test>-<i>.json``); ``suite.json`` lists every value beside
the median, so a report can give the spread and not only a lucky or unlucky run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from kvraft.bench import cli, runner
from kvraft.bench.runner import RunOptions


@dataclass(frozen=True)
class Check:
    """A target: ``metric`` (a dotted path into the result) compared with ``bound``."""

    metric: str
    op: str  # ">=" or "<="
    bound: float

    def value(self, result: dict) -> float:
        node = result
        for part in self.metric.split("."):
            node = node[part]
        return float(node)

    def passed(self, value: float) -> bool:
        """Whether ``value`` (``value(result)``, or a median of them) meets the bound."""
        return value >= self.bound if self.op == ">=" else value <= self.bound

    def describe(self) -> str:
        return f"{self.metric} {self.op} {self.bound:g}"


@dataclass(frozen=True)
class Test:
    """One suite entry."""

    name: str
    options: RunOptions
    checks: tuple[Check, ...] = ()
    note: str = ""


open_loop_rate = 4000
"""Arrivals per second of the suite's open-loop test: about a third of what a closed loop
of 50 clients sustains here, so requests rarely queue for a connection."""


def tests(quick: bool) -> list[Test]:
    """The suite; ``quick`` runs about a fifth of the requests (a smoke run)."""
    scale = 5 if quick else 1

    def n(count: int) -> int:
        return max(1000, count // scale)

    return [
        Test("set-pipelined", RunOptions("set", clients=50, pipeline=16, requests=n(1_000_000)),
             (Check("throughput_ops", ">=", 100_000),),
             "redis-benchmark -t set -c 50 -P 16 -d 16"),
        Test("set", RunOptions("set", clients=50, requests=n(200_000)),
             (Check("throughput_ops", ">=", 25_000),), "redis-benchmark -t set -c 50 -d 16"),
        Test("get", RunOptions("get", clients=50, requests=n(300_000)),
             (Check("throughput_ops", ">=", 30_000),),
             "redis-benchmark -t get -c 50 -d 16 (linearizable reads)"),
        Test("latency-c10", RunOptions("set", clients=10, requests=n(50_000)),
             (Check("latency_ms.p50", "<=", 1.0), Check("latency_ms.p99", "<=", 5.0)),
             "redis-benchmark -t set -c 10 -d 16"),
        Test("get-readonly", RunOptions("get-readonly", clients=50, requests=n(300_000),
                                        driver="builtin"), (),
             "built-in generator, READONLY reads from the leader's state"),
        Test("mixed-90-10", RunOptions("mixed", clients=50, requests=n(200_000),
                                       driver="builtin"), (),
             "built-in generator, 90% GET / 10% SET"),
        # Every test above is a closed loop (a client sends again when answered); most
        # applications are not, and a batching change that helps closed loops can cost
        # them latency (an early raft.proposal_gather_ms did): this one shows it.
        Test("set-open-loop", RunOptions("set", clients=200, requests=n(open_loop_rate * 10),
                                         rate=open_loop_rate, driver="builtin"), (),
             f"built-in generator, an open loop: {open_loop_rate:,} SETs/s at Poisson "
             "times on a pool of 200 connections, latency from arrival"),
    ]


REPEAT_MAX = 20
"""Most runs of each test ``--repeat`` takes (the full suite takes about 2.5 minutes)."""


def judge(checks: tuple[Check, ...], results: list[dict]) -> list[dict]:
    """Each check over the runs of one test: every run's value, their median, and the
    verdict on the median (``passed``) and on each run (``runs_passed``)."""
    judged = []
    for check in checks:
        values = [check.value(result) for result in results]
        median = statistics.median(values)
        judged.append({"target": check.describe(), "value": median, "values": values,
                       "passed": check.passed(median),
                       "runs_passed": sum(map(check.passed, values))})
    return judged


def describe_check(judged: dict) -> str:
    """One line: the target, the median and the runs, the verdict."""
    verdict = "met" if judged["passed"] else "MISSED"
    values = judged["values"]
    if len(values) == 1:
        return f"  target {judged['target']}: {judged['value']:g} {verdict}"
    runs = " / ".join(f"{v:g}" for v in values)
    return (f"  target {judged['target']}: median {judged['value']:g} {verdict} "
            f"(runs {runs}; met in {judged['runs_passed']} of {len(values)})")


def describe_ceiling(results: list[dict]) -> str | None:
    """One line: the median CPU ceilings of a test's runs (``runner.cpu_ceiling``). A
    target above them needs requests that cost less CPU, not less waiting."""
    ceilings = [r["cpu_ceiling"] for r in results if r.get("cpu_ceiling")]
    parts = []
    for key, label in (("machine_ops", "machine"), ("node_ops", "busiest node")):
        values = [c[key] for c in ceilings if key in c]
        if values:
            parts.append(f"{label} {statistics.median(values):,.0f} ops/s")
    return f"  cpu ceiling at the measured costs: {', '.join(parts)}" if parts else None


def main(argv: list[str]) -> int:
    """``kvraft bench suite``."""
    parser = argparse.ArgumentParser(prog="kvraft bench suite",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a fifth of the requests")
    parser.add_argument("--only", action="append", default=[], metavar="TEST",
                        help="run only this test (repeatable): "
                        + ", ".join(t.name for t in tests(False)))
    parser.add_argument("--repeat", type=int, default=1, metavar="N",
                        help=f"run each test N times (1-{REPEAT_MAX}) and judge each target "
                        "on the median run (default 1)")
    cli.add_cluster_options(parser)
    cli.add_output_options(parser, "suite")
    args = parser.parse_args(argv)
    if not 1 <= args.repeat <= REPEAT_MAX:
        parser.error(f"--repeat {args.repeat}: give a count from 1 to {REPEAT_MAX}")
    chosen = [t for t in tests(args.quick) if not args.only or t.name in args.only]
    if not chosen:
        print("kvraft bench suite: no such test", file=sys.stderr)
        return 2
    progress = cli.Progress(args.quiet)
    report = {"repeat": args.repeat, "tests": []}
    try:
        with cli.cluster_target(args, progress) as target:
            for test in chosen:
                print(f"== {test.name}: {test.note}")
                results = []
                for run in range(1, args.repeat + 1):
                    label = f" (run {run} of {args.repeat})" if args.repeat > 1 else ""
                    progress(f"{test.name}{label}: {test.note} ...")
                    result = runner.run(target, test.options, progress)
                    progress.done()
                    result["test"] = test.name
                    result["checks"] = judge(test.checks, [result])
                    stem = f"{args.name}-{test.name}" + (f"-{run}" if args.repeat > 1 else "")
                    cli.save(result, args.out, stem, not args.no_chart)
                    results.append({k: v for k, v in result.items()
                                    if k not in ("histogram", "timeline")})
                    print(cli.summary(result))
                if len(results) == 1:
                    entry = results[0]  # the run itself, as without --repeat
                else:
                    entry = {"test": test.name, "note": test.note,
                             "options": results[0]["options"],
                             "checks": judge(test.checks, results), "runs": results}
                report["tests"].append(entry)
                for check in entry["checks"]:
                    print(describe_check(check))
                ceiling = describe_ceiling(results)
                if ceiling is not None:
                    print(ceiling)
    except (OSError, RuntimeError, TimeoutError) as e:
        progress.done()
        print(f"kvraft bench suite: {e}", file=sys.stderr)
        return 1
    out = Path(args.out) / f"{args.name}.json"
    out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(f"suite result: {out}")
    return 0

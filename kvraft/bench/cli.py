"""The ``kvraft bench`` command line (see the package docstring)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from kvraft.bench import chart, runner
from kvraft.bench.runner import RunOptions, Target

USAGE = """kvraft bench run [options]      one workload (default when no subcommand is given)
kvraft bench suite [options]    the performance targets of issue 7, in one go
kvraft bench restart [options]  memory of nodes holding N values, and restart time"""


def main(argv: list[str]) -> int:
    """Entry point of ``kvraft bench``."""
    argv = list(argv)
    command = argv.pop(0) if argv and argv[0] in ("run", "suite", "restart") else "run"
    if command == "suite":
        from kvraft.bench.suite import main as suite_main
        return suite_main(argv)
    if command == "restart":
        from kvraft.bench.restart import main as restart_main
        return restart_main(argv)
    return run_main(argv)


# -- shared options --------------------------------------------------------------------------


def add_cluster_options(parser: argparse.ArgumentParser) -> None:
    """Where the cluster is: started here, or given by address."""
    group = parser.add_argument_group("cluster")
    group.add_argument("--target", action="append", default=[], metavar="HOST:PORT",
                       help="benchmark a running cluster at this plaintext client address "
                       "(repeat for every node; the first is loaded unless --spread); "
                       "without it a local cluster is started")
    group.add_argument("--pid", action="append", default=[], metavar="NAME=PID",
                       help="with --target: a node process to report CPU and memory of")
    group.add_argument("--nodes", type=int, default=3, help="local cluster size (3)")
    group.add_argument("--dir", default=None, help="local cluster directory (default: a "
                       "temporary one, removed afterwards)")
    group.add_argument("--keep", action="store_true", help="keep the local cluster's "
                       "directory (data, configs, logs)")
    group.add_argument("--to", choices=("leader", "follower"), default="leader",
                       help="local cluster: which node the load goes to (leader)")


def add_output_options(parser: argparse.ArgumentParser, default_stem: str) -> None:
    """Where results go."""
    group = parser.add_argument_group("output")
    group.add_argument("--out", default=".", help="directory for the JSON result and the "
                       "PNG chart (default: the current directory)")
    group.add_argument("--name", default=default_stem, help=f"file name stem "
                       f"(default {default_stem}: {default_stem}.json, {default_stem}.png)")
    group.add_argument("--no-chart", action="store_true", help="write no PNG")
    group.add_argument("--quiet", action="store_true", help="no progress line")


@contextmanager
def cluster_target(args: argparse.Namespace, progress):
    """A ``runner.Target``: the given addresses, or a local cluster started for the
    run (and stopped after it)."""
    if args.target:
        addresses = [_address(t) for t in args.target]
        pids = dict(_pid(p) for p in args.pid)
        host, port = addresses[0]
        yield Target(host, port, pids=pids, others=addresses)
        return
    from kvraft.devcluster import LocalCluster
    temp = None
    base = args.dir
    if base is None:
        temp = tempfile.TemporaryDirectory(prefix="kvraft-bench-")
        base = temp.name
    cluster = LocalCluster(base, size=args.nodes)
    try:
        progress(f"starting a {args.nodes}-node cluster in {base} ...")
        cluster.prepare()
        cluster.start_all()
        leader = cluster.wait_for_leader()
        node = leader
        if getattr(args, "to", "leader") == "follower":
            node = next(n for n in cluster.nodes if n != leader)
        spec = cluster.nodes[node]
        pids = {n: s.process.pid for n, s in cluster.nodes.items()}
        others = [(cluster.host, s.plain_port) for s in cluster.nodes.values()]
        target = Target(cluster.host, spec.plain_port, pids=pids, others=others,
                        leader=leader)
        target.cluster = cluster
        yield target
    finally:
        progress("stopping the cluster ...")
        cluster.close()
        if temp is not None and not args.keep:
            temp.cleanup()
        elif temp is not None:
            print(f"cluster files kept in {base}", file=sys.stderr)


class Progress:
    """One status line on stderr, rewritten in place (a terminal) or printed every few
    seconds (a log)."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self._last_print = 0.0
        self._width = 0

    def __call__(self, text: str) -> None:
        if self.quiet:
            return
        if self.tty:
            pad = max(0, self._width - len(text))
            sys.stderr.write("\r" + text + " " * pad)
            sys.stderr.flush()
            self._width = len(text)
        elif time.monotonic() - self._last_print >= 5.0 or text.endswith("..."):
            print(text, file=sys.stderr, flush=True)
            self._last_print = time.monotonic()

    def done(self) -> None:
        """End the status line."""
        if self.tty and self._width and not self.quiet:
            sys.stderr.write("\n")
            sys.stderr.flush()
        self._width = 0


# -- kvraft bench run ----------------------------------------------------------------------


def run_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kvraft bench", usage=USAGE,
        description="Benchmark a kvraft cluster: throughput, latency percentiles, errors, "
        "CPU and memory of each node; a JSON result and a PNG chart.")
    group = parser.add_argument_group("workload")
    group.add_argument("--workload", "-w", default="set",
                       choices=("set", "get", "get-readonly", "mixed"),
                       help="set; get (linearizable, ReadIndex); get-readonly (READONLY, "
                       "served from the node's state); mixed (--read-ratio GETs, the rest "
                       "SETs)")
    group.add_argument("--clients", "-c", type=int, default=50)
    group.add_argument("--pipeline", "-P", type=int, default=1)
    group.add_argument("--requests", "-n", type=int, default=None,
                       help="requests in total (default 100000 unless --duration)")
    group.add_argument("--duration", type=float, default=0.0,
                       help="run this many seconds instead (built-in driver)")
    group.add_argument("--value-bytes", "-d", type=int, default=16)
    group.add_argument("--keyspace", "-r", type=int, default=100_000,
                       help="keys key:000000000000 .. (like redis-benchmark -r)")
    group.add_argument("--read-ratio", type=float, default=0.9, help="mixed: GET share")
    group.add_argument("--driver", default="auto",
                       choices=("auto", "redis-benchmark", "builtin"),
                       help="auto: redis-benchmark for set and get by request count, the "
                       "built-in generator for the rest")
    group.add_argument("--procs", type=int, default=0,
                       help="built-in generator processes (default: one per 64 clients)")
    group.add_argument("--no-fill", action="store_true",
                       help="do not SET every key before a reading workload")
    group.add_argument("--spread", action="store_true",
                       help="built-in: spread the clients over every node")
    group.add_argument("--rate", type=float, default=0.0,
                       help="built-in: an open loop instead: requests arrive at random "
                       "(Poisson) times, this many per second in all, each on the idle "
                       "connection answered last (a pool of --clients), timed from its "
                       "arrival, so waiting for a connection counts; 0: a closed loop")
    add_cluster_options(parser)
    add_output_options(parser, "bench")
    return parser


def run_main(argv: list[str]) -> int:
    """``kvraft bench run``."""
    args = run_parser().parse_args(argv)
    requests = args.requests if args.requests is not None else (
        0 if args.duration else 100_000)
    opts = RunOptions(workload=args.workload, driver=args.driver, clients=args.clients,
                      pipeline=args.pipeline, requests=requests, duration_s=args.duration,
                      value_bytes=args.value_bytes, keyspace=args.keyspace,
                      read_ratio=args.read_ratio, procs=args.procs, fill=not args.no_fill,
                      spread=args.spread, rate=args.rate)
    try:
        opts.check()
    except ValueError as e:
        print(f"kvraft bench: {e}", file=sys.stderr)
        return 2
    progress = Progress(args.quiet)
    try:
        with cluster_target(args, progress) as target:
            result = runner.run(target, opts, progress)
            progress.done()
    except (OSError, RuntimeError, TimeoutError) as e:
        progress.done()
        print(f"kvraft bench: {e}", file=sys.stderr)
        return 1
    paths = save(result, args.out, args.name, not args.no_chart)
    print(summary(result))
    print("result: " + ", ".join(paths))
    return 0


def save(result: dict, out_dir: str, name: str, with_chart: bool) -> list[str]:
    """Write ``<name>.json`` (and ``<name>.png``) in ``out_dir``; their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"{name}.json"
    json_path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    paths = [str(json_path)]
    if with_chart:
        png_path = out / f"{name}.png"
        write_result_chart(result, str(png_path))
        paths.append(str(png_path))
    return paths


def write_result_chart(result: dict, path: str) -> None:
    """Throughput, latency and node CPU over time."""
    timeline = result["timeline"]
    throughput = chart.Series("ops/s", [(p["t"], p["ops"]) for p in timeline])
    if timeline and "p99_ms" in timeline[0]:
        latency = [chart.Series("p50", [(p["t"], p["p50_ms"]) for p in timeline]),
                   chart.Series("p99", [(p["t"], p["p99_ms"]) for p in timeline])]
    else:
        latency = [chart.Series("mean", [(p["t"], p.get("mean_ms")) for p in timeline])]
    panels = [chart.Panel("throughput (ops/s)", [throughput]),
              chart.Panel("latency (ms)", latency)]
    nodes = result.get("nodes", {})
    series = [chart.Series(name, [(i + 1.0, v) for i, v in enumerate(n.get("cpu_series", []))])
              for name, n in nodes.items() if n.get("cpu_series")]
    if series:
        panels.append(chart.Panel("cpu % of one core", series))
    opts = result["options"]
    title = (f"{result['workload']} c{opts['clients']} p{opts['pipeline']} "
             f"{result['throughput_ops']:,.0f} ops/s p99 {result['latency_ms']['p99']} ms")
    chart.write_chart(path, title, panels)


def summary(result: dict) -> str:
    """A few lines for people."""
    opts = result["options"]
    lat = result["latency_ms"]
    rate = opts.get("rate", 0.0)
    loop = (f"open loop {rate:,.0f}/s ({result.get('waited', 0):,} waited for a "
            "connection)" if rate else f"pipeline {opts['pipeline']}")
    lines = [
        f"workload {result['workload']}  driver {result['driver']}  clients "
        f"{opts['clients']}  {loop}  value {opts['value_bytes']} B  "
        f"keys {opts['keyspace']:,}",
        f"throughput {result['throughput_ops']:>12,.0f} ops/s   ({result['requests_ok']:,} ok, "
        f"{result['errors']:,} errors, {result['timeouts']:,} unanswered, "
        f"{result['elapsed_s']:.1f} s)",
        f"latency ms   p50 {lat['p50']}  p90 {lat['p90']}  p99 {lat['p99']}  "
        f"p99.9 {lat['p99.9']}  max {lat['max']}  mean {lat['mean']}",
    ]
    for name, node in result.get("nodes", {}).items():
        mark = "*" if name == result.get("leader") else " "
        lines.append(f"  {name}{mark} cpu {node['cpu_percent']:5.1f}% ({node['cpu_s']:.1f} s"
                     f"{_per_op(node.get('cpu_us_per_op'))})"
                     f"  rss peak {node['rss_peak_mib']:.0f} MiB")
    lines.append(f"  load generator cpu {result['generator_cpu_s']:.1f} s"
                 f"{_per_op(result.get('generator_cpu_us_per_op'))}   machine load "
                 f"{result['machine']['load_before'][0]:.1f} -> "
                 f"{result['machine']['load_after'][0]:.1f} on {result['machine']['cpus']} "
                 "cpus")
    shares = result["machine"].get("cpu_percent")
    if shares:
        lines.append("  machine cpu " + "  ".join(
            f"{name} {shares[name]:.1f}%" for name in
            ("user", "system", "softirq", "idle", "iowait", "steal")))
    ceiling = result.get("cpu_ceiling")
    if ceiling:
        lines.append("  cpu ceiling: " + ", ".join(_ceilings(result)))
    for sample in result.get("error_samples", []):
        lines.append(f"  error: {sample}")
    return "\n".join(lines)


def _ceilings(result: dict) -> list[str]:
    """``cpu_ceiling`` in words: each ceiling and the cost it comes from."""
    ceiling, parts = result["cpu_ceiling"], []
    if "machine_ops" in ceiling:
        parts.append(f"{ceiling['machine_ops']:,} ops/s for the machine "
                     f"({result['machine']['cpu_us_per_op']:.1f} µs/op on "
                     f"{result['machine']['cpus']} cpus)")
    if "node_ops" in ceiling:
        node = ceiling["node"]
        parts.append(f"{ceiling['node_ops']:,} ops/s for {node} "
                     f"({result['nodes'][node]['cpu_us_per_op']:.1f} µs/op on one thread)")
    return parts


def _per_op(us: float | None) -> str:
    return "" if us is None else f", {us:.1f} µs/op"


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise SystemExit(f"kvraft bench: --target wants HOST:PORT, not {text!r}")
    return host or "127.0.0.1", int(port)


def _pid(text: str) -> tuple[str, int]:
    name, sep, pid = text.partition("=")
    if not sep or not pid.isdigit():
        raise SystemExit(f"kvraft bench: --pid wants NAME=PID, not {text!r}")
    if not os.path.exists(f"/proc/{pid}"):
        raise SystemExit(f"kvraft bench: no process {pid} (--pid {text})")
    return name, int(pid)

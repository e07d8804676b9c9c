"""One benchmark run: fill the key space if the workload reads, drive the load with the
chosen driver, sample the nodes' CPU and memory once a second, and gather everything
into one JSON-ready dict (the ``kvraft bench`` result format, ``result_version`` 1)."""

from __future__ import annotations

import os
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from kvraft.bench import loadgen, rbench
from kvraft.bench.histogram import Histogram
from kvraft.bench.procstat import (
    ProcSampler,
    load_average,
    machine_busy_s,
    machine_cpu_percent,
    machine_cpu_ticks,
)

result_version = 1
fill_clients = 16
fill_pipeline = 64


@dataclass
class RunOptions:
    """One workload. ``requests`` ends the run, else ``duration_s`` (built-in only)."""

    workload: str = "set"
    driver: str = "auto"  # auto | redis-benchmark | builtin
    clients: int = 50
    pipeline: int = 1
    requests: int = 100_000
    duration_s: float = 0.0
    value_bytes: int = 16
    keyspace: int = 100_000
    read_ratio: float = 0.9
    procs: int = 0  # built-in generator processes; 0: one per 64 clients, up to the CPUs
    fill: bool = True  # SET every key first when the workload reads
    spread: bool = False  # built-in: connect to every node, not only the leader
    rate: float = 0.0  # built-in: an open loop of this many requests per second

    def check(self) -> None:
        """Raise ValueError naming the bad option."""
        if self.workload not in ("set", "get", "get-readonly", "mixed"):
            raise ValueError(f"unknown workload {self.workload!r}: use set, get, "
                             "get-readonly or mixed")
        if self.driver not in ("auto", "redis-benchmark", "builtin"):
            raise ValueError(f"unknown driver {self.driver!r}: use auto, redis-benchmark "
                             "or builtin")
        if self.driver == "redis-benchmark" and (
                self.workload not in rbench.test_names or self.spread):
            raise ValueError(f"redis-benchmark cannot run {self.workload!r}"
                             f"{' spread over nodes' if self.spread else ''}; use "
                             "--driver builtin")
        if self.driver == "redis-benchmark" and self.rate:
            raise ValueError("redis-benchmark is a closed loop: use --driver builtin for "
                             "--rate")
        if not self.rate >= 0.0:  # NaN too
            raise ValueError("--rate must be 0 (a closed loop) or requests per second")
        if self.rate and self.pipeline != 1:
            raise ValueError("--rate sends one request per arrival: drop --pipeline")
        if self.driver == "redis-benchmark" and not self.requests:
            raise ValueError("redis-benchmark needs --requests (it has no duration)")
        if not self.requests and self.duration_s <= 0:
            raise ValueError("give --requests or --duration")

    def chosen_driver(self) -> str:
        """The driver ``auto`` resolves to: redis-benchmark (C, cheap on the CPU) for
        set and get to one node by request count in a closed loop, the built-in
        generator otherwise."""
        if self.driver != "auto":
            return self.driver
        if (self.workload in rbench.test_names and not self.spread and self.requests
                and not self.rate and rbench.available()):
            return "redis-benchmark"
        return "builtin"


@dataclass
class Target:
    """Where to send the load, and which processes to watch."""

    host: str
    port: int
    pids: dict[str, int] = field(default_factory=dict)
    others: list[tuple[str, int]] = field(default_factory=list)  # every node's address
    leader: str = ""


def run(target: Target, opts: RunOptions,
        progress: Callable[[str], None] | None = None) -> dict:
    """Run ``opts`` against ``target``; the result dict (see ``result_version``)."""
    opts.check()
    driver = opts.chosen_driver()
    fill_s = None
    if opts.fill and opts.workload != "set":
        fill_s = fill(target, opts.keyspace, opts.value_bytes, progress)
    sampler = ProcSampler(target.pids)
    sampler.sample()
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_before = load_average()
    machine_before = machine_cpu_ticks()
    started = time.monotonic()
    last = [started, 0]

    def on_tick(elapsed_s: float, done: int) -> None:
        now = time.monotonic()
        percents = sampler.sample(now - last[0])
        rate = (done - last[1]) / (now - last[0]) if now > last[0] else 0.0
        last[0], last[1] = now, done
        if progress is not None:
            nodes = "  ".join(
                f"{name} {percents.get(name, 0):3.0f}% "
                f"{sampler.stats[name].rss_last_kib / 1024:4.0f}MiB"
                for name in sampler.stats)
            progress(f"{opts.workload} {elapsed_s:6.1f}s {rate:>9,.0f} ops/s "
                     f"{done:>11,} done | {nodes}")

    if driver == "redis-benchmark":
        rb = rbench.run(target.host, target.port, opts.workload, opts.clients, opts.pipeline,
                        opts.requests, opts.value_bytes, opts.keyspace, on_tick)
        hist, ok, errors, timeouts, waited = rb.histogram, rb.requests, 0, 0, 0
        elapsed = rb.elapsed_s or (time.monotonic() - started)
        throughput = rb.throughput
        timeline = rb.timeline
        command = rb.command
        error_samples: list[str] = []
    else:
        spec = _load_spec(target, opts)
        lr = loadgen.run(spec, on_tick)
        hist, ok, errors, timeouts = lr.histogram, lr.ok, lr.errors, lr.timeouts
        waited = lr.waited
        elapsed, throughput, timeline = lr.elapsed_s, lr.throughput, lr.timeline
        command = ["builtin"] + [f"{k}={v}" for k, v in asdict(spec).items()
                                 if k not in ("targets", "host", "port")]
        error_samples = lr.error_samples
    wall = time.monotonic() - started
    sampler.sample(time.monotonic() - last[0])
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    generator_cpu = ((children_after.ru_utime + children_after.ru_stime)
                     - (children_before.ru_utime + children_before.ru_stime))
    machine_after = machine_cpu_ticks()
    machine_busy = machine_busy_s(machine_before, machine_after)
    nodes = with_cpu_per_op(sampler.to_dict(wall), ok + errors)
    machine_us = cpu_us_per_op(machine_busy, ok + errors) if machine_busy else None
    return {
        "result_version": result_version,
        "workload": opts.workload, "driver": driver, "command": command,
        "options": asdict(opts), "target": f"{target.host}:{target.port}",
        "leader": target.leader,
        "requests_ok": ok, "errors": errors, "timeouts": timeouts, "waited": waited,
        "error_samples": error_samples,
        "elapsed_s": round(elapsed, 3), "throughput_ops": round(throughput, 1),
        "latency_ms": hist.summary_ms(), "histogram": hist.to_dict(),
        "timeline": timeline, "fill_s": fill_s,
        "nodes": nodes,
        "generator_cpu_s": round(generator_cpu, 3),
        "generator_cpu_us_per_op": cpu_us_per_op(generator_cpu, ok + errors),
        "machine": {"cpus": os.cpu_count(), "load_before": load_before,
                    "load_after": load_average(), "python": sys.version.split()[0],
                    "cpu_percent": machine_cpu_percent(machine_before, machine_after),
                    "cpu_s": None if machine_busy is None else round(machine_busy, 2),
                    "cpu_us_per_op": machine_us},
        "cpu_ceiling": cpu_ceiling(nodes, machine_us, os.cpu_count()),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def cpu_us_per_op(cpu_s: float, ops: int) -> float | None:
    """CPU microseconds per answered request (None when nothing was answered): with the
    machine's cores, what bounds throughput before any waiting."""
    return round(cpu_s * 1e6 / ops, 1) if ops > 0 else None


def cpu_ceiling(nodes: dict, machine_us_per_op: float | None,
                cpus: int | None) -> dict | None:
    """The most requests per second this run's CPU costs per request allow; None when
    no cost is known.

    - ``machine_ops``: the machine's cores over what one request cost the whole machine
      (every node, the load generator, the kernel's network work);
    - ``node_ops``: one core over what one request cost the busiest ``node``, whose
      requests are served by one thread (its reactor).

    A run well below both waited (for disks, for messages, for a busy core); a run at
    either ceiling can go faster only by costing less CPU per request, not by waiting
    less."""
    ceiling: dict = {}
    if machine_us_per_op and cpus:
        ceiling["machine_ops"] = round(cpus * 1e6 / machine_us_per_op)
    costs = {name: figures["cpu_us_per_op"] for name, figures in nodes.items()
             if figures.get("cpu_us_per_op")}
    if costs:
        busiest = max(costs, key=costs.__getitem__)
        ceiling["node"] = busiest
        ceiling["node_ops"] = round(1e6 / costs[busiest])
    return ceiling or None


def with_cpu_per_op(nodes: dict, ops: int) -> dict:
    """``nodes`` (``ProcSampler.to_dict``) with each node's ``cpu_us_per_op``."""
    for figures in nodes.values():
        figures["cpu_us_per_op"] = cpu_us_per_op(figures["cpu_s"], ops)
    return nodes


def fill(target: Target, keyspace: int, value_bytes: int,
         progress: Callable[[str], None] | None = None) -> float:
    """SET every key of the key space once (pipelined); the seconds it took."""
    spec = loadgen.LoadSpec(target.host, target.port, workload="fill",
                            clients=min(fill_clients, keyspace), pipeline=fill_pipeline,
                            value_bytes=value_bytes, keyspace=keyspace, requests=0,
                            duration_s=0.0, procs=1)
    started = time.monotonic()

    def tick(elapsed_s: float, done: int) -> None:
        if progress is not None:
            progress(f"fill {elapsed_s:6.1f}s {done:>11,} of {keyspace:,} keys")

    result = loadgen.run(spec, tick)
    if result.errors or result.ok < keyspace:
        raise RuntimeError(f"filling the key space failed: {result.ok} of {keyspace} keys "
                           f"set, {result.errors} errors {result.error_samples}")
    return round(time.monotonic() - started, 3)


def _load_spec(target: Target, opts: RunOptions) -> loadgen.LoadSpec:
    procs = opts.procs or max(1, min(os.cpu_count() or 1, (opts.clients + 63) // 64))
    return loadgen.LoadSpec(
        target.host, target.port, workload=opts.workload, clients=opts.clients,
        pipeline=opts.pipeline, value_bytes=opts.value_bytes, keyspace=opts.keyspace,
        read_ratio=opts.read_ratio, requests=opts.requests,
        duration_s=opts.duration_s, procs=min(procs, opts.clients),
        targets=list(target.others) if opts.spread else [], rate=opts.rate)


def histogram_of(result: dict) -> Histogram:
    """The latency histogram of a result dict."""
    return Histogram.from_dict(result["histogram"])

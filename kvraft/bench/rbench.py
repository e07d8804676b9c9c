"""redis-benchmark as a driver: the default for ``set`` and ``get``.

It is written in C, so it leaves the CPU to the nodes (the machine may have only two
cores for three nodes and the load). We read its progress lines while it runs (the
throughput and mean latency of each quarter second, for the chart) and, at the end, its
"Latency by percentile distribution" (an HDR histogram of its own), which we turn into
our histogram: each listed percentile's count at the value it names, an upper bound.
"""

from __future__ import annotations

import os
import re
import selectors
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

from kvraft.bench.histogram import Histogram

_PROGRESS = re.compile(rb"rps=([\d.]+) \(overall: ([\d.nan-]+)\) avg_msec=([\d.nan-]+)")
_PERCENTILE = re.compile(rb"^\s*([\d.]+)% <= ([\d.]+) milliseconds \(cumulative count (\d+)\)")
_SUMMARY = re.compile(rb"throughput summary: ([\d.]+) requests per second")
_COMPLETED = re.compile(rb"(\d+) requests completed in ([\d.]+) seconds")

test_names = {"set": "set", "get": "get", "ping": "ping_mbulk"}


def available() -> bool:
    """Whether redis-benchmark is installed (Debian: redis-tools)."""
    return shutil.which("redis-benchmark") is not None


@dataclass
class RbenchResult:
    """What redis-benchmark reported."""

    histogram: Histogram
    requests: int
    elapsed_s: float
    throughput: float
    timeline: list[dict]
    command: list[str]
    output_tail: str


def command_line(host: str, port: int, test: str, clients: int, pipeline: int,
                 requests: int, value_bytes: int, keyspace: int) -> list[str]:
    """The redis-benchmark invocation for one test."""
    return ["redis-benchmark", "-h", host, "-p", str(port), "-t", test_names[test],
            "-c", str(clients), "-P", str(pipeline), "-n", str(requests),
            "-d", str(value_bytes), "-r", str(keyspace), "--precision", "3"]


def run(host: str, port: int, test: str, clients: int, pipeline: int, requests: int,
        value_bytes: int, keyspace: int,
        on_tick: Callable[[float, int], None] | None = None,
        timeout_s: float = 600.0) -> RbenchResult:
    """Run one redis-benchmark test; ``on_tick(elapsed_s, replies_so_far)`` about once
    a second."""
    if test not in test_names:
        raise ValueError(f"redis-benchmark runs {', '.join(test_names)}, not {test!r}")
    argv = command_line(host, port, test, clients, pipeline, requests, value_bytes, keyspace)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    started = time.monotonic()
    output = bytearray()
    timeline: list[dict] = []
    next_tick = started + 1.0
    done_so_far = 0.0
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    partial = b""
    last_t = 0.0
    try:
        while True:
            if time.monotonic() - started > timeout_s:
                raise TimeoutError(f"redis-benchmark ran longer than {timeout_s:.0f} s")
            events = sel.select(timeout=0.2)
            if events:
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                output += chunk
                lines = (partial + chunk).replace(b"\r", b"\n").split(b"\n")
                partial = lines.pop()
                for line in lines:
                    m = _PROGRESS.search(line)
                    if m:
                        now = time.monotonic() - started
                        rps = float(m.group(1))
                        done_so_far += rps * (now - last_t)
                        last_t = now
                        avg = _number(m.group(3))
                        timeline.append({"t": round(now, 2), "ops": rps,
                                         "mean_ms": avg})
            if time.monotonic() >= next_tick:
                next_tick += 1.0
                if on_tick is not None:
                    on_tick(time.monotonic() - started, int(done_so_far))
    finally:
        sel.close()
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"redis-benchmark failed ({proc.returncode}): "
                           f"{bytes(output[-500:]).decode(errors='replace')}")
    return parse_output(bytes(output), argv, timeline)


def parse_output(output: bytes, argv: list[str], timeline: list[dict]) -> RbenchResult:
    """Our result from redis-benchmark's final report (``--precision 3``)."""
    hist = Histogram()
    previous = 0
    in_distribution = False
    for line in output.replace(b"\r", b"\n").split(b"\n"):
        if line.startswith(b"Latency by percentile distribution"):
            in_distribution = True
            continue
        if in_distribution:
            m = _PERCENTILE.match(line)
            if not m:
                if line.strip():
                    in_distribution = False
                continue
            value_us = int(round(float(m.group(2)) * 1000))
            cumulative = int(m.group(3))
            if cumulative > previous:
                hist.record(value_us, cumulative - previous)
                previous = cumulative
    m = _COMPLETED.search(output)
    requests = int(m.group(1)) if m else hist.count
    elapsed = float(m.group(2)) if m else 0.0
    m = _SUMMARY.search(output)
    throughput = float(m.group(1)) if m else (requests / elapsed if elapsed else 0.0)
    if not hist.count:
        raise RuntimeError("no latency distribution in redis-benchmark's output:\n"
                           + output[-500:].decode(errors="replace"))
    tail = output[-2000:].decode(errors="replace")
    return RbenchResult(hist, requests, elapsed, throughput, timeline, argv, tail)


def _number(text: bytes) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return None if value != value else value  # "-nan" at the very start

"""Measure the kv machine at scale: memory, apply rate, snapshot and restore costs.

Run: ``.venv/bin/python tests/machines/bench_kv.py [--keys 1000000] [--value-bytes 100]``
(not collected by pytest; ~1 minute and ~1 GB at the defaults). Prints one line per
figure. Keys look like redis-benchmark's (``key:000000000042``, 16 bytes).
"""

from __future__ import annotations

import argparse
import gc
import resource
import threading
import time
import tracemalloc

from kvraft.machines.kv import KvStateMachine


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def _fill(machine: KvStateMachine, keys: int, value: bytes) -> None:
    apply = machine.apply
    for i in range(keys):
        apply(i + 1, [b"SET", b"key:%012d" % i, value])


def _timed(label: str, fn, repeat: int = 1):
    best, result = float("inf"), None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    print(f"{label}: {best * 1000:.1f} ms")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--value-bytes", type=int, default=100)
    options = parser.parse_args()
    keys, value = options.keys, b"v" * options.value_bytes
    print(f"{keys} keys of 16 bytes, values of {len(value)} bytes")
    _measure_speeds(keys, value)  # first: RSS growth is only meaningful in a fresh process
    _measure_traced(keys, value)
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


def _measure_speeds(keys: int, value: bytes) -> None:
    rss_before = _rss_mb()
    machine = KvStateMachine()
    started = time.perf_counter()
    _fill(machine, keys, value)
    elapsed = time.perf_counter() - started
    print(f"process RSS growth for the machine: {_rss_mb() - rss_before:.0f} MiB "
          f"(RSS now {_rss_mb():.0f} MiB, {rss_before:.0f} MiB before)")
    print(f"apply SET: {keys / elapsed:,.0f} commands/s")
    started = time.perf_counter()
    for i in range(0, keys, 7):
        machine.query([b"GET", b"key:%012d" % i])
    print(f"query GET: {len(range(0, keys, 7)) / (time.perf_counter() - started):,.0f} "
          "commands/s")

    held = [_timed("snapshot() (copy-on-write freeze)", machine.snapshot)]
    _timed("dict.copy() of the same map, for comparison", machine._keys._base.copy, 3)
    updates = keys // 100
    started = time.perf_counter()
    for i in range(updates):
        machine.apply(keys + 1 + i, [b"SET", b"key:%012d" % (i * 97 % keys), b"new"])
    print(f"apply SET while frozen: {updates / (time.perf_counter() - started):,.0f} "
          "commands/s")
    body: list[bytes] = []
    _timed("chunks() serialization, whole body",
           lambda: body.extend(held[0].chunks()))
    size = sum(map(len, body))
    print(f"snapshot body: {size / 2**20:.0f} MiB in {len(body)} chunks")

    ticks: list[float] = []
    stop = threading.Event()

    def serialize():
        for _ in held[0].chunks():
            pass
        stop.set()

    worker = threading.Thread(target=serialize)
    worker.start()
    while not stop.is_set():  # the reactor thread's view: gaps between turns
        started = time.perf_counter()
        machine.query([b"GET", b"key:000000000001"])
        ticks.append(time.perf_counter() - started)
    worker.join()
    print(f"longest GET on the main thread while a thread serializes: "
          f"{max(ticks) * 1000:.1f} ms over {len(ticks)} GETs")
    held.clear()  # drops the view: the next apply folds the frozen writes back
    _timed(f"thaw (fold {updates} frozen writes back)",
           lambda: machine.apply(keys + updates + 1, [b"GET", b"x"]))

    restored = KvStateMachine()
    _timed("restore() of the whole body", lambda: restored.restore(body))
    _timed("KEYS * ", lambda: machine.query([b"KEYS", b"*"]))
    _timed("KEYS key:0000000001*", lambda: machine.query([b"KEYS", b"key:0000000001*"]))
    _timed("KEYS *1?2*[3-4]", lambda: machine.query([b"KEYS", b"*1?2*[3-4]"]))


def _measure_traced(keys: int, value: bytes) -> None:
    gc.collect()
    tracemalloc.start()
    machine = KvStateMachine()
    _fill(machine, keys, value)
    traced, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"machine memory (tracemalloc): {traced / 2**20:.0f} MiB "
          f"({traced / keys:.0f} bytes per key)")


if __name__ == "__main__":
    main()

"""WAL throughput benchmark (not a test).

    python -m kvraft.storage.bench [--dir D] [--seconds S] [--backend wal|sqlite]
                                   [--entry-bytes N]

For each batch size (1: one fsync per append; 64 and 1024: group commit) it appends
batches of ``N``-byte entries and syncs after every batch for ``S`` seconds, then prints
appends/s, MB/s of entry data, and the median and 99th percentile of one batch's
append+sync latency. Each run uses a fresh directory under ``D`` (removed afterwards);
put ``D`` on the disk you want to measure, not a tmpfs.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import sys
import tempfile
import time

from kvraft.raft.types import Entry

BATCHES = (1, 64, 1024)


def run(backend: str, directory: str, batch: int, seconds: float,
        entry_bytes: int) -> dict:
    """Append+sync batches of ``batch`` entries for ``seconds``; return the figures."""
    opener = importlib.import_module(f"kvraft.storage.{backend}").open_storage
    data_dir = tempfile.mkdtemp(prefix=f"bench-{backend}-{batch}-", dir=directory)
    storage = opener(data_dir, {})
    payload = os.urandom(entry_bytes)
    latencies: list[float] = []
    index = 0
    try:
        start = time.perf_counter()
        deadline = start + seconds
        now = start
        while now < deadline:
            entries = [Entry(term=1, index=index + k + 1, data=payload) for k in range(batch)]
            storage.log.append(entries)
            storage.log.sync()
            index += batch
            then, now = now, time.perf_counter()
            latencies.append(now - then)
        elapsed = now - start
    finally:
        storage.close()
        shutil.rmtree(data_dir, ignore_errors=True)
    latencies.sort()
    return {
        "batch": batch,
        "appends_per_s": index / elapsed,
        "mb_per_s": index * entry_bytes / elapsed / 1e6,
        "p50_ms": latencies[len(latencies) // 2] * 1e3,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1e3,
        "batches": len(latencies),
    }


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the three batch sizes, print a table."""
    parser = argparse.ArgumentParser(prog="python -m kvraft.storage.bench",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default=None,
                        help="where to create the benchmark logs (default: the system "
                             "temporary directory)")
    parser.add_argument("--seconds", type=float, default=3.0,
                        help="duration of each run (default 3)")
    parser.add_argument("--backend", choices=("wal", "sqlite"), default="wal")
    parser.add_argument("--entry-bytes", type=int, default=100,
                        help="data bytes per entry (default 100)")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.entry_bytes < 0:
        parser.error("--seconds must be positive and --entry-bytes non-negative")
    directory = args.dir or tempfile.gettempdir()
    os.makedirs(directory, exist_ok=True)
    print(f"{args.backend} in {directory}: {args.entry_bytes}-byte entries, "
          f"{args.seconds:g} s per run, sync after every batch")
    print(f"{'mode':<24}{'appends/s':>12}{'MB/s':>9}{'p50 ms':>9}{'p99 ms':>9}")
    for batch in BATCHES:
        r = run(args.backend, directory, batch, args.seconds, args.entry_bytes)
        mode = "fsync per append" if batch == 1 else f"group commit of {batch}"
        print(f"{mode:<24}{r['appends_per_s']:>12,.0f}{r['mb_per_s']:>9.2f}"
              f"{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

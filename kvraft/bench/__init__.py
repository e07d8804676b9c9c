"""``kvraft bench``: benchmarks of a kvraft cluster.

* ``kvraft bench run``: one workload against a local cluster it starts (real ``twistd
  kvraft`` processes, ``kvraft.devcluster.LocalCluster``) or against given addresses:
  throughput, latency percentiles (p50, p90, p99, p99.9, max) from a log-linear
  histogram, errors, CPU and peak memory of every node, a JSON result and a PNG chart
  of throughput and latency over time, and a progress line while it runs.
* ``kvraft bench suite``: the performance targets of issue 7, one after the other.
* ``kvraft bench restart``: memory of a node holding N values, and its restart time.

Modules: ``histogram`` (latencies), ``loadgen`` (the built-in multi-process load
generator), ``rbench`` (redis-benchmark as a driver), ``procstat`` (CPU and memory
from /proc), ``chart`` (a small PNG plotter), ``runner`` (one run), ``cli``.
"""

from kvraft.bench.cli import main

__all__ = ["main"]

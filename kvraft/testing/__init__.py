"""kvraft.testing: deterministic simulation, a cluster harness and a linearizability
checker, for tests of kvraft and of anything built on its Raft core.

* ``check(history)`` (``kvraft.testing.linearizability``): is a get/put/cas history
  linearizable? Porcupine-style search, partitioned by key, unknown outcomes allowed.
* ``SimCluster`` (``kvraft.testing.cluster``): N RaftCores on a simulated network and
  simulated disks, one seeded event loop; helpers to partition, heal, crash, restart,
  propose, change the membership (joiners, learners, joint changes), and run until a
  condition holds. Safety invariants are checked as it runs
  (``InvariantViolation``).
* ``kvraft.testing.sim``: seeded fault-injection runs with clients, and the command line
  ``python -m kvraft.testing.sim --seeds 1-500 --nodes 5``.
"""

from kvraft.testing.cluster import NodeSettings, SimCluster, SimNode
from kvraft.testing.durable_storage import LogImage, SimStorage
from kvraft.testing.invariants import InvariantViolation, SafetyMonitor
from kvraft.testing.kvmodel import KVMachine, decode_batch, encode_batch
from kvraft.testing.linearizability import HistoryError, Operation, Result, check
from kvraft.testing.network import NetworkFaults, SimNetwork

__all__ = [
    "SimConfig", "run_seed", "run_seeds",
    "HistoryError", "InvariantViolation", "KVMachine", "LogImage", "NetworkFaults",
    "NodeSettings", "Operation", "Result", "SafetyMonitor", "SimCluster", "SimNetwork",
    "SimNode", "SimStorage", "check", "decode_batch", "encode_batch",
]


def __getattr__(name: str):
    # kvraft.testing.sim is also run as ``python -m``: importing it here eagerly would
    # make runpy warn that the module was imported before it ran.
    if name in ("SimConfig", "run_seed", "run_seeds"):
        from kvraft.testing import sim
        return getattr(sim, name)
    raise AttributeError(f"module 'kvraft.testing' has no attribute {name!r}")

"""Jepsen-style fault testing of real kvraft clusters.

``python -m kvraft.testing.chaos`` (or ``kvraft chaos``) starts a cluster of real
``twistd kvraft`` processes on loopback with mutual TLS, runs concurrent clients,
injects faults (kills, pauses, partitions and one-way partitions of peer links through
a proxy, slow links, torn WAL writes), heals, and checks that the register history is
linearizable, that no acknowledged set element was lost and nothing appeared that was
never added, that the nodes converge, and that availability comes back after each
fault. It writes a summary, the history (JSON lines) and a PNG timeline.

Modules: ``harness`` (the run and its profiles), ``nemesis`` (the faults), ``proxy``
(the controllable peer-link proxy, its own process), ``workload`` and ``client`` (the
clients and their history), ``checks`` (the verdicts), ``plot`` (the timeline), ``cli``.
"""

from kvraft.testing.chaos.harness import PROFILES, ChaosConfig, profile, run
from kvraft.testing.chaos.nemesis import NEMESES

__all__ = ["NEMESES", "PROFILES", "ChaosConfig", "profile", "run"]

"""The harness' verdicts: linearizable registers, no lost or phantom set elements, nodes
that converge after healing, availability that comes back after each fault.

Each check returns a ``CheckResult`` (``ok``, a one-line ``summary``, ``details`` for
the report). The probes (``probe_available``, ``node_digest``) talk to the nodes'
loopback plaintext client ports, so they depend on nothing the faults touch except
the node itself.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from kvraft.devcluster import LocalCluster
from kvraft.testing.chaos.client import (
    ConnectError,
    ErrorReply,
    OutcomeLostError,
    RespClient,
    is_expected_error,
)
from kvraft.testing.chaos.workload import REGISTER_FS, set_tokens
from kvraft.testing.linearizability import check as check_linearizable

probe_timeout_s = 6.0
"""Socket timeout of one probe command (above the node's 5 s request timeout)."""
probe_failures_kept = 12
"""Failed probe attempts remembered per recovery, for the report."""


@dataclass
class CheckResult:
    """One check's verdict."""

    name: str
    ok: bool
    summary: str
    details: dict[str, Any] = field(default_factory=dict)
    unknown: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "unknown": self.unknown, "summary": self.summary,
                **self.details}


def register_history(history: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records the linearizability checker reads (gets, puts and cases)."""
    return [r for r in history if r.get("f") in REGISTER_FS]


def check_registers(history: list[dict[str, Any]], timeout_s: float) -> CheckResult:
    """Linearizability of every register key (``kvraft.testing.linearizability``)."""
    started = time.monotonic()
    result = check_linearizable(register_history(history), timeout_s=timeout_s)
    took = time.monotonic() - started
    details = {"keys": result.keys_checked, "operations": result.operations_checked,
               "check_s": round(took, 2)}
    if result.ok:
        return CheckResult("linearizability", True, result.explanation, details)
    details.update({"key": result.key, "explanation": result.explanation,
                    "operations_around_failure": result.operations})
    if result.unknown:
        return CheckResult("linearizability", False, "unknown: " + result.explanation,
                           details, unknown=True)
    return CheckResult("linearizability", False,
                       f"NOT linearizable: {result.explanation}", details)


def check_set(history: list[dict[str, Any]], final: dict[str, bytes | None]) -> CheckResult:
    """Every acknowledged add is in the final read, nothing else is (no phantom, no
    token whose add certainly failed), and no token appears twice."""
    attempted: dict[str, str] = {}  # token -> key
    outcome: dict[str, str] = {}
    for r in history:
        if r.get("f") != "add":
            continue
        if r["type"] == "invoke":
            attempted[r["value"]] = r["key"]
        else:
            outcome[r["value"]] = r["type"]
    present: Counter[str] = Counter()
    where: dict[str, str] = {}
    for key, value in final.items():
        for token in set_tokens(value):
            present[token] += 1
            where[token] = key
    ok_tokens = {t for t, o in outcome.items() if o == "ok"}
    lost = sorted(t for t in ok_tokens if present[t] == 0)
    phantom = sorted(t for t in present if t not in attempted)
    revived = sorted(t for t in present if outcome.get(t) == "fail")
    misplaced = sorted(t for t in present if t in attempted and where[t] != attempted[t])
    duplicated = sorted(t for t, n in present.items() if n > 1)
    unknown_present = sum(1 for t in present if outcome.get(t, "info") == "info")
    unknown_total = sum(1 for t in attempted if outcome.get(t, "info") == "info")
    details = {
        "attempted": len(attempted), "acknowledged": len(ok_tokens),
        "present": len(present), "unknown_outcome": unknown_total,
        "unknown_outcome_present": unknown_present,
        "lost": lost[:50], "lost_count": len(lost),
        "phantom": phantom[:50], "phantom_count": len(phantom),
        "failed_but_present": revived[:50], "failed_but_present_count": len(revived),
        "misplaced": misplaced[:50], "duplicated": duplicated[:50],
        "duplicated_count": len(duplicated),
    }
    problems = [f"{len(lost)} lost"] if lost else []
    problems += [f"{len(phantom)} phantom"] if phantom else []
    problems += [f"{len(revived)} failed-but-present"] if revived else []
    problems += [f"{len(misplaced)} misplaced"] if misplaced else []
    problems += [f"{len(duplicated)} duplicated"] if duplicated else []
    if problems:
        return CheckResult("set", False, "set workload: " + ", ".join(problems), details)
    return CheckResult("set", True, f"{len(ok_tokens)} acknowledged adds all present, "
                       f"{unknown_present} of {unknown_total} unknown-outcome adds took "
                       "effect, no phantoms or duplicates", details)


def check_errors(history: list[dict[str, Any]]) -> CheckResult:
    """Errors a healthy product does not give even under faults (an internal error,
    an unexpected reply, a wrong-type error...)."""
    odd = Counter(r["error"] for r in history
                  if r.get("type") != "invoke" and not is_expected_error(r.get("error")))
    if odd:
        return CheckResult("errors", False, f"{sum(odd.values())} unexpected error "
                           "replies", {"unexpected": dict(odd.most_common(20))})
    return CheckResult("errors", True, "only expected errors (CLUSTERDOWN, TIMEOUT, busy, "
                       "lost connections)")


# -- probes of the live cluster ----------------------------------------------------------


def _plain(cluster: LocalCluster, node_id: str, readonly: bool = False) -> RespClient:
    spec = cluster.nodes[node_id]
    return RespClient(cluster.host, spec.plain_port, timeout_s=probe_timeout_s,
                      connect_timeout_s=1.0, readonly=readonly)


def probe_write_read(cluster: LocalCluster, node_id: str, key: str,
                     value: str) -> str | None:
    """A linearizable write and read of ``key`` through ``node_id``: None if both
    succeeded, else what went wrong."""
    conn = _plain(cluster, node_id)
    try:
        reply = conn.call(b"SET", key, value)
        if reply != "OK":
            return f"SET: {reply}"
        reply = conn.call(b"GET", key)
        return None if reply == value.encode() else f"GET: {reply!r}"
    except (ConnectError, OutcomeLostError) as e:
        return str(e)
    finally:
        conn.close()


@dataclass
class Recovery:
    """When each node answered a probe after a heal (seconds after the probing began),
    and what the failed attempts said."""

    started: float
    done: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float | None:
        """When the last node answered, or None if one never did."""
        return max(self.done.values()) if self.done else None


def probe_available(cluster: LocalCluster, nodes: list[str], deadline: float,
                    tag: str, sleep: Callable[[float], None] = time.sleep) -> Recovery | None:
    """Poll until a write and a read succeed through every node of ``nodes``, each
    probed on its own thread (a hung node must not delay the others' answers).
    ``None`` if some node did not answer by ``deadline`` (monotonic)."""
    recovery = Recovery(time.monotonic())
    lock = threading.Lock()

    def probe(node_id: str) -> None:
        attempt = 0
        while time.monotonic() < deadline:
            attempt += 1
            problem = probe_write_read(cluster, node_id, f"probe:{node_id}",
                                       f"{tag}-{attempt}")
            now = time.monotonic()
            with lock:
                if problem is None:
                    recovery.done[node_id] = round(now - recovery.started, 3)
                    return
                if len(recovery.failures) < probe_failures_kept:
                    recovery.failures.append(
                        f"{node_id} +{now - recovery.started:.1f}s: {problem[:100]}")
            sleep(0.1)

    threads = [threading.Thread(target=probe, args=(n,), daemon=True) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()) + probe_timeout_s * 2 + 1)
    return recovery if len(recovery.done) == len(nodes) else None


def node_state(cluster: LocalCluster, node_id: str) -> dict[str, int] | None:
    """``commit`` and ``applied`` index of a node (INFO raft), or None if unreachable."""
    try:
        info = cluster.info(node_id, timeout_s=2.0)
        return {"commit": int(info.get("raft_commit_index", -1)),
                "applied": int(info.get("raft_applied_index", -1)),
                "term": int(info.get("raft_term", -1)),
                "role": info.get("raft_role", "?")}
    except (OSError, RuntimeError, ValueError):
        return None


def node_digest(cluster: LocalCluster, node_id: str) -> dict[str, Any]:
    """A digest of a node's data read locally (READONLY): DBSIZE, key count, and a
    SHA-256 over the sorted keys and their values."""
    conn = _plain(cluster, node_id, readonly=True)
    try:
        size = conn.call(b"DBSIZE")
        keys = conn.call(b"KEYS", b"*")
        if isinstance(size, ErrorReply) or isinstance(keys, ErrorReply):
            return {"error": str(size if isinstance(size, ErrorReply) else keys)}
        keys = sorted(keys)
        digest = hashlib.sha256()
        for start in range(0, len(keys), 1000):
            chunk = keys[start:start + 1000]
            values = conn.call(b"MGET", *chunk)
            if isinstance(values, ErrorReply):
                return {"error": str(values)}
            for k, v in zip(chunk, values, strict=True):
                digest.update(b"%d:%s=%d:%s;" % (len(k), k, -1 if v is None else len(v),
                                                 v or b""))
        return {"dbsize": size, "keys": len(keys), "sha256": digest.hexdigest()[:16]}
    except (ConnectError, OutcomeLostError) as e:
        return {"error": str(e)}
    finally:
        conn.close()


def check_convergence(cluster: LocalCluster, timeout_s: float,
                      sleep: Callable[[float], None] = time.sleep) -> CheckResult:
    """All nodes reach the same applied index (equal to the commit index) and the same
    data digest within ``timeout_s`` of the final heal."""
    started = time.monotonic()
    deadline = started + timeout_s
    states: dict[str, Any] = {}
    digests: dict[str, Any] = {}
    while True:
        states = {n: node_state(cluster, n) for n in cluster.nodes}
        indices = {(s["applied"], s["commit"]) for s in states.values() if s is not None}
        settled = (None not in states.values() and len(indices) == 1
                   and next(iter(indices))[0] == next(iter(indices))[1])
        if settled:
            digests = {n: node_digest(cluster, n) for n in cluster.nodes}
            # A no-op entry (leader change) may land between the two looks: compare again.
            again = {n: node_state(cluster, n) for n in cluster.nodes}
            same = len({str(d) for d in digests.values()}) == 1 and \
                "error" not in next(iter(digests.values()))
            if same and again == states:
                took = time.monotonic() - started
                d = next(iter(digests.values()))
                return CheckResult(
                    "convergence", True,
                    f"all {len(states)} nodes at applied index {next(iter(indices))[0]}, "
                    f"{d['keys']} keys, digest {d['sha256']} ({took:.1f} s after heal)",
                    {"states": states, "digests": digests, "took_s": round(took, 2)})
        if time.monotonic() >= deadline:
            return CheckResult("convergence", False,
                               f"nodes did not converge within {timeout_s} s",
                               {"states": states, "digests": digests})
        sleep(0.2)


def check_availability(faults: list[dict[str, Any]], bound_s: float) -> CheckResult:
    """Every fault's recovery (heal until a write and read succeeded through every
    node) took at most ``bound_s``."""
    slow = [f for f in faults if f.get("recovery_s") is None or f["recovery_s"] > bound_s]
    times = [f["recovery_s"] for f in faults if f.get("recovery_s") is not None]
    by_kind: dict[str, float] = defaultdict(float)
    for f in faults:
        if f.get("recovery_s") is not None:
            by_kind[f["kind"]] = max(by_kind[f["kind"]], f["recovery_s"])
    details = {"bound_s": bound_s, "worst_recovery_s_by_kind":
               {k: round(v, 2) for k, v in sorted(by_kind.items())}}
    if slow:
        details["slow"] = [{"kind": f["kind"], "detail": f["detail"],
                            "recovery_s": f.get("recovery_s")} for f in slow]
        return CheckResult("availability", False,
                           f"{len(slow)} of {len(faults)} faults did not recover within "
                           f"{bound_s} s", details)
    worst = max(times) if times else 0.0
    return CheckResult("availability", True,
                       f"all {len(faults)} faults recovered within {bound_s} s "
                       f"(worst {worst:.1f} s)", details)

"""Generated register histories, for testing and benchmarking the linearizability checker.

``generate_history`` runs a real sequential register (so the result is linearizable by
construction) under concurrent processes whose operations overlap at random: each
operation takes effect at a random instant between its call and its return. Some
outcomes are reported as unknown (``info``), and some of those never took effect.
``stale_read_mutation`` turns such a history into one that is certainly not
linearizable.
"""

from __future__ import annotations

import heapq
import random
from typing import Any

__all__ = ["generate_history", "stale_read_mutation"]


def generate_history(rng: random.Random, *, keys: int = 100, processes: int = 8,
                     operations: int = 10_000, info_rate: float = 0.03,
                     latency_max: int = 20, value_pool: int | None = None) -> list[dict]:
    """A linearizable history of ``operations`` gets, puts and cases over ``keys`` keys.

    ``latency_max`` (time units) bounds the gap from call to effect and from effect to
    return; larger means more overlap. Values written are unique unless ``value_pool`` is
    set, in which case they are drawn from ``range(value_pool)`` (harder to check).
    """
    key_names = [f"k{i}" for i in range(keys)]
    register: dict[str, Any] = {}
    history: list[dict] = []
    # Event queue entries: (time, seq, kind, process, op dict).
    queue: list[tuple[int, int, str, int, dict]] = []
    seq = 0
    next_value = 0
    issued = 0

    def push(at: int, kind: str, process: int, op: dict) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(queue, (at, seq, kind, process, op))

    for process in range(processes):
        push(rng.randrange(latency_max + 1), "invoke", process, {})
    while queue:
        now, _, kind, process, op = heapq.heappop(queue)
        if kind == "invoke":
            if issued >= operations:
                continue
            issued += 1
            key = rng.choice(key_names)
            f = rng.choices(("get", "put", "cas"), weights=(5, 4, 2))[0]
            if f == "get":
                value: Any = None
            elif value_pool is None:
                next_value += 1
                value = next_value
            else:
                value = rng.randrange(value_pool)
            if f == "cas":
                # Half the time expect the current value, so many cases succeed.
                current = register.get(key)
                expected = current if rng.random() < 0.5 else rng.randrange(max(next_value, 4))
                value = [expected, value]
            op = {"f": f, "key": key, "value": value}
            history.append({"process": process, "type": "invoke", "time": now, **op})
            outcome_unknown = rng.random() < info_rate
            takes_effect = not outcome_unknown or rng.random() < 0.5
            effect_at = now + rng.randrange(latency_max + 1)
            op["unknown"] = outcome_unknown
            op["result"] = "fail" if not takes_effect else None
            if takes_effect:
                push(effect_at, "effect", process, op)
            push(effect_at + rng.randrange(latency_max + 1), "return", process, op)
        elif kind == "effect":
            key = op["key"]
            if op["f"] == "get":
                op["read"] = register.get(key)
                op["result"] = "ok"
            elif op["f"] == "put":
                register[key] = op["value"]
                op["result"] = "ok"
            elif register.get(key) == op["value"][0]:
                register[key] = op["value"][1]
                op["result"] = "ok"
            else:
                op["result"] = "fail"
        else:
            status = "info" if op["unknown"] else op["result"]
            value = op.get("read") if op["f"] == "get" else op["value"]
            history.append({"process": process, "type": status, "f": op["f"],
                            "key": op["key"], "value": value, "time": now})
            push(now + rng.randrange(latency_max + 1), "invoke", process, {})
    return history


def stale_read_mutation(history: list[dict], rng: random.Random) -> list[dict] | None:
    """A copy of ``history`` where one successful get returns a value that was certainly
    overwritten before the get began: put A returned, then put B (of another value) was
    called and returned, then the get was called, and the get now claims to read A.

    Assumes unique written values (the default of ``generate_history``). Returns None if
    the history has no such pattern.
    """
    ops = _completed_ops(history)
    candidates = []
    for key, key_ops in ops.items():
        puts = [o for o in key_ops if o["f"] == "put" and o["type"] == "ok"]
        gets = [o for o in key_ops if o["f"] == "get" and o["type"] == "ok"]
        for a in puts:
            for b in puts:
                if b["call_pos"] <= a["ret_pos"] or b["value"] == a["value"]:
                    continue
                for g in gets:
                    if g["call_pos"] > b["ret_pos"] and g["value"] != a["value"]:
                        candidates.append((key, a, g))
                break  # one overwriting put per a is enough
    if not candidates:
        return None
    _, a, g = rng.choice(candidates)
    mutated = [dict(r) for r in history]
    mutated[g["ret_pos"]]["value"] = a["value"]
    return mutated


def _completed_ops(history: list[dict]) -> dict[str, list[dict]]:
    """Ops per key with positions of their records (history assumed in time order)."""
    pending: dict[int, tuple[int, dict]] = {}
    by_key: dict[str, list[dict]] = {}
    for pos, record in enumerate(history):
        if record["type"] == "invoke":
            pending[record["process"]] = (pos, record)
            continue
        call_pos, call = pending.pop(record["process"])
        value = record["value"] if call["f"] == "get" else call["value"]
        by_key.setdefault(call["key"], []).append({
            "f": call["f"], "type": record["type"], "value": value,
            "call_pos": call_pos, "ret_pos": pos})
    return by_key

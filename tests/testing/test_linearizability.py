"""The linearizability checker: known bad histories are rejected, tricky good ones
accepted, large generated ones checked quickly, and tiny random ones agree with a
brute-force search over every order."""

from __future__ import annotations

import itertools
import random
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvraft.testing.histories import generate_history, stale_read_mutation
from kvraft.testing.linearizability import HistoryError, check, operations_from_history


class History:
    """Write histories as intervals: ``h.op(p, "put", "x", 1, 0, 3)`` then ``h.records``."""

    def __init__(self) -> None:
        self._events: list[tuple[float, int, dict]] = []
        self._seq = 0

    def op(self, process: int, f: str, key: str, value, call: float, ret: float | None,
           status: str = "ok", out=None) -> History:
        """One operation; for a get ``out`` is the value read. ``ret=None`` leaves the
        operation without a completion record."""
        self._add(call, {"process": process, "type": "invoke", "f": f, "key": key,
                         "value": value, "time": call})
        if ret is not None:
            done_value = out if f == "get" else value
            self._add(ret, {"process": process, "type": status, "f": f, "key": key,
                            "value": done_value, "time": ret})
        return self

    def _add(self, at: float, record: dict) -> None:
        self._seq += 1
        self._events.append((at, self._seq, record))

    @property
    def records(self) -> list[dict]:
        return [r for _, _, r in sorted(self._events, key=lambda e: (e[0], e[1]))]


# --- rejected ----------------------------------------------------------------------

def test_stale_read_is_rejected():
    h = (History().op(1, "put", "x", 1, 0, 1).op(1, "put", "x", 2, 2, 3)
         .op(2, "get", "x", None, 4, 5, out=1))
    result = check(h.records)
    assert not result.ok and not result.unknown
    assert result.key == "x"
    assert any("get(x) -> 1" in line and "cannot place" in line for line in result.operations)
    assert "register holds 2" in result.explanation


def test_lost_write_is_rejected():
    h = History().op(1, "put", "x", 1, 0, 1).op(2, "get", "x", None, 2, 3, out=None)
    assert not check(h.records).ok


def test_cas_on_a_stale_value_is_rejected():
    h = (History().op(1, "put", "x", 1, 0, 1).op(1, "put", "x", 2, 2, 3)
         .op(2, "cas", "x", [1, 3], 4, 5))
    assert not check(h.records).ok


def test_read_of_a_never_written_value_is_rejected():
    h = History().op(1, "put", "x", 1, 0, 5).op(2, "get", "x", None, 1, 2, out=42)
    assert not check(h.records).ok


def test_read_your_write_violation_is_rejected():
    # Even with a concurrent writer, p1 cannot read the initial value after its own put.
    h = (History().op(1, "put", "x", 1, 0, 1).op(2, "put", "x", 2, 0, 10)
         .op(1, "get", "x", None, 2, 3, out=None))
    assert not check(h.records).ok


def test_failed_write_did_not_take_effect():
    h = (History().op(1, "put", "x", 1, 0, 1, status="fail")
         .op(2, "get", "x", None, 2, 3, out=1))
    assert not check(h.records).ok


def test_unknown_write_cannot_take_effect_before_its_invocation():
    h = (History().op(2, "get", "x", None, 0, 1, out=1)
         .op(1, "put", "x", 1, 2, 3, status="info"))
    assert not check(h.records).ok


def test_unknown_write_cannot_take_effect_twice():
    # Once seen, an unknown write cannot be "undone" by a later read of the old value.
    h = (History().op(1, "put", "x", 1, 0, 1, status="info")
         .op(2, "get", "x", None, 5, 6, out=1).op(2, "get", "x", None, 7, 8, out=None))
    assert not check(h.records).ok


def test_reports_the_smallest_failing_key():
    h = History()
    for n, key in enumerate(("b", "a", "c")):
        h.op(10 * n, "put", key, 1, 0, 1).op(10 * n + 1, "get", key, None, 2, 3, out=7)
    h.op(3, "put", "A-ok", 1, 0, 1).op(3, "get", "A-ok", None, 2, 3, out=1)
    result = check(h.records)
    assert not result.ok
    assert result.key == "a"


# --- accepted ----------------------------------------------------------------------

@pytest.mark.parametrize("first,second", [(1, 2), (2, 1)])
def test_concurrent_writes_may_be_read_in_either_order(first, second):
    h = (History().op(1, "put", "x", 1, 0, 10).op(2, "put", "x", 2, 1, 11)
         .op(3, "get", "x", None, 2, 5, out=first).op(3, "get", "x", None, 6, 9, out=second))
    assert check(h.records).ok


def test_reads_cannot_flip_back_after_both_writes_finished():
    h = (History().op(1, "put", "x", 1, 0, 10).op(2, "put", "x", 2, 1, 11)
         .op(3, "get", "x", None, 12, 13, out=1).op(3, "get", "x", None, 14, 15, out=2))
    assert not check(h.records).ok


def test_unknown_write_that_took_effect():
    h = (History().op(1, "put", "x", 1, 0, 1, status="info")
         .op(2, "get", "x", None, 5, 6, out=1))
    assert check(h.records).ok


def test_unknown_write_that_did_not_take_effect():
    h = (History().op(1, "put", "x", 1, 0, 1, status="info")
         .op(2, "get", "x", None, 5, 6, out=None).op(2, "put", "x", 2, 7, 8)
         .op(2, "get", "x", None, 9, 10, out=2))
    assert check(h.records).ok


def test_unknown_write_may_take_effect_long_after_it_timed_out():
    h = (History().op(1, "put", "x", 1, 0, 1, status="info")
         .op(2, "get", "x", None, 5, 6, out=None).op(2, "get", "x", None, 100, 101, out=1))
    assert check(h.records).ok


def test_invoke_without_completion_is_an_unknown_outcome():
    h = History().op(1, "put", "x", 1, 0, None).op(2, "get", "x", None, 5, 6, out=1)
    assert check(h.records).ok


def test_failed_cas_leaves_the_value():
    h = (History().op(1, "put", "x", 1, 0, 1).op(1, "cas", "x", [2, 3], 2, 3, status="fail")
         .op(2, "get", "x", None, 4, 5, out=1))
    assert check(h.records).ok


def test_successful_and_unknown_cas():
    h = (History().op(1, "put", "x", 1, 0, 1).op(1, "cas", "x", [1, 3], 2, 3)
         .op(2, "cas", "x", [3, 4], 4, 5, status="info")
         .op(3, "get", "x", None, 6, 7, out=4))
    assert check(h.records).ok


def test_equal_timestamps_follow_history_order():
    # The put's completion is recorded before the get's invocation at the same time.
    records = [
        {"process": 1, "type": "invoke", "f": "put", "key": "x", "value": 1, "time": 0},
        {"process": 1, "type": "ok", "f": "put", "key": "x", "value": 1, "time": 5},
        {"process": 2, "type": "invoke", "f": "get", "key": "x", "value": None, "time": 5},
        {"process": 2, "type": "ok", "f": "get", "key": "x", "value": None, "time": 6},
    ]
    assert not check(records).ok
    records[1], records[2] = records[2], records[1]  # now they overlap
    assert check(records).ok


def test_msgpack_style_list_values_are_compared_by_content():
    h = (History().op(1, "put", "x", [1, 2], 0, 1).op(2, "get", "x", None, 2, 3, out=[1, 2]))
    assert check(h.records).ok


# --- malformed input, timeouts -------------------------------------------------------

def test_double_invoke_is_a_history_error():
    records = [
        {"process": 1, "type": "invoke", "f": "put", "key": "x", "value": 1, "time": 0},
        {"process": 1, "type": "invoke", "f": "put", "key": "x", "value": 2, "time": 1},
    ]
    with pytest.raises(HistoryError, match="process 1 invoked put while"):
        check(records)


def test_completion_without_invoke_is_a_history_error():
    with pytest.raises(HistoryError, match="never invoked"):
        check([{"process": 4, "type": "ok", "f": "get", "key": "x", "value": 1, "time": 0}])


def test_timeout_gives_unknown():
    history = generate_history(random.Random(3), keys=1, processes=8, operations=3000)
    result = check(history, timeout_s=0)
    assert result.unknown and not result.ok
    assert result.key == "k0" and "timed out" in result.explanation


# --- large generated histories --------------------------------------------------------

@pytest.mark.parametrize("seed", [1, 2])
def test_large_generated_history_is_accepted_quickly(seed):
    rng = random.Random(seed)
    history = generate_history(rng, keys=100, processes=10, operations=10_000,
                               info_rate=0.05)
    start = time.monotonic()
    result = check(history, timeout_s=60)
    elapsed = time.monotonic() - start
    assert result.ok, result.explanation
    assert result.operations_checked > 8000  # fail completions are dropped
    assert elapsed < 10, f"checking 10,000 operations took {elapsed:.1f} s"
    mutated = stale_read_mutation(history, rng)
    assert mutated is not None
    bad = check(mutated, timeout_s=60)
    assert not bad.ok and not bad.unknown


def test_contended_single_key_history():
    rng = random.Random(5)
    history = generate_history(rng, keys=1, processes=10, operations=1500, info_rate=0.05)
    assert check(history, timeout_s=60).ok
    assert not check(stale_read_mutation(history, rng), timeout_s=60).ok


def test_small_value_pool_history_is_accepted():
    # Repeated values make many orders plausible: the cache has to do the work.
    rng = random.Random(9)
    history = generate_history(rng, keys=3, processes=6, operations=1500, value_pool=3,
                               info_rate=0.02)
    assert check(history, timeout_s=60).ok


# --- against brute force ----------------------------------------------------------------

def brute_force_linearizable(history: list[dict]) -> bool:
    """Every order of every allowed subset of operations, straight from the spec."""
    pending: dict[int, dict] = {}
    ops: list[dict] = []
    for position, record in enumerate(history):
        if record["type"] == "invoke":
            pending[record["process"]] = {**record, "call": position}
            continue
        call = pending.pop(record["process"])
        # An unknown outcome may take effect at any time after its invocation, even
        # after the "info" record: its return is infinitely late.
        ret = float("inf") if record["type"] == "info" else position
        ops.append({**call, "status": record["type"], "ret": ret, "out": record["value"]})
    ops.extend({**call, "status": "info", "ret": float("inf"), "out": None}
               for call in pending.values())
    for key in {op["key"] for op in ops}:
        key_ops = [op for op in ops if op["key"] == key and op["status"] != "fail"]
        required = [op for op in key_ops if op["status"] == "ok"]
        optional = [op for op in key_ops if op["status"] == "info"]
        if not any(_some_order_is_legal(required + list(extra))
                   for n in range(len(optional) + 1)
                   for extra in itertools.combinations(optional, n)):
            return False
    return True


def _some_order_is_legal(ops: list[dict]) -> bool:
    for order in itertools.permutations(ops):
        if any(a["ret"] < b["call"] for i, b in enumerate(order) for a in order[i + 1:]):
            continue  # violates real time: a finished before b began, yet b comes first
        state = None
        for op in order:
            if op["f"] == "get":
                if op["status"] == "ok" and op["out"] != state:
                    break
            elif op["f"] == "put":
                state = op["value"]
            elif state == op["value"][0]:
                state = op["value"][1]
            elif op["status"] == "ok":
                break
        else:
            return True
    return False


_values = st.sampled_from([None, 1, 2])


@st.composite
def tiny_histories(draw) -> list[dict]:
    n = draw(st.integers(1, 5))
    slots = draw(st.permutations(list(range(2 * n))))
    events = []
    for i in range(n):
        call, ret = sorted(slots[2 * i:2 * i + 2])
        f = draw(st.sampled_from(["get", "put", "cas"]))
        key = draw(st.sampled_from(["x", "y"]))
        value = {"get": None, "put": draw(st.sampled_from([1, 2])),
                 "cas": [draw(_values), draw(st.sampled_from([1, 2]))]}[f]
        status = draw(st.sampled_from(["ok", "ok", "ok", "info", "fail", "none"]))
        events.append((call, {"process": i, "type": "invoke", "f": f, "key": key,
                              "value": value, "time": call}))
        if status != "none":
            out = draw(_values) if f == "get" else value
            events.append((ret, {"process": i, "type": status, "f": f, "key": key,
                                 "value": out, "time": ret}))
    return [record for _, record in sorted(events, key=lambda e: e[0])]


@settings(max_examples=300, deadline=None)
@given(tiny_histories())
def test_agrees_with_brute_force(history):
    assert check(history).ok == brute_force_linearizable(history)


def test_an_unknown_write_may_take_effect_after_its_info_record():
    """The oracle once ended an "info" write at its info record; Hypothesis found it
    rarely (a flaky failure). The put may land between the two reads."""
    history = [
        {"process": 0, "type": "invoke", "f": "get", "key": "y", "value": None, "time": 0},
        {"process": 2, "type": "invoke", "f": "put", "key": "y", "value": 2, "time": 1},
        {"process": 2, "type": "info", "f": "put", "key": "y", "value": 2, "time": 3},
        {"process": 3, "type": "invoke", "f": "get", "key": "y", "value": None, "time": 4},
        {"process": 0, "type": "ok", "f": "get", "key": "y", "value": 2, "time": 5},
        {"process": 3, "type": "ok", "f": "get", "key": "y", "value": None, "time": 7},
    ]
    assert check(history).ok
    assert brute_force_linearizable(history)


def test_operations_keep_unknown_outcomes_open():
    ops = operations_from_history(History().op(1, "put", "x", 1, 0, 2, status="info").records)
    assert len(ops) == 1 and ops[0].ret is None and ops[0].status == "info"

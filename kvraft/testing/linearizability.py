"""A linearizability checker for key-value histories (Wing & Gong / Lowe, as in Porcupine).

A history is a list of records, in the order they happened::

    {"process": 3, "type": "invoke", "f": "put", "key": "k1", "value": 7, "time": 120}
    {"process": 3, "type": "ok",     "f": "put", "key": "k1", "value": 7, "time": 131}

``type`` is ``invoke``, ``ok`` (took effect, and for a get ``value`` is what was read,
``None`` for absent), ``fail`` (definitely did not take effect) or ``info`` (unknown: it
may or may not have taken effect). A cas's ``value`` is ``[expected, new]``; an ``ok`` cas
took effect, so the register held ``expected`` at that moment. An invoke with no
completion counts as ``info``. Each key is an independent register starting at ``None``.

How the search works (see Lowe, "Testing for linearisability", 2017, and Porcupine's
``checkSingle``): per key, call and return events sit in one doubly linked list in time
order. The search walks the list; at a call it tries to linearize that operation now
(apply it to the model state), lifting its call and return out of the list; reaching a
return whose call is still in the list means the current partial order is wrong, so it
backtracks (pops the last linearized op, puts it back, and tries the next candidate). A
cache of (linearized-set bitset, state) pairs prunes every configuration already explored,
which is what makes the search fast in practice. Bitsets are Python ints; the search is
an explicit loop with a stack, never recursion.

An ``info`` operation's return is placed at time infinity: it may take effect at any
point after its invocation. Linearizing it after every other operation is the same as it
never taking effect, so "took effect or not" needs no special case. ``fail`` operations
and unknown-outcome reads constrain nothing and are dropped.

Ordering of equal timestamps: events with the same ``time`` keep their order in the
history list (a simulator records them in the order they happened).
"""

from __future__ import annotations

import time as _time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

__all__ = ["Operation", "Result", "check", "operations_from_history", "HistoryError"]

_INFINITY = float("inf")
_DEADLINE_CHECK_STEPS = 2048  # search steps between two looks at the clock
_CONTEXT_OPS_MAX = 24  # operations reported around a failure


class HistoryError(ValueError):
    """The history is malformed (e.g. a process invoked twice without a completion)."""


@dataclass(frozen=True, slots=True)
class Operation:
    """One client operation: its call and (unless unknown) return time.

    ``ret`` is ``None`` for an operation of unknown outcome (``info``): it is concurrent
    with everything after its call. ``output`` is the value a ``get`` read.
    """

    id: int
    process: int
    f: str
    key: str
    input: Any
    output: Any
    status: str  # "ok" or "info"
    call: float
    ret: float | None
    call_order: int = 0  # rank of the call event in the whole history (ties broken)
    ret_order: int | None = None  # rank of the return event; None for unknown outcome
    note: str = ""  # why the checker narrowed an unknown outcome, if it did

    def describe(self) -> str:
        """One readable line, e.g. ``#4 p2 cas(k1, 3->5) ok [t=10..14]``."""
        if self.f == "get":
            what = f"get({self.key}) -> {self.output!r}" if self.status == "ok" else (
                f"get({self.key}) -> ?")
        elif self.f == "put":
            what = f"put({self.key}, {self.input!r})"
        else:
            what = f"cas({self.key}, {self.input[0]!r}->{self.input[1]!r})"
        end = "inf" if self.ret is None else _fmt_time(self.ret)
        note = f" ({self.note})" if self.note else ""
        return (f"#{self.id} p{self.process} {what} {self.status} "
                f"[t={_fmt_time(self.call)}..{end}]{note}")


def _fmt_time(t: float) -> str:
    return str(int(t)) if float(t).is_integer() else str(t)


@dataclass(slots=True)
class Result:
    """The verdict of ``check``.

    ``ok`` is True only when every key was proven linearizable. When not ok, ``key`` is
    the smallest failing key, ``operations`` describes the operations around the point of
    failure (the tail of the longest linearizable prefix, the operation that could not be
    placed, and those concurrent with it), and ``explanation`` says what went wrong.
    ``unknown`` is True when the time budget ran out before a verdict (then ``ok`` is
    False and ``key`` is the key whose search was cut short).
    """

    ok: bool
    unknown: bool = False
    key: str | None = None
    operations: list[str] = field(default_factory=list)
    explanation: str = ""
    keys_checked: int = 0
    operations_checked: int = 0

    def __bool__(self) -> bool:
        return self.ok


def _freeze(value: Any) -> Any:
    """Make a value hashable so it can be a model state (msgpack gives lists)."""
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    return value


def operations_from_history(history: Iterable[Mapping[str, Any]]) -> list[Operation]:
    """Pair invoke and completion records into operations, dropping those that cannot
    matter (``fail`` completions and reads of unknown outcome).

    Raises ``HistoryError`` naming the offending record when the history is malformed.
    """
    indexed = list(enumerate(history))
    # Stable sort by time: records with equal times keep their history order.
    indexed.sort(key=lambda pair: (pair[1]["time"], pair[0]))
    open_calls: dict[int, tuple[int, int, Mapping[str, Any]]] = {}  # rank, position, record
    # (call order, op) so the result is ordered by call; ids follow that order.
    ops: list[tuple[int, dict[str, Any]]] = []
    for rank, (position, record) in enumerate(indexed):
        kind = record.get("type")
        process = record.get("process")
        if kind == "invoke":
            if process in open_calls:
                raise HistoryError(
                    f"record {position}: process {process} invoked {record.get('f')} while "
                    f"its previous operation (record {open_calls[process][1]}) has no "
                    "completion; give each process one operation at a time, or complete "
                    "it with 'info' first")
            if record.get("f") not in ("get", "put", "cas"):
                raise HistoryError(
                    f"record {position}: unknown f {record.get('f')!r}; expected get, put "
                    "or cas")
            if record.get("f") == "cas" and len(record.get("value") or ()) != 2:
                raise HistoryError(
                    f"record {position}: a cas value must be [expected, new], got "
                    f"{record.get('value')!r}")
            open_calls[process] = (rank, position, record)
            continue
        if kind not in ("ok", "fail", "info"):
            raise HistoryError(
                f"record {position}: unknown type {kind!r}; expected invoke, ok, fail or info")
        if process not in open_calls:
            raise HistoryError(
                f"record {position}: process {process} completed an operation it never "
                "invoked; every completion needs an earlier invoke by the same process")
        call_rank, _, call = open_calls.pop(process)
        if kind == "fail":
            continue
        if kind == "info" and call["f"] == "get":
            continue
        ops.append((call_rank, _make_op(call, record, kind, call_rank, rank)))
    for call_rank, _, call in open_calls.values():
        if call["f"] != "get":
            ops.append((call_rank, _make_op(call, None, "info", call_rank, None)))
    ops.sort(key=lambda pair: pair[0])
    return [Operation(id=i, **fields) for i, (_, fields) in enumerate(ops)]


def _make_op(call: Mapping[str, Any], done: Mapping[str, Any] | None, status: str,
             call_order: int, ret_order: int | None) -> dict[str, Any]:
    f = call["f"]
    output = _freeze(done.get("value")) if (done is not None and f == "get") else None
    return {
        "process": call["process"], "f": f, "key": call["key"],
        "input": _freeze(call.get("value")), "output": output, "status": status,
        "call": call["time"], "ret": None if status == "info" else done["time"],
        "call_order": call_order, "ret_order": None if status == "info" else ret_order,
    }


def _narrow_unknown(ops: list[Operation]) -> list[Operation]:
    """Shrink the search space that unknown-outcome writes create, soundly.

    An unknown write stays pending forever, so each one doubles the configurations the
    search may visit. Two rewrites remove most of them without changing the verdict:

    * A write of a value that no operation ever reads or expects (by a get or a cas) can
      be dropped: in any legal order where it took effect, the register held its value
      only until the next write, and nothing looked, so leaving it out is legal too.
    * A write of a value no other operation writes, which some successful operation read
      or expected, certainly took effect before the earliest such reader returned: it
      becomes a successful write that returns then.

    ``ops`` are one key's operations; the result keeps their order.
    """
    referenced: set[Any] = set()
    writers: dict[Any, int] = defaultdict(int)
    first_reader: dict[Any, Operation] = {}
    for op in ops:
        if op.f == "get":
            seen = op.output
        elif op.f == "cas":
            seen = op.input[0]
        else:
            seen = _NOTHING
        if seen is not _NOTHING:
            referenced.add(seen)
            if op.status == "ok":
                best = first_reader.get(seen)
                if best is None or op.ret_order < best.ret_order:
                    first_reader[seen] = op
        if op.f != "get":
            writers[_written(op)] += 1
    narrowed: list[Operation] = []
    for op in ops:
        if op.status != "info":
            narrowed.append(op)
            continue
        value = _written(op)
        if value not in referenced:
            continue
        reader = first_reader.get(value)
        if (value is not None and writers[value] == 1 and reader is not None
                and reader.ret_order > op.call_order):
            op = replace(op, status="ok", ret=reader.ret, ret_order=reader.ret_order,
                         note=f"outcome unknown; took effect: #{reader.id} saw its value")
        narrowed.append(op)
    return narrowed


_NOTHING = object()


def _written(op: Operation) -> Any:
    return op.input if op.f == "put" else op.input[1]


def _step(state: Any, op: Operation) -> tuple[bool, Any]:
    """The register model: may ``op`` take effect in ``state``, and the state after."""
    f = op.f
    if f == "get":
        return state == op.output, state
    if f == "put":
        return True, op.input
    expected, new = op.input
    if op.status == "ok":
        return state == expected, new
    # Unknown cas: whichever way it went, it is consistent with some outcome.
    return True, (new if state == expected else state)


class _TimeoutError(Exception):
    """The time budget ran out mid-search."""


@dataclass(slots=True)
class _KeyVerdict:
    ok: bool
    longest: list[int] = field(default_factory=list)  # op ids of the longest prefix
    stuck: int | None = None  # op id whose return could not be reached
    stuck_state: Any = None


def _check_key(ops: list[Operation], deadline: float | None) -> _KeyVerdict:
    """Lowe's search for one key's operations; ``ops[i].id`` need not equal ``i``."""
    n = len(ops)
    # Events: (rank, tie, is_return, local op index). Ranks are distinct except for the
    # returns at infinity, which follow call order.
    events: list[tuple[float, int, int, int]] = []
    for i, op in enumerate(ops):
        events.append((op.call_order, i, 0, i))
        ret = _INFINITY if op.ret_order is None else op.ret_order
        events.append((ret, i, 1, i))
    events.sort()
    # Linked list over node numbers: 0 = head, 1..2n = events, 2n+1 = tail.
    size = 2 * n + 2
    tail = size - 1
    nxt = list(range(1, size)) + [-1]
    prv = [-1] + list(range(0, size - 1))
    match = [-1] * size  # call node -> its return node; -1 for returns and sentinels
    node_op = [-1] * size
    call_node = [0] * n
    ret_node = [0] * n
    for pos, (_, _, is_ret, i) in enumerate(events, start=1):
        node_op[pos] = i
        if is_ret:
            ret_node[i] = pos
        else:
            call_node[i] = pos
    for i in range(n):
        match[call_node[i]] = ret_node[i]

    state: Any = None
    linearized = 0
    cache: set[tuple[int, Any]] = set()
    stack: list[tuple[int, Any]] = []  # (call node, state before it)
    best: list[int] = []
    stuck: int | None = None
    stuck_state: Any = None
    entry = nxt[0]
    steps = 0
    while nxt[0] != tail:
        steps += 1
        if deadline is not None and steps % _DEADLINE_CHECK_STEPS == 0 \
                and _time.monotonic() > deadline:
            raise _TimeoutError()
        ret = match[entry]
        if ret != -1:  # a call: try to linearize it here
            ok, new_state = _step(state, ops[node_op[entry]])
            if ok:
                bit = 1 << node_op[entry]
                key = (linearized | bit, new_state)
                if key not in cache:
                    cache.add(key)
                    stack.append((entry, state))
                    state = new_state
                    linearized |= bit
                    # Lift the call and its return out of the list.
                    p, q = prv[entry], nxt[entry]
                    nxt[p] = q
                    prv[q] = p
                    p, q = prv[ret], nxt[ret]
                    nxt[p] = q
                    prv[q] = p
                    entry = nxt[0]
                    continue
            entry = nxt[entry]
            continue
        # A return whose call is still pending: backtrack.
        if stuck is None or len(stack) > len(best):
            best = [node_op[c] for c, _ in stack]
            stuck = node_op[entry]
            stuck_state = state
        if not stack:
            return _KeyVerdict(False, [ops[i].id for i in best],
                               ops[stuck].id if stuck is not None else None, stuck_state)
        entry, state = stack.pop()
        linearized &= ~(1 << node_op[entry])
        ret = match[entry]
        # Unlift in reverse order of lifting: the return first, then the call.
        nxt[prv[ret]] = ret
        prv[nxt[ret]] = ret
        nxt[prv[entry]] = entry
        prv[nxt[entry]] = entry
        entry = nxt[entry]
    return _KeyVerdict(True, [ops[node_op[c]].id for c, _ in stack])


def check(history: Iterable[Mapping[str, Any]], timeout_s: float | None = None) -> Result:
    """Check that ``history`` (records as described in the module docstring) is
    linearizable for a map of independent registers.

    Keys are checked in sorted order and the first failing key is reported, so ``key``
    is the smallest failing key. With ``timeout_s``, a search still running when the
    budget ends gives ``Result(ok=False, unknown=True)`` unless some key already failed.
    """
    deadline = None if timeout_s is None else _time.monotonic() + timeout_s
    ops = operations_from_history(history)
    by_key: dict[str, list[Operation]] = defaultdict(list)
    for op in ops:
        by_key[op.key].append(op)
    checked = 0
    unknown_key: str | None = None
    for key in sorted(by_key, key=_sort_key):
        key_ops = _narrow_unknown(by_key[key])
        try:
            verdict = _check_key(key_ops, deadline)
        except _TimeoutError:
            unknown_key = key  # the budget is spent: stop and say where
            break
        checked += 1
        if not verdict.ok:
            return _failure(key, key_ops, verdict, checked, len(ops))
    if unknown_key is not None:
        return Result(
            ok=False, unknown=True, key=unknown_key, keys_checked=checked,
            operations_checked=len(ops),
            explanation=(
                f"timed out after {timeout_s} s while checking key {unknown_key!r} "
                f"({len(by_key[unknown_key])} operations); {checked} of {len(by_key)} keys "
                "were linearizable. Give a larger timeout_s or a shorter history."))
    return Result(ok=True, keys_checked=checked, operations_checked=len(ops),
                  explanation=f"{len(ops)} operations on {checked} keys are linearizable")


def _sort_key(key: Any) -> tuple[str, str]:
    # Keys may mix types in hand-written histories; order by type name, then value.
    return (type(key).__name__, str(key)) if not isinstance(key, str) else ("", key)


def _failure(key: str, key_ops: list[Operation], verdict: _KeyVerdict, checked: int,
             total: int) -> Result:
    by_id = {op.id: op for op in key_ops}
    prefix = [by_id[i] for i in verdict.longest]
    lines: list[str] = []
    tail = prefix[-6:]
    if len(prefix) > len(tail):
        lines.append(f"... {len(prefix) - len(tail)} earlier operations linearized")
    lines.extend(f"linearized: {op.describe()}" for op in tail)
    stuck = by_id.get(verdict.stuck) if verdict.stuck is not None else None
    if stuck is not None:
        lines.append(f"cannot place: {stuck.describe()}")
        done = set(verdict.longest) | {stuck.id}
        stuck_ret = _INFINITY if stuck.ret is None else stuck.ret
        concurrent = [
            op for op in key_ops
            if op.id not in done and op.call <= stuck_ret
            and (op.ret is None or op.ret >= stuck.call)
        ]
        room = max(0, _CONTEXT_OPS_MAX - len(lines))
        lines.extend(f"concurrent: {op.describe()}" for op in concurrent[:room])
        explanation = (
            f"key {key!r} is not linearizable: at most {len(prefix)} of {len(key_ops)} "
            f"operations can be put in a legal order; after them the register holds "
            f"{verdict.stuck_state!r}, and {stuck.describe()} must take effect before it "
            "returns, but no order of it and the operations concurrent with it is legal "
            "for a register.")
    else:
        explanation = f"key {key!r} is not linearizable."
    return Result(ok=False, key=key, operations=lines, explanation=explanation,
                  keys_checked=checked, operations_checked=total)

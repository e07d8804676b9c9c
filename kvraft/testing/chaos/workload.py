"""The harness' clients: register and set workloads on client threads, and the history
they record.

Every operation is recorded twice: ``invoke`` just before the command is sent, and its
completion (``ok`` / ``fail`` / ``info``, see ``kvraft.testing.chaos.client``) just
after the reply came back. Times are seconds since the run started, from one monotonic
clock, so an operation's real duration is inside ``[invoke, completion]``, which is
all the linearizability checker assumes.

Registers (``f``: ``get`` / ``put`` / ``cas``): keys ``r:<n>``; every written value is
unique across the run (so the checker can tell writes apart and narrow unknown
outcomes). A key is retired after ``ops_per_key_max`` operations and a fresh key takes
its place: each key's history stays small enough for the checker's search, as in
Jepsen's independent keys. A cas is ``SET k new IFEQ old``: ``OK`` if it swapped, nil
if the value was not ``old`` (a definite ``fail``).

Set (``f``: ``add``): ``APPEND s:<j> "<token> "`` with unique tokens; the final read of
each ``s:<j>`` must hold every acknowledged token, no unknown token, no token whose add
failed, and no token twice.

After an ``info`` outcome the client continues as a new *process* (Jepsen's rule: the
old operation may still be in flight, and a process has one operation at a time).
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kvraft.testing.chaos.client import (
    FAIL,
    INFO,
    OK,
    ConnectError,
    OutcomeLostError,
    RespClient,
    classify,
)

REGISTER_FS = ("get", "put", "cas")


class History:
    """Thread-safe, append-only list of operation records."""

    def __init__(self, clock: Callable[[], float] | None = None):
        self._clock = clock or time.monotonic
        self.t0 = self._clock()
        self._lock = threading.Lock()
        self.records: list[dict[str, Any]] = []

    def now(self) -> float:
        """Seconds since the history started."""
        return self._clock() - self.t0

    def add(self, record: dict[str, Any]) -> dict[str, Any]:
        record["time"] = round(self.now(), 6)
        with self._lock:
            self.records.append(record)
        return record

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.records)


class KeySpace:
    """The register keys in use: a window of ``active`` keys, each retired after
    ``ops_per_key_max`` operations. Remembers each key's last known value for cas."""

    def __init__(self, active: int, ops_per_key_max: int, rng: random.Random):
        self._lock = threading.Lock()
        self._next = itertools.count()
        self._rng = rng
        self.ops_per_key_max = ops_per_key_max
        self.window = [self._fresh() for _ in range(active)]
        self.used: dict[str, int] = {}
        self.known: dict[str, int | None] = {}
        self._values = itertools.count(1)

    def _fresh(self) -> str:
        return f"r:{next(self._next)}"

    def pick(self, rng: random.Random) -> str:
        """A key for the next operation (counted toward its budget)."""
        with self._lock:
            slot = rng.randrange(len(self.window))
            key = self.window[slot]
            count = self.used.get(key, 0) + 1
            self.used[key] = count
            if count >= self.ops_per_key_max:
                self.window[slot] = self._fresh()
            return key

    def unique_value(self) -> int:
        with self._lock:
            return next(self._values)

    def observe(self, key: str, value: int | None) -> None:
        with self._lock:
            self.known[key] = value

    def guess(self, key: str) -> int | None:
        with self._lock:
            return self.known.get(key)


@dataclass
class ClientStats:
    """What one client thread did."""

    ok: int = 0
    fail: int = 0
    info: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def count(self, outcome: str, error: str | None) -> None:
        setattr(self, outcome, getattr(self, outcome) + 1)
        if error is not None:
            kind = error.split(":", 1)[0][:40]
            self.errors[kind] = self.errors.get(kind, 0) + 1


class Processes:
    """Process numbers: one per client at a time, a fresh one after each ``info``."""

    def __init__(self):
        self._lock = threading.Lock()
        self._next = itertools.count()

    def new(self) -> int:
        with self._lock:
            return next(self._next)


class ClientThread(threading.Thread):
    """One client bound to one node: runs operations until ``stop`` is set, pausing
    ``think_s`` (random, mean given) between them to pace the load."""

    def __init__(self, name: str, node_id: str, connection: RespClient, history: History,
                 stop: threading.Event, processes: Processes, rng: random.Random,
                 think_s: float):
        super().__init__(name=name, daemon=True)
        self.node_id = node_id
        self.conn = connection
        self.history = history
        self.stop = stop
        self.processes = processes
        self.process = processes.new()
        self.rng = rng
        self.think_s = think_s
        self.stats = ClientStats()
        self.crash: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self.step()
                self.stop.wait(self.rng.expovariate(1.0 / self.think_s)
                               if self.think_s > 0 else 0)
        except BaseException as e:  # a harness bug: report it, do not hang the run
            self.crash = e
        finally:
            self.conn.close()

    def step(self) -> None:
        raise NotImplementedError

    def perform(self, f: str, key: str, value: Any, args: list) -> tuple[str, object]:
        """Record the invoke, run the command, record and return its outcome."""
        base = {"process": self.process, "f": f, "key": key, "node": self.node_id}
        self.history.add({**base, "type": "invoke", "value": value})
        try:
            reply = self.conn.call(*args)
        except ConnectError as e:
            outcome, error, reply = FAIL, str(e), None
        except OutcomeLostError as e:
            outcome, error, reply = INFO, f"lost: {e}", None
        else:
            outcome, error = classify(reply)
        return outcome, reply if outcome == OK else error

    def complete(self, f: str, key: str, outcome: str, value: Any,
                 error: str | None) -> None:
        record = {"process": self.process, "type": outcome, "f": f, "key": key,
                  "value": value, "node": self.node_id}
        if error is not None:
            record["error"] = error
        self.history.add(record)
        self.stats.count(outcome, error)
        if outcome == INFO:
            self.process = self.processes.new()
        if outcome == FAIL and error is not None and error.startswith(("connect", "tls")):
            # The node is down or hung: do not spin on it.
            self.stop.wait(0.1 + self.rng.random() * 0.2)


class RegisterClient(ClientThread):
    """Reads, writes and compare-and-sets on single-key registers."""

    def __init__(self, *args, keys: KeySpace, **kwargs):
        super().__init__(*args, **kwargs)
        self.keys = keys

    def step(self) -> None:
        key = self.keys.pick(self.rng)
        roll = self.rng.random()
        if roll < 0.5:
            outcome, reply = self.perform("get", key, None, [b"GET", key])
            value = None
            if outcome == OK:
                value = _parse_value(reply)
                self.keys.observe(key, value)
            self.complete("get", key, outcome, value, None if outcome == OK else reply)
        elif roll < 0.75:
            value = self.keys.unique_value()
            outcome, reply = self.perform("put", key, value, [b"SET", key, value])
            if outcome == OK and reply != "OK":
                outcome, reply = INFO, f"unexpected reply {reply!r}"
            if outcome == OK:
                self.keys.observe(key, value)
            self.complete("put", key, outcome, value, None if outcome == OK else reply)
        else:
            expected = self.keys.guess(key)
            if expected is None:
                expected = self.keys.unique_value()  # IFEQ never matches an absent key
            new = self.keys.unique_value()
            outcome, reply = self.perform("cas", key, [expected, new],
                                          [b"SET", key, new, b"IFEQ", expected])
            if outcome == OK and reply is None:
                outcome, error = FAIL, None  # the value was not `expected`: no effect
            elif outcome == OK and reply != "OK":
                outcome, error = INFO, f"unexpected reply {reply!r}"
            else:
                error = None if outcome == OK else reply
            if outcome == OK:
                self.keys.observe(key, new)
            self.complete("cas", key, outcome, [expected, new], error)


class SetClient(ClientThread):
    """Adds unique tokens to a few set keys with APPEND."""

    def __init__(self, *args, set_keys: int, client_index: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.set_keys = set_keys
        self.client_index = client_index
        self._tokens = itertools.count()

    def step(self) -> None:
        key = f"s:{self.rng.randrange(self.set_keys)}"
        token = f"c{self.client_index}-{next(self._tokens)}"
        outcome, reply = self.perform("add", key, token, [b"APPEND", key, token + " "])
        if outcome == OK and not isinstance(reply, int):
            outcome, reply = INFO, f"unexpected reply {reply!r}"
        self.complete("add", key, outcome, token, None if outcome == OK else reply)


def _parse_value(reply: object) -> int | None:
    if reply is None:
        return None
    try:
        return int(reply)
    except (TypeError, ValueError):
        # Not something we wrote: keep it as text, the checker will flag it.
        return reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)


def set_tokens(value: bytes | None) -> list[str]:
    """The tokens of a set key's final value, in order (duplicates kept)."""
    if not value:
        return []
    return value.decode(errors="replace").split()

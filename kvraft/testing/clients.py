"""Simulated clients: get / put / cas with attempt timeouts, retries and leader hints,
recording a history in the format of ``kvraft.testing.linearizability``.

A client runs one operation at a time. Each operation gets a request id (a counter per
client) that every retry reuses, so the state machine applies it at most once and a
reply is attributable to exactly one operation. The outcome is recorded as:

* ``ok``: a node answered (for a cas that found another value: ``fail``, it did not apply);
* ``fail``: every attempt was explicitly refused before being proposed (not leader,
  proposal dropped), so the operation certainly did not take effect;
* ``info``: the operation ran out of time after at least one attempt whose fate is
  unknown (it may still commit later).

The client does not own time or the network: ``ClientDriver`` (the simulator) delivers
replies and timer expiries and carries requests (see ``kvraft.testing.sim``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

__all__ = ["ClientRequest", "ClientReply", "SimClient", "ClientDriver", "ClientConfig"]


@dataclass(slots=True)
class ClientRequest:
    """A request from client ``client`` for its operation ``request`` (attempt
    ``attempt``). For a cas, ``value`` is ``[expected, new]``."""

    client: int
    request: int
    attempt: int
    f: str
    key: str
    value: Any


@dataclass(slots=True)
class ClientReply:
    """``kind`` is ``ok`` (``result`` is the value read, or the write's result),
    ``redirect`` (not the leader: try ``hint``), or ``dropped`` (the node refused to
    propose; ``result`` says why)."""

    client: int
    request: int
    attempt: int
    kind: str
    result: Any = None
    hint: str = ""


@dataclass(slots=True)
class ClientConfig:
    """Workload and timing of simulated clients (times in simulation steps)."""

    keys: int = 5
    attempt_timeout_steps: int = 300
    operation_timeout_steps: int = 1500
    think_steps_max: int = 30
    retry_backoff_steps_max: int = 20
    read_weight: int = 4
    put_weight: int = 3
    cas_weight: int = 2
    # Share of reads sent to a random node instead of the presumed leader (followers
    # serve them through ReadIndex).
    follower_read_rate: float = 0.3
    # Let each run draw shorter timeouts too, so that some writes time out and still
    # apply later (unknown outcomes are where client-visible bugs hide).
    vary_timeouts: bool = True

    def varied(self, rng: random.Random) -> ClientConfig:
        """This config, with timeouts drawn from ``rng`` if ``vary_timeouts``."""
        if not self.vary_timeouts:
            return self
        attempt = rng.choice((60, 150, self.attempt_timeout_steps))
        return replace(self, attempt_timeout_steps=attempt,
                       operation_timeout_steps=max(attempt, rng.choice(
                           (200, 600, self.operation_timeout_steps))))


class ClientDriver(Protocol):
    """What a client needs from the simulator."""

    now: int

    def client_send(self, node: str, request: ClientRequest) -> None:
        """Carry ``request`` to ``node`` (it may be lost)."""

    def client_timer(self, client: SimClient, delay: int, request: int, attempt: int) -> None:
        """Call ``client.on_timer(request, attempt)`` after ``delay`` steps."""

    def client_wake(self, client: SimClient, delay: int) -> None:
        """Call ``client.start_next()`` after ``delay`` steps."""


@dataclass(slots=True)
class _Operation:
    request: int
    f: str
    key: str
    value: Any
    started: int
    attempt: int = 0
    target: str = ""
    # True once some attempt may have been proposed (no explicit refusal for it).
    maybe_applied: bool = False
    refused_attempts: set[int] = field(default_factory=set)


class SimClient:
    """One client process (its ``id`` is the history's ``process``)."""

    def __init__(self, client_id: int, nodes: tuple[str, ...], rng: random.Random,
                 driver: ClientDriver, history: list[dict], config: ClientConfig):
        self.id = client_id
        self.nodes = nodes
        self.rng = rng
        self.driver = driver
        self.history = history
        self.config = config
        self.leader_guess = rng.choice(nodes)
        self.op: _Operation | None = None
        self.next_request = 0
        self.next_value = 0
        self.stopped = False
        self.last_seen: dict[str, Any] = {}  # key -> last value read or written
        self.completed = 0

    # -- operations ----------------------------------------------------------------

    def start_next(self) -> None:
        """Invoke a new random operation (the simulator calls this when woken)."""
        if self.stopped or self.op is not None:
            return
        c = self.config
        f = self.rng.choices(("get", "put", "cas"),
                             weights=(c.read_weight, c.put_weight, c.cas_weight))[0]
        key = f"k{self.rng.randrange(c.keys)}"
        value: Any = None
        if f != "get":
            self.next_value += 1
            # Unique values keep the checker fast and make stale reads unambiguous.
            new = self.id * 1_000_000 + self.next_value
            value = new if f == "put" else [self.last_seen.get(key), new]
        self.next_request += 1
        self.op = _Operation(self.next_request, f, key, value, self.driver.now)
        self._record("invoke", value)
        self._attempt(self._pick_target(f))

    def _pick_target(self, f: str) -> str:
        if f == "get" and self.rng.random() < self.config.follower_read_rate:
            return self.rng.choice(self.nodes)
        return self.leader_guess

    def _attempt(self, target: str) -> None:
        op = self.op
        op.attempt += 1
        op.target = target
        if op.f != "get":
            op.maybe_applied = True  # until the node says otherwise
        self.driver.client_send(target, ClientRequest(
            self.id, op.request, op.attempt, op.f, op.key, op.value))
        self.driver.client_timer(self, self.config.attempt_timeout_steps, op.request,
                                 op.attempt)

    def on_reply(self, reply: ClientReply) -> None:
        """A node answered some attempt of some operation of ours."""
        op = self.op
        if op is None or reply.request != op.request:
            return  # a late answer to an operation already completed
        if reply.kind == "ok":
            self._complete_ok(reply.result)
            return
        if reply.attempt != op.attempt:
            # A refusal of an older attempt: it was not proposed, but the current one
            # may have been; remember only that the old one is harmless.
            op.refused_attempts.add(reply.attempt)
            return
        op.refused_attempts.add(reply.attempt)
        if op.f != "get" and len(op.refused_attempts) == op.attempt:
            op.maybe_applied = False
        if reply.hint and reply.hint in self.nodes:
            self.leader_guess = reply.hint
        else:
            self.leader_guess = self._next_node(op.target)
        if self._out_of_time():
            self._give_up()
            return
        backoff = self.rng.randint(1, self.config.retry_backoff_steps_max)
        self.driver.client_timer(self, backoff, op.request, -op.attempt)

    def on_timer(self, request: int, attempt: int) -> None:
        """An attempt timed out (``attempt > 0``), or a retry backoff ended (< 0)."""
        op = self.op
        if op is None or request != op.request or abs(attempt) != op.attempt:
            return
        if attempt > 0:
            self.leader_guess = self._next_node(op.target)
        if self._out_of_time():
            self._give_up()
            return
        self._attempt(self.leader_guess if op.f != "get" else self._pick_target(op.f))

    def _out_of_time(self) -> bool:
        return self.driver.now - self.op.started >= self.config.operation_timeout_steps

    def _next_node(self, node: str) -> str:
        others = [n for n in self.nodes if n != node]
        return self.rng.choice(others) if others else node

    def _complete_ok(self, result: Any) -> None:
        op = self.op
        if op.f == "get":
            self.last_seen[op.key] = result
            self._record("ok", result)
        elif op.f == "put":
            self.last_seen[op.key] = op.value
            self._record("ok", op.value)
        elif result:
            self.last_seen[op.key] = op.value[1]
            self._record("ok", op.value)
        else:
            self._record("fail", op.value)
        self.leader_guess = op.target
        self._finish()

    def _give_up(self) -> None:
        op = self.op
        self._record("info" if op.maybe_applied else "fail",
                     None if op.f == "get" else op.value)
        self._finish()

    def _finish(self) -> None:
        self.op = None
        self.completed += 1
        if not self.stopped:
            self.driver.client_wake(self, self.rng.randint(1, self.config.think_steps_max))

    def stop(self) -> None:
        """Start no new operations (the one in progress still completes)."""
        self.stopped = True

    def _record(self, kind: str, value: Any) -> None:
        op = self.op
        self.history.append({"process": self.id, "type": kind, "f": op.f, "key": op.key,
                             "value": value, "time": self.driver.now})

"""A tiny deterministic key-value state machine for the simulator.

An entry's data is a msgpack list of commands (a batch, as in the real log format); the
empty data of a leader's no-op applies nothing. A command is a map
``{"c": client, "r": request id, "f": "put" | "cas", "k": key, "v": value}`` (for a cas,
``v`` is ``[expected, new]``).

Clients retry, so the same command may be committed more than once: a per-client
session (the highest request id applied and its result) makes every command take effect
at most once, and a retry gets the first result back. Requests of one client are
sequential, so an older request id arriving late is a stale duplicate and is ignored.
"""

from __future__ import annotations

from typing import Any

import msgpack

__all__ = ["KVMachine", "encode_batch", "decode_batch"]


def encode_batch(commands: list[dict]) -> bytes:
    """Entry data for a batch of commands."""
    return msgpack.packb(commands, use_bin_type=True)


def decode_batch(data: bytes) -> list[dict]:
    """The commands in an entry's data (``[]`` for a no-op, or for an opaque payload a
    scripted test proposed: anything that is not a msgpack list of maps)."""
    if not data:
        return []
    try:
        batch = msgpack.unpackb(data, raw=False)
    except (ValueError, msgpack.UnpackException):
        return []
    if not isinstance(batch, list) or not all(isinstance(c, dict) for c in batch):
        return []
    return batch


class KVMachine:
    """Registers plus client sessions; ``apply`` returns one result per command:
    ``True`` for a put, ``True``/``False`` for a cas (applied or value mismatch), or
    ``None`` for a stale duplicate nobody waits for."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.sessions: dict[int, tuple[int, Any]] = {}  # client -> (request id, result)
        self.last_applied = 0

    def apply(self, index: int, data: bytes) -> list[tuple[int, int, Any]]:
        """Apply the entry at ``index``; return ``(client, request id, result)`` for each
        command, so the node can answer whoever waits for it."""
        if index != self.last_applied + 1:
            raise AssertionError(
                f"KVMachine: applying index {index} after {self.last_applied}; entries must "
                "be applied in order, each once")
        self.last_applied = index
        results = []
        for cmd in decode_batch(data):
            client, request = cmd["c"], cmd["r"]
            seen = self.sessions.get(client)
            if seen is not None and request <= seen[0]:
                results.append((client, request, seen[1] if request == seen[0] else None))
                continue
            key, value = cmd["k"], cmd["v"]
            if cmd["f"] == "put":
                self.data[key] = value
                result: Any = True
            else:
                expected, new = value
                result = self.data.get(key) == expected
                if result:
                    self.data[key] = new
            self.sessions[client] = (request, result)
            results.append((client, request, result))
        return results

    def get(self, key: str) -> Any:
        """The current value of ``key`` (None if absent)."""
        return self.data.get(key)

    def snapshot(self) -> bytes:
        """The whole state as bytes (sorted, so equal states give equal bytes)."""
        return msgpack.packb({
            "data": sorted(self.data.items()),
            "sessions": sorted((c, list(s)) for c, s in self.sessions.items()),
            "applied": self.last_applied,
        }, use_bin_type=True)

    @classmethod
    def restore(cls, blob: bytes) -> KVMachine:
        """A machine holding the state in ``blob`` (from ``snapshot``)."""
        state = msgpack.unpackb(blob, raw=False)
        machine = cls()
        machine.data = {k: v for k, v in state["data"]}
        machine.sessions = {c: (s[0], s[1]) for c, s in state["sessions"]}
        machine.last_applied = state["applied"]
        return machine

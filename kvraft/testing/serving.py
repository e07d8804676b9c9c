"""The client-facing half of SimCluster: carrying simulated clients' requests and
replies, and serving them on the nodes (writes through the leader's log, reads through
ReadIndex once the node has applied up to the read index)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgpack

from kvraft.raft import ProposalDropped, Role
from kvraft.testing.clients import ClientReply, ClientRequest, SimClient
from kvraft.testing.kvmodel import encode_batch

if TYPE_CHECKING:
    from kvraft.testing.cluster import SimNode

__all__ = ["ClientServing", "ScriptRead"]

SCRIPT_CLIENT = 0
"""The client id of requests a test script makes through SimCluster helpers."""


@dataclass(slots=True)
class ScriptRead:
    """A read a script asked for with ``SimCluster.get``: ``done`` once answered, with
    ``kind`` ``ok`` (``value`` read) or ``redirect`` (no leader known)."""

    node: str
    key: str
    done: bool = False
    kind: str = ""
    value: Any = None


class ClientServing:
    """Mixed into SimCluster; uses its ``nodes``, ``rng``, ``schedule``, ``stats``,
    ``clients``, ``client_delay_steps_max``, ``client_drop_rate``, ``_after_input``,
    ``_script_requests`` and ``_script_reads``."""

    def add_client(self, client: SimClient) -> None:
        """Register a client so replies and timers reach it."""
        self.clients[client.id] = client

    # -- what SimClient calls (the ClientDriver protocol) --------------------------------

    def client_send(self, node: str, request: ClientRequest) -> None:
        """Carry ``request`` to ``node`` after a random delay (it may be lost)."""
        if self.client_drop_rate and self.rng.random() < self.client_drop_rate:
            return
        self.schedule(self.rng.randint(1, self.client_delay_steps_max), "creq", node, request)

    def client_timer(self, client: SimClient, delay: int, request: int, attempt: int) -> None:
        """Wake ``client`` about ``request``/``attempt`` after ``delay`` steps."""
        self.schedule(delay, "ctimer", client.id, request, attempt)

    def client_wake(self, client: SimClient, delay: int) -> None:
        """Let ``client`` start its next operation after ``delay`` steps."""
        self.schedule(delay, "cwake", client.id)

    def _reply(self, request: ClientRequest, kind: str, result: Any = None,
               hint: str = "") -> None:
        reply = ClientReply(request.client, request.request, request.attempt, kind, result,
                            hint)
        if self.client_drop_rate and self.rng.random() < self.client_drop_rate:
            return
        self.schedule(self.rng.randint(1, self.client_delay_steps_max), "crep", reply)

    # -- the server side -----------------------------------------------------------------

    def _on_creq(self, name: str, request: ClientRequest) -> None:
        # Reads go through ReadIndex on any node (followers ask the leader); writes are
        # proposed only by the leader, others redirect with their leader hint.
        node = self.nodes[name]
        if not node.alive:
            return
        core = node.core
        if request.f == "get":
            ctx = msgpack.packb([request.client, request.request, request.attempt])
            try:
                core.read_index(ctx)
            except ProposalDropped as dropped:
                self._reply(request, "redirect", dropped.reason, hint=core.lead)
                return
            finally:
                self._after_input(node)
            node.pending_reads[ctx] = request
            return
        if core.role != Role.Leader:
            self._reply(request, "redirect", "not-leader", hint=core.lead)
            return
        data = encode_batch([{"c": request.client, "r": request.request, "f": request.f,
                              "k": request.key, "v": request.value}])
        try:
            core.propose(data)
        except ProposalDropped as dropped:
            self._reply(request, "dropped", dropped.reason, hint=core.lead)
            return
        finally:
            self._after_input(node)
        node.pending_writes[(request.client, request.request)] = request.attempt
        self.stats["proposals"] += 1

    def get(self, name: str, key: str) -> ScriptRead:
        """Read ``key`` at node ``name`` as a client would (ReadIndex, then the value once
        applied); the request reaches the node at once. Run the cluster until
        ``.done``."""
        self._script_requests += 1
        read = ScriptRead(name, key)
        self._script_reads[self._script_requests] = read
        self._on_creq(name, ClientRequest(SCRIPT_CLIENT, self._script_requests, 1, "get",
                                          key, None))
        return read

    def _on_crep(self, reply: ClientReply) -> None:
        if reply.client == SCRIPT_CLIENT:
            read = self._script_reads.pop(reply.request, None)
            if read is not None:
                read.done, read.kind, read.value = True, reply.kind, reply.result
            return
        self.clients[reply.client].on_reply(reply)

    def _on_ctimer(self, client: int, request: int, attempt: int) -> None:
        self.clients[client].on_timer(request, attempt)

    def _on_cwake(self, client: int) -> None:
        self.clients[client].start_next()

    def _serve_reads(self, node: SimNode) -> None:
        if not node.waiting_reads:
            return
        still = []
        for index, request in node.waiting_reads:
            if index <= node.applied:
                self._reply(request, "ok", node.kv.get(request.key))
            else:
                still.append((index, request))
        node.waiting_reads = still


    def _answer_write(self, node: SimNode, client: int, request: int, result: Any) -> None:
        """An applied command's result: answer the client if this node proposed it."""
        attempt = node.pending_writes.pop((client, request), None)
        if attempt is not None and result is not None:
            self._reply(ClientRequest(client, request, attempt, "", "", None), "ok", result)


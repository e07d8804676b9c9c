"""Test helpers for kvraft.client: an in-memory backend and a connected protocol."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from kvraft.client.backend import IClientBackend
from kvraft.client.server import ClientFactory, ClientLimits, ClientProtocol
from kvraft.results import OK, CommandError

RAFT_INFO = {
    "raft_node_id": "n1",
    "raft_role": "leader",
    "raft_term": 7,
    "raft_leader_id": "n1",
    "raft_commit_index": 42,
    "raft_applied_index": 41,
    "raft_members": "n1,n2,n3",
}


@dataclass
class Call:
    """One backend call the fake recorded."""

    kind: str  # "write", "read" or "admin"
    command: list
    linearizable: bool | None
    deferred: Deferred = field(repr=False)

    def answer(self, result: object) -> None:
        self.deferred.callback(result)

    def fail(self, error: BaseException) -> None:
        self.deferred.errback(error)


@implementer(IClientBackend)
class FakeBackend:
    """A single-node, in-memory backend with real (simple) string semantics.

    ``manual=True`` leaves every Deferred unfired until the test answers its ``Call``:
    that is how tests complete requests out of order.
    """

    node_id = "n1"

    def __init__(self, manual: bool = False) -> None:
        self.manual = manual
        self.data: dict[bytes, bytes] = {}
        self.calls: list[Call] = []
        self.info_fields = dict(RAFT_INFO)

    def write(self, command: list) -> Deferred:
        return self._call("write", command, None)

    def read(self, command: list, linearizable: bool) -> Deferred:
        return self._call("read", command, linearizable)

    def admin(self, command: list) -> Deferred:
        return self._call("admin", command, None)

    def info(self) -> dict:
        return {**self.info_fields, "keys": len(self.data)}

    def _call(self, kind: str, command: list, linearizable: bool | None) -> Deferred:
        d = Deferred()
        self.calls.append(Call(kind, command, linearizable, d))
        if not self.manual:
            d.callback(self.execute(command))
        return d

    def execute(self, command: list) -> object:
        """Apply ``command`` (a normalized command) to ``self.data``."""
        name, args, data = command[0], command[1:], self.data
        if name == b"GET":
            return data.get(args[0])
        if name == b"SET":
            old = data.get(args[0])
            options = args[2:]
            if (b"NX" in options and old is not None) or (b"XX" in options and old is None):
                return old if b"GET" in options else None
            if b"IFEQ" in options and old != options[options.index(b"IFEQ") + 1]:
                return old if b"GET" in options else None
            data[args[0]] = args[1]
            return old if b"GET" in options else OK
        if name == b"SETNX":
            if args[0] in data:
                return 0
            data[args[0]] = args[1]
            return 1
        if name == b"DEL":
            return sum(data.pop(k, None) is not None for k in args)
        if name == b"EXISTS":
            return sum(k in data for k in args)
        if name == b"MGET":
            return [data.get(k) for k in args]
        if name == b"MSET":
            data.update(zip(args[::2], args[1::2], strict=True))
            return OK
        if name == b"INCRBY":
            try:
                value = int(data.get(args[0], b"0")) + int(args[1])
            except ValueError:
                return CommandError("ERR value is not an integer or out of range")
            data[args[0]] = b"%d" % value
            return value
        if name == b"APPEND":
            data[args[0]] = data.get(args[0], b"") + args[1]
            return len(data[args[0]])
        if name == b"STRLEN":
            return len(data.get(args[0], b""))
        if name == b"KEYS":
            pattern = args[0].decode("latin-1")
            return sorted(k for k in data if fnmatch.fnmatchcase(k.decode("latin-1"), pattern))
        if name == b"DBSIZE":
            return len(data)
        if name == b"FLUSHALL":
            data.clear()
            return OK
        if name == b"RAFT.MEMBERS":
            return [b"n1", b"n2", b"n3"]
        return CommandError(f"ERR the fake backend has no {name.decode()}")


class CountingTransport(StringTransport):
    """A StringTransport that counts writes and pause/resume calls."""

    def __init__(self) -> None:
        super().__init__(peerAddress=None)
        self.writes = 0
        self.pauses = 0
        self.resumes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        super().write(data)

    def pauseProducing(self) -> None:
        self.pauses += 1
        super().pauseProducing()

    def resumeProducing(self) -> None:
        self.resumes += 1
        super().resumeProducing()


def connect(factory: ClientFactory) -> tuple[ClientProtocol, CountingTransport]:
    """A new connection of ``factory`` over a CountingTransport."""
    from twisted.internet.address import IPv4Address
    protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
    transport = CountingTransport()
    transport.peerAddr = IPv4Address("TCP", "127.0.0.1", 50000 + len(factory.connections))
    transport.hostAddr = IPv4Address("TCP", "127.0.0.1", 6379)
    protocol.makeConnection(transport)
    return protocol, transport


def make_factory(backend: FakeBackend | None = None, **limits) -> ClientFactory:
    """A ClientFactory over ``backend`` (a new FakeBackend by default) and a Clock."""
    return ClientFactory(backend if backend is not None else FakeBackend(),
                         ClientLimits(**limits), clock=Clock())


def exchange(factory: ClientFactory, request: bytes) -> bytes:
    """Send ``request`` on a new connection; what came back."""
    protocol, transport = connect(factory)
    protocol.dataReceived(request)
    return transport.value()


class Grouped(list):
    """The commands of one ``submit_reads``/``submit_writes`` call, in a queue item."""


class SubmitBackend(FakeBackend):
    """A FakeBackend that also offers the Deferred-free ``submit_read``/``submit_write``
    of ``kvraft.node.RaftNodeService``: requests queue until ``answer_all`` runs them and
    calls each ``done(token, result)``, as the node's Ready loop does. ``at_once=True``
    answers inside the submit call instead (as the node does when it refuses a request
    or serves a stale read).

    ``grouped=True`` offers ``submit_reads``/``submit_writes`` too (a pipeline's
    commands in one call, one answer); the default is ``grouped_default``, which the
    fast-path tests flip to run every test both ways."""

    grouped_default = False

    def __init__(self, at_once: bool = False, grouped: bool | None = None) -> None:
        super().__init__()
        self.at_once = at_once
        self.queue: list[tuple[str, list, object, object]] = []  # not yet answered
        self.submitted: list[tuple[str, list]] = []  # every command, oldest first
        self.group_sizes: list[int] = []  # commands per submit_reads/submit_writes call
        if self.grouped_default if grouped is None else grouped:
            self.submit_reads = self._submit_reads
            self.submit_writes = self._submit_writes

    def submit_read(self, command: list, linearizable: bool, done, token) -> None:
        self._submit("read", command, done, token)

    def submit_write(self, command: list, done, token) -> None:
        self._submit("write", command, done, token)

    def _submit_reads(self, commands: list, linearizable: bool, done, token) -> None:
        self.group_sizes.append(len(commands))
        self._submit("read", Grouped(commands), done, token)

    def _submit_writes(self, commands: list, done, token) -> None:
        self.group_sizes.append(len(commands))
        self._submit("write", Grouped(commands), done, token)

    def _submit(self, kind: str, command: list, done, token) -> None:
        if type(command) is Grouped:
            self.submitted += [(kind, one) for one in command]
        else:
            self.submitted.append((kind, command))
        self.queue.append((kind, command, done, token))
        if self.at_once:
            self.answer_all()

    def kinds(self) -> list[str]:
        """The kinds of every command submitted so far, oldest first."""
        return [kind for kind, _ in self.submitted]

    def queued(self) -> int:
        """Commands submitted and not yet answered."""
        return sum(len(c) if type(c) is Grouped else 1 for _, c, _, _ in self.queue)

    def answer_all(self, result: object = None) -> None:
        """Answer every queued request: with ``result`` if given, else by running it (a
        group gets a list of results, or an exception ``result`` once, as the node
        answers a refused group)."""
        queue, self.queue = self.queue, []
        for _, command, done, token in queue:
            if type(command) is not Grouped:
                done(token, self.execute(command) if result is None else result)
            elif result is None:
                done(token, [self.execute(one) for one in command])
            elif isinstance(result, Exception):
                done(token, result)
            else:
                done(token, [result] * len(command))

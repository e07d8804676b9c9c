"""The client port: ``ClientFactory`` builds one ``ClientProtocol`` per connection.

A connection parses requests (``kvraft.client.resp``), checks them
(``kvraft.client.commands``), answers connection commands itself
(``kvraft.client.local``) and hands the rest to the node (``IClientBackend``). Replies
go out in request order although the backend completes requests in any order.

Replies are grouped in *bursts*: the commands parsed from one piece of input. A burst
is written with one ``transport.write`` once all its replies are ready (several ready
bursts go out in one write too), so a pipeline of 16 commands read at once costs one
write, not 16.

Speed: ``_pump`` is the general engine; two fast paths skip it for what clients do
most, and hand over to it at the first thing unusual (a held command, a pause, a limit
reached, a QUIT, input the parser holds). A read of whole multibulk commands is
dispatched straight from ``RespParser.take_whole``; a reply that completes the head
burst while nothing else waits is written by ``_complete`` itself.

Flow control (why it pauses rather than errors): a connection holds at most
``pending_requests_max`` parsed-but-unanswered requests and ``pending_bytes_max`` bytes
of their arguments and replies. At the limit it stops reading
(``transport.pauseProducing()``): the kernel's socket buffers fill and TCP slows the
client down, which is what a deep but legitimate pipeline (``redis-benchmark -P 1000``)
needs; an error would break such clients. Reading resumes as replies are written. The
connection is also the producer for its own transport: when the client does not read
its replies, the transport pauses us and we stop reading requests; requests already
running still complete, and if their replies pile up past ``output_bytes_max`` the
connection is dropped (Redis' client-output-buffer-limit). So per connection the node
holds about ``pending_bytes_max`` of requests, ``output_bytes_max`` of unread replies,
and the replies of at most ``pending_requests_max`` requests waiting for an earlier one
to complete (in-order delivery).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from itertools import chain

from twisted.internet import tcp
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from kvraft import results
from kvraft.client import local
from kvraft.client.backend import AllowAll, IClientACL, IClientBackend
from kvraft.client.commands import Route, resolve, resolve_many
from kvraft.client.errors import BackendError, InvalidCommandError, ProtocolError
from kvraft.client.limits import ClientLimits, ClientStats
from kvraft.client.resp import OK, RespParser, encode_error, encode_items, encode_reply

__all__ = ["ClientFactory", "ClientLimits", "ClientProtocol", "ClientStats"]

log = Logger(namespace="kvraft.client")

MAX_CLIENTS_REPLY = b"-ERR max number of clients reached\r\n"
REPLY_STEP_ITEMS = 16384
"""An array reply longer than this (KEYS of a big key space) is encoded this many
elements per reactor turn. Encoding a million keys at once blocked the node for over a
second: a leader that long without heartbeats lost its leadership to an election."""
_LOCAL, _READ, _WRITE = Route.LOCAL, Route.READ, Route.WRITE
_OK_RESULT = results.OK
INTERNAL_ERROR = (
    "ERR internal error: the node failed to run this command (logged for the operator); "
    "retry, and report it if it persists")


class _Burst:
    """The replies of the requests parsed from one piece of input, in request order."""

    __slots__ = ("replies", "pending", "bytes", "close")

    def __init__(self) -> None:
        self.replies: list[bytes | None] = []
        self.pending = 0  # replies still awaited from the backend
        self.bytes = 0  # request and reply bytes held, for pending_bytes_max
        self.close = False  # the last reply closes the connection


class _Group:
    """Requests of one burst handed to the backend together (``submit_writes`` /
    ``submit_reads``): all writes, or all reads of one kind (linearizable or not)."""

    __slots__ = ("burst", "route", "linearizable", "indexes", "commands")

    def __init__(self, burst: _Burst, route: Route | None, linearizable: bool) -> None:
        self.burst = burst
        self.route = route
        self.linearizable = linearizable
        self.indexes: list[int] = []  # their places in burst.replies
        self.commands: list[list[bytes]] = []


@implementer(IPushProducer)
class ClientProtocol(Protocol):
    """One client connection. Built by ``ClientFactory``; the node may set
    ``identity`` (the TLS client certificate's CN) before the first command, or give the
    factory an ``identify`` hook that does it."""

    def __init__(self, factory: ClientFactory, client_id: int) -> None:
        self.factory = factory
        self.client_id = client_id
        """Unique per listener (CLIENT ID)."""
        self.identity: str | None = None
        """Who the client is (TLS client certificate CN), for the ACL."""
        self.name = b""
        self.lib_name = b""
        self.lib_ver = b""
        self.readonly = False
        """READONLY: reads may be served from this node's possibly stale state."""
        self.protocol_version = 2
        """RESP version of the replies: 2, or 3 after HELLO 3."""
        self.last_command = b"NULL"
        limits = factory.limits
        self._limits = limits
        self._parser = RespParser(limits.line_bytes_max, limits.bulk_bytes_max,
                                  limits.args_max, limits.request_bytes_max)
        self._clock = factory.clock
        self._seconds = factory.clock.seconds
        self.created_s = self._seconds()
        self.active_s = self.created_s
        """When the client last sent something or was last answered."""
        self._answered_s = 0.0  # when replies were last written, until the next request
        self._bursts: deque[_Burst] = deque()
        self._unwritten = 0  # requests parsed and not yet written back
        self._unwritten_bytes = 0
        self._awaiting = 0  # requests waiting for the backend
        self._phase: Route | None = None  # READ or WRITE: the kind now awaited
        self._held: list[list[bytes]] = []  # parsed, waiting for pending_bytes_max room
        self._pumping = False
        self._reading_paused = False
        self._output_paused = False
        self._paused_output_bytes = 0  # written since the transport paused us
        self._closing = False  # the last reply is queued: read and run nothing more
        self._lost = False
        self._hung_up = False  # we called loseConnection
        self._identified = False
        self._idle_call = None
        # A backend may offer submit_read/submit_write: answers without a Deferred per
        # command (kvraft.node.RaftNodeService.submit_write).
        self._done = self._on_done  # bound once: one fewer object per request
        backend = factory.backend
        self._submit_read = getattr(backend, "submit_read", None)
        self._submit_write = getattr(backend, "submit_write", None)
        # ... and submit_reads/submit_writes: a pipeline's commands in one call, one
        # answer (both or neither; only with the single-command ones).
        self._submit_reads = getattr(backend, "submit_reads", None)
        self._submit_writes = getattr(backend, "submit_writes", None)
        self._grouping = (self._submit_reads is not None and self._submit_writes is not None
                          and self._submit_read is not None and self._submit_write is not None)
        # ... and client_returned: told when a client answered sends its next request.
        self._client_returned = getattr(backend, "client_returned", None)
        self._group: _Group | None = None  # collecting while _run dispatches a burst

    # -- connection events ---------------------------------------------------------------

    def connectionMade(self) -> None:
        self.factory.connection_made(self)
        self.transport.registerProducer(self, True)
        if _can_send_now(self.transport):
            self._write = self._send_now
        if self._limits.idle_timeout_s > 0:
            self._idle_call = self._clock.callLater(self._limits.idle_timeout_s,
                                                    self._check_idle)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._lost = True
        self._bursts.clear()
        if self._idle_call is not None and self._idle_call.active():
            self._idle_call.cancel()
        self._idle_call = None
        self.factory.connection_lost(self)

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        if self._answered_s:
            if not self._bursts and self._client_returned is not None:
                self._client_returned(self._answered_s)  # nothing outstanding: it is back
            self._answered_s = 0.0
        self.active_s = self._seconds()
        if not self._identified:
            self._identify()
        if not (self._held or self._pumping or self._output_paused or self._reading_paused
                or self._lost):
            # Fast path: whole commands with nothing else to wait for (what clients
            # send most) skip the parser's buffering and the general pump.
            limits = self._limits
            room = (limits.pending_requests_max - self._unwritten
                    if self._unwritten_bytes < limits.pending_bytes_max else 0)
            commands = self._parser.take_whole(data, room)
            if commands is not None:
                self._pumping = True  # a backend may answer at once: _complete waits
                try:
                    burst = self._run(commands)
                finally:
                    self._pumping = False
                if (not burst.pending or self._held or self._closing
                        or self._unwritten >= limits.pending_requests_max
                        or self._unwritten_bytes >= limits.pending_bytes_max):
                    self._pump()  # replies to write, or reading to pause
                return
        self._parser.feed(data)
        self._pump()

    # -- IPushProducer: the transport tells us when its write buffer is full --------------

    def pauseProducing(self) -> None:
        """The client is not reading its replies: stop reading its requests."""
        self._output_paused = True
        self._update_reading()

    def resumeProducing(self) -> None:
        """The client caught up: carry on with buffered requests, then read again."""
        self._output_paused = False
        self._paused_output_bytes = 0
        self._pump()

    def stopProducing(self) -> None:
        """The transport is going away; ``connectionLost`` does the cleanup."""

    # -- the request pipeline ------------------------------------------------------------

    @property
    def resp3(self) -> bool:
        """Whether replies use RESP3 (the client sent HELLO 3)."""
        return self.protocol_version == 3

    @property
    def pending_requests(self) -> int:
        """Requests parsed and not yet answered on the wire."""
        return self._unwritten

    @property
    def buffered_bytes(self) -> int:
        """Bytes this connection holds: unparsed input, and the requests and replies not
        yet written."""
        return self._parser.buffered_bytes + self._unwritten_bytes

    def _room(self) -> int:
        if self._unwritten_bytes >= self._limits.pending_bytes_max:
            return 0
        return self._limits.pending_requests_max - self._unwritten

    def _pump(self) -> None:
        """Write what is ready, then parse and dispatch what the limits allow."""
        if self._pumping or self._lost:
            return  # the running pump picks up whatever changed
        self._pumping = True
        try:
            while True:
                self._flush()
                if self._closing or self._output_paused or self._lost:
                    break
                room = self._room()
                if room <= 0:
                    break
                commands, self._held = self._held, []
                if not commands:
                    try:
                        commands = self._parser.take(room)
                    except ProtocolError as e:
                        self._protocol_error(e)
                        continue
                    if not commands:
                        break
                self._run(commands)
                if self._held and self._awaiting:
                    break
        finally:
            self._pumping = False
        self._update_reading()

    def _run(self, commands: list[list[bytes]]) -> _Burst:
        """Dispatch ``commands`` as one new burst, up to the first that must wait (kept
        in ``_held``); the burst."""
        burst = _Burst()
        self._bursts.append(burst)
        if len(commands) == 1:
            if not self._dispatch(burst, commands[0]):
                self._held = commands  # behind a read/write boundary
            return burst
        if self._grouping and self._run_uniform(burst, commands):
            return burst
        bytes_max = self._limits.pending_bytes_max
        if self._grouping:
            self._group = _Group(burst, None, True)
        for i, args in enumerate(commands):
            if self._closing:
                break
            if i and self._unwritten_bytes >= bytes_max:
                self._held = commands[i:]  # parsed already; run when bytes drain
                break
            if not self._dispatch(burst, args):
                self._held = commands[i:]  # behind a read/write boundary
                break
        group, self._group = self._group, None
        if group is not None and group.commands:
            self._submit_group(group)
        return burst

    def _run_uniform(self, burst: _Burst, commands: list[list[bytes]]) -> bool:
        """Dispatch a pipeline of one read or write command (``resolve_many``) as one
        group, with one pass of checks instead of one per command; False (nothing done)
        when anything calls for ``_dispatch``'s command-by-command rules: another kind
        of command, an error, the ACL, a limit, a read/write boundary."""
        uniform = resolve_many(commands)
        if uniform is None:
            return False
        spec, normalized = uniform
        route = spec.route
        if route is not _WRITE and route is not _READ:
            return False
        size = sum(map(len, chain.from_iterable(commands)))
        if self._closing or self._unwritten_bytes + size >= self._limits.pending_bytes_max:
            return False
        factory = self.factory
        acl = factory.acl
        if type(acl) is not AllowAll and not acl.authorize(self.identity, spec.flags):
            return False
        if route is not self._phase:
            if self._awaiting:
                self._held = commands  # behind a read/write boundary
                return True
            self._phase = route
        count = len(commands)
        replies = burst.replies
        group = _Group(burst, route, not self.readonly)
        group.indexes = list(range(len(replies), len(replies) + count))
        group.commands = normalized
        replies += [None] * count
        burst.bytes += size
        burst.pending += count
        self._unwritten += count
        self._unwritten_bytes += size
        self._awaiting += count
        factory.stats.commands += count
        self.last_command = normalized[-1][0]
        self._submit_group(group)
        return True

    def _submit_group(self, group: _Group) -> None:
        """Hand a group to the backend: one call, one answer (``_on_group_done``)."""
        token = (group.burst, group.indexes, self.protocol_version == 3)
        if group.route is _READ:
            self._submit_reads(group.commands, group.linearizable, self._on_group_done, token)
        else:
            self._submit_writes(group.commands, self._on_group_done, token)

    def _update_reading(self) -> None:
        if self._lost or self._hung_up:
            return
        paused = self._closing or self._output_paused or self._room() <= 0
        if paused != self._reading_paused:
            self._reading_paused = paused
            if paused:
                self.transport.pauseProducing()
            else:
                self.transport.resumeProducing()

    def _flush(self) -> None:
        """Write every complete burst at the head, in one write."""
        bursts = self._bursts
        if not bursts or bursts[0].pending:
            return
        burst = bursts.popleft()
        parts = burst.replies
        self._unwritten -= len(parts)
        self._unwritten_bytes -= burst.bytes
        close = burst.close
        if not close and bursts and not bursts[0].pending:
            parts = list(parts)  # more complete bursts: gather them all
            while bursts and not bursts[0].pending:
                burst = bursts.popleft()
                parts += burst.replies
                self._unwritten -= len(burst.replies)
                self._unwritten_bytes -= burst.bytes
                if burst.close:
                    close = True
                    break
        if parts:
            data = parts[0] if len(parts) == 1 else b"".join(parts)
            self.active_s = self._answered_s = self._seconds()
            self._write(data)
            if self._output_paused:
                self._paused_output_bytes += len(data)
                if self._paused_output_bytes > self._limits.output_bytes_max:
                    self._output_overflow()
                    return
        if close:
            self._hang_up()

    def _write(self, data: bytes) -> None:
        self.transport.write(data)

    def _send_now(self, data: bytes) -> None:
        """Write to the socket at once when nothing is queued before ``data``: a reply
        then leaves in this reactor turn, without a writability poll and two epoll
        changes per reply (most of a small request's cost); what the kernel does not
        take is queued by the transport as usual."""
        transport = self.transport
        if (transport._tempDataBuffer or transport.offset != len(transport.dataBuffer)
                or not transport.connected or transport.disconnecting):
            transport.write(data)
            return
        try:
            sent = transport.socket.send(data)  # writeSomeData without its two calls
        except OSError:
            transport.write(data)  # would block, or broke: the transport finds out
            return
        if sent < len(data):
            transport.write(data[sent:])

    def _dispatch(self, burst: _Burst, args: list[bytes]) -> bool:
        """Run one command; False (nothing done) if it must wait for earlier requests.

        Session order: a connection's commands take effect in the order sent. Reads of
        one run share a ReadIndex round and writes of one run share a log entry, but a
        read waits until every earlier write of the connection is applied, and a write
        until every earlier read is answered (else a pipelined GET could miss the SET
        before it, or see the SET after it).
        """
        # Hot path (every command of a pipeline): enum members and the factory's parts
        # are read into locals once; the rules are those of the docstring.
        try:
            spec, command = resolve(args)
        except InvalidCommandError:
            spec = command = None
        if spec is not None:
            route = spec.route
            if route is not _LOCAL:
                kind = _READ if route is _READ else _WRITE
                if kind is not self._phase:
                    if self._awaiting:
                        return False
                    self._phase = kind
        replies = burst.replies
        index = len(replies)
        replies.append(None)
        size = sum(map(len, args))
        burst.bytes += size
        self._unwritten += 1
        self._unwritten_bytes += size
        factory = self.factory
        factory.stats.commands += 1
        try:
            if spec is None:
                spec, command = resolve(args)
            self.last_command = command[0]
            acl = factory.acl
            if type(acl) is not AllowAll and not acl.authorize(self.identity, spec.flags):
                raise InvalidCommandError(
                    f"NOPERM this user has no permissions to run the '{spec.name}' command")
            # route is spec.route: set above (a failed resolve raised just now)
            if route is _LOCAL:
                group = self._group
                if group is not None and group.commands:
                    # It may change the connection (HELLO 3, READONLY): what came
                    # before is submitted as it was.
                    self._submit_group(group)
                    self._group = _Group(burst, None, True)
                if spec.name == "quit":
                    data = local.OK
                    burst.close = self._closing = True
                else:
                    data = local.run(self, command)
            else:
                group = self._group
                if group is not None:
                    # A burst's reads (or writes) go to the backend together, in one
                    # call when _run ends or another kind of request comes.
                    if route is _WRITE or route is _READ:
                        linearizable = not self.readonly
                        if group.route is not route or group.linearizable is not linearizable:
                            if group.commands:
                                self._submit_group(group)
                                group = self._group = _Group(burst, route, linearizable)
                            else:
                                group.route, group.linearizable = route, linearizable
                        burst.pending += 1
                        self._awaiting += 1
                        group.indexes.append(index)
                        group.commands.append(command)
                        return True
                    if group.commands:  # an admin command: what came before goes first
                        self._submit_group(group)
                        self._group = _Group(burst, None, True)
                if route is _READ:
                    submit = self._submit_read
                    if submit is not None:
                        burst.pending += 1
                        self._awaiting += 1
                        submit(command, not self.readonly, self._done,
                               (burst, index, self.protocol_version == 3))
                        return True
                    result = factory.backend.read(command, not self.readonly)
                elif route is _WRITE:
                    submit = self._submit_write
                    if submit is not None:
                        burst.pending += 1
                        self._awaiting += 1
                        submit(command, self._done, (burst, index, self.protocol_version == 3))
                        return True
                    result = factory.backend.write(command)
                else:
                    result = factory.backend.admin(command)
                resp3 = self.protocol_version == 3
                if isinstance(result, Deferred):
                    burst.pending += 1
                    self._awaiting += 1
                    result.addCallbacks(self._on_result, self._on_failure,
                                        (burst, index, resp3), None, (burst, index))
                    return True
                data = self._encode(result, resp3)
        except InvalidCommandError as e:
            data = encode_error(str(e))
        except Exception as e:
            data = self._error_reply(e)
        burst.replies[index] = data
        burst.bytes += len(data)
        self._unwritten_bytes += len(data)
        return True

    def _on_done(self, token: tuple, result: object) -> None:
        """The backend answered a submitted command (a result, or a BackendError)."""
        burst, index, resp3 = token
        if type(result) is list and len(result) > REPLY_STEP_ITEMS:
            self._awaiting -= 1
            self._encode_in_steps(burst, index, result, resp3)
            return
        self._complete(burst, index, self._reply(result, resp3))

    def _on_group_done(self, token: tuple, results: object) -> None:
        """The backend answered a submitted group: a result per command, in order, or
        one BackendError for all of them."""
        burst, indexes, resp3 = token
        count = len(indexes)
        self._awaiting -= count
        if self._lost:
            return
        long: list[tuple[int, list]] = []  # (index, array) to encode in steps
        if isinstance(results, Exception):
            data = self._error_reply(results)
            replies = [data] * count
        elif results and results[0] is _OK_RESULT and results.count(_OK_RESULT) == count:
            replies = [OK] * count  # a pipeline of SETs
        else:
            reply = self._reply
            # A long array (KEYS) is left empty here, pending, for _encode_in_steps (no
            # reply is ever empty otherwise).
            replies = [b"" if type(result) is list and len(result) > REPLY_STEP_ITEMS
                       else reply(result, resp3) for result in results]
        if len(replies) != count:
            raise ValueError(f"{len(replies)} results for {count} commands (a backend bug)")
        if b"" in replies:
            long = [(index, result) for index, result, data
                    in zip(indexes, results, replies, strict=True) if not data]
        stored = burst.replies
        first = indexes[0]
        if indexes[-1] - first == count - 1:  # in a row (always, from _run_uniform)
            stored[first:first + count] = replies
        else:
            for index, data in zip(indexes, replies, strict=True):
                stored[index] = data
        size = sum(map(len, replies))
        burst.pending -= count - len(long)
        burst.bytes += size
        self._unwritten_bytes += size
        for index, items in long:
            self._encode_in_steps(burst, index, items, resp3)
        if not self._pumping:
            self._settled(burst)

    def _reply(self, result: object, resp3: bool) -> bytes:
        """The reply to a submitted command's result (a BackendError is an error)."""
        # The commonest answers (GET's value, SET's OK) are encoded here, calls saved.
        if type(result) is bytes:
            return b"$%d\r\n%s\r\n" % (len(result), result)
        if result is _OK_RESULT:
            return OK
        if isinstance(result, Exception):
            return self._error_reply(result)
        return self._encode(result, resp3)

    def _on_result(self, result: object, burst: _Burst, index: int, resp3: bool) -> None:
        if type(result) is list and len(result) > REPLY_STEP_ITEMS:
            self._awaiting -= 1
            self._encode_in_steps(burst, index, result, resp3)
            return
        self._complete(burst, index, self._encode(result, resp3))

    def _on_failure(self, failure: Failure, burst: _Burst, index: int) -> None:
        self._complete(burst, index, self._error_reply(failure.value, failure))

    def _encode_in_steps(self, burst: _Burst, index: int, items: list, resp3: bool) -> None:
        """Encode a long array reply ``REPLY_STEP_ITEMS`` elements per reactor turn,
        then store it as request ``index`` of ``burst`` (still pending meanwhile, so
        nothing after it is written first). ``_awaiting`` is already counted down: the
        backend has answered, and the connection's next writes need not wait for this."""
        parts = [b"*%d\r\n" % len(items)]
        step = REPLY_STEP_ITEMS

        def encode_from(start: int) -> None:
            if self._lost:
                return
            try:
                parts.append(encode_items(items[start:start + step], resp3))
            except Exception as e:
                self._fill(burst, index, self._error_reply(e))
                return
            if start + step < len(items):
                self._clock.callLater(0, encode_from, start + step)
            else:
                self._fill(burst, index, b"".join(parts))

        encode_from(0)

    def _complete(self, burst: _Burst, index: int, data: bytes) -> None:
        """Store the reply of request ``index`` of ``burst``; write what is ready."""
        self._awaiting -= 1
        self._fill(burst, index, data)

    def _fill(self, burst: _Burst, index: int, data: bytes) -> None:
        """``_complete`` once ``_awaiting`` is counted down."""
        if self._lost:
            return
        burst.replies[index] = data
        burst.pending -= 1
        size = len(data)
        burst.bytes += size
        self._unwritten_bytes += size
        if not self._pumping:  # else the running pump writes it
            self._settled(burst)

    def _settled(self, burst: _Burst) -> None:
        """Replies of ``burst`` arrived outside the pump: write what is ready, and run
        what waited for them."""
        if burst.pending:
            if self._held and not self._awaiting:
                self._pump()  # the held commands can run now
        elif self._reading_paused or self._held or self._closing or self._parser.ready:
            self._pump()  # writing makes room: carry on with what waits
        else:
            self._flush()  # nothing waits (reading is on, nothing held or parsed)
            if self._unwritten_bytes >= self._limits.pending_bytes_max:
                self._update_reading()  # replies of later bursts fill the limit

    def _encode(self, result: object, resp3: bool) -> bytes:
        try:
            return encode_reply(result, resp3)
        except Exception as e:
            return self._error_reply(e)

    def _error_reply(self, error: BaseException, failure: Failure | None = None) -> bytes:
        if isinstance(error, BackendError):
            return encode_error(error.reply_line())
        self.factory.stats.internal_errors += 1
        log.failure("client {client_id}: unexpected error serving {command!r}",
                    failure or Failure(error), client_id=self.client_id,
                    command=self.last_command)
        return encode_error(INTERNAL_ERROR)

    def _protocol_error(self, error: ProtocolError) -> None:
        """Answer the error after every earlier reply, then close: the stream position
        of the next command is unknown, as in Redis."""
        self.factory.stats.protocol_errors += 1
        log.debug("client {client_id}: {error}", client_id=self.client_id, error=error)
        burst = _Burst()
        burst.replies.append(encode_error(f"ERR {error}"))
        burst.close = self._closing = True
        self._bursts.append(burst)
        self._unwritten += 1

    # -- identity and idleness -----------------------------------------------------------

    def _identify(self) -> None:
        self._identified = True
        identify = self.factory.identify
        if identify is None or self.identity is not None:
            return
        try:
            self.identity = identify(self)
        except Exception:
            log.failure("client {client_id}: could not establish the client's identity",
                        client_id=self.client_id)

    def _check_idle(self) -> None:
        timeout = self._limits.idle_timeout_s
        idle_s = self._clock.seconds() - self.active_s
        if self._awaiting or idle_s < timeout:
            # Busy on our side, or active since: look again when it could be idle.
            self._idle_call = self._clock.callLater(max(timeout - idle_s, 0.001),
                                                    self._check_idle)
            return
        self._idle_call = None
        self.factory.stats.idle_closed += 1
        log.debug("client {client_id}: closing after {idle:.0f} s idle",
                  client_id=self.client_id, idle=idle_s)
        self._hang_up(abort=self._output_paused)  # unread replies would never drain

    def _output_overflow(self) -> None:
        self.factory.stats.output_overflows += 1
        log.warn("client {client_id}: dropped: {size} bytes of replies unread, more than "
                 "output_bytes_max ({max}); the client pipelines without reading",
                 client_id=self.client_id, size=self._paused_output_bytes,
                 max=self._limits.output_bytes_max)
        self._bursts.clear()
        self._hang_up(abort=True)

    def _hang_up(self, abort: bool = False) -> None:
        """Close after the replies written so far (or at once, with ``abort``)."""
        self._hung_up = self._closing = True
        # A transport waits for its registered producer before it closes: we are done.
        self.transport.unregisterProducer()
        if abort:
            self.transport.abortConnection()
        else:
            self.transport.loseConnection()


def _can_send_now(transport: object) -> bool:
    """Whether ``transport`` is a plain Twisted TCP connection whose buffer we can check
    (``ClientProtocol._send_now``); TLS and test transports buffer as usual."""
    return (isinstance(transport, tcp.Connection) and hasattr(transport, "_tempDataBuffer")
            and hasattr(transport, "offset") and hasattr(transport, "dataBuffer")
            and hasattr(transport, "socket"))


class _RefusedProtocol(Protocol):
    """Tells a client over ``connections_max`` why, then hangs up (as Redis does)."""

    def connectionMade(self) -> None:
        self.transport.write(MAX_CLIENTS_REPLY)
        self.transport.loseConnection()


class ClientFactory(Factory):
    """Builds the connections of one client listener.

    ``backend`` provides ``IClientBackend``; ``acl`` provides ``IClientACL`` (default:
    allow everything); ``clock`` is an ``IReactorTime`` (default: the global reactor);
    ``identify(protocol) -> str | None`` is called once per connection, when its first
    bytes arrive (TLS is established by then), to set ``protocol.identity``.
    """

    protocol = ClientProtocol

    def __init__(self, backend: IClientBackend, limits: ClientLimits | None = None,
                 acl: IClientACL | None = None, clock: object | None = None,
                 identify: Callable[[ClientProtocol], str | None] | None = None) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self.backend = backend
        self.limits = limits if limits is not None else ClientLimits()
        self.acl = acl if acl is not None else AllowAll()
        self.clock = clock
        self.identify = identify
        self.stats = ClientStats()
        self.connections: dict[int, ClientProtocol] = {}
        """Open connections by client id."""
        self.started_s = clock.seconds()
        self.process_id = os.getpid()
        self._last_id = 0

    def buildProtocol(self, addr: object) -> Protocol:
        if len(self.connections) >= self.limits.connections_max:
            self.stats.connections_refused += 1
            log.warn("refusing a client from {addr}: connections_max ({max}) reached",
                     addr=addr, max=self.limits.connections_max)
            refused = _RefusedProtocol()
            refused.factory = self
            return refused
        self._last_id += 1
        protocol = self.protocol(self, self._last_id)
        return protocol

    def connection_made(self, protocol: ClientProtocol) -> None:
        """Count an open connection (called by ``ClientProtocol.connectionMade``)."""
        self.stats.connections_accepted += 1
        self.connections[protocol.client_id] = protocol

    def connection_lost(self, protocol: ClientProtocol) -> None:
        """Forget a closed connection (called by ``ClientProtocol.connectionLost``)."""
        self.connections.pop(protocol.client_id, None)

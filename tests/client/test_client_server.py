"""kvraft.client.server: reply ordering and coalescing, backend routing, error mapping,
limits and flow control, idle timeout, connections_max, ACL and identity."""

from __future__ import annotations

import pytest
from client_support import FakeBackend, connect, make_factory
from twisted.internet.defer import succeed
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface import implementer
from zope.interface.verify import verifyObject

from kvraft.client.backend import AllowAll, IClientACL, IClientBackend
from kvraft.client.commands import CommandFlag
from kvraft.client.errors import (
    NoLeaderError,
    OutcomeUnknownError,
    OverloadedError,
    PermissionDenied,
)
from kvraft.client.resp import encode_command
from kvraft.client.server import ClientFactory, ClientLimits
from kvraft.results import OK


def gets(count: int) -> bytes:
    return b"".join(encode_command([b"GET", b"k%d" % i]) for i in range(count))


def test_the_fakes_and_the_protocol_provide_their_interfaces():
    verifyObject(IClientBackend, FakeBackend())
    verifyObject(IClientACL, AllowAll())
    protocol, _ = connect(make_factory())
    verifyObject(IPushProducer, protocol)


# -- routing -----------------------------------------------------------------------------


def test_commands_reach_the_right_backend_call():
    backend = FakeBackend()
    protocol, transport = connect(make_factory(backend))
    protocol.dataReceived(b"SET a 1\r\nGET a\r\nINCR n\r\nFLUSHALL\r\nRAFT.MEMBERS\r\nDBSIZE\r\n")
    assert [(c.kind, c.command, c.linearizable) for c in backend.calls] == [
        ("write", [b"SET", b"a", b"1"], None),
        ("read", [b"GET", b"a"], True),
        ("write", [b"INCRBY", b"n", b"1"], None),
        ("admin", [b"FLUSHALL"], None),
        ("admin", [b"RAFT.MEMBERS"], None),
        ("read", [b"DBSIZE"], True),
    ]
    assert transport.value() == (
        b"+OK\r\n$1\r\n1\r\n:1\r\n+OK\r\n*3\r\n$2\r\nn1\r\n$2\r\nn2\r\n$2\r\nn3\r\n:0\r\n")


def test_a_backend_answering_plain_values_works_too():
    class Plain(FakeBackend):
        def read(self, command, linearizable):
            return self.execute(command)

    protocol, transport = connect(make_factory(Plain()))
    protocol.dataReceived(b"GET nothing\r\n")
    assert transport.value() == b"$-1\r\n"


# -- ordering and coalescing -------------------------------------------------------------


def test_a_synchronous_burst_of_16_is_answered_with_one_write():
    protocol, transport = connect(make_factory())
    burst = b"".join(encode_command([b"SET", b"k%d" % i, b"v"]) for i in range(16))
    protocol.dataReceived(burst)
    assert transport.value() == b"+OK\r\n" * 16
    assert transport.writes == 1


def test_replies_keep_request_order_when_the_backend_answers_out_of_order():
    backend = FakeBackend(manual=True)
    protocol, transport = connect(make_factory(backend))
    protocol.dataReceived(b"PING\r\n" + gets(16) + b"ECHO end\r\n")
    assert len(backend.calls) == 16
    for call in reversed(backend.calls[1:]):
        call.answer(call.command[1])
        assert transport.value() == b""  # the head of the line is still waiting
    backend.calls[0].answer(b"first")
    expected = b"+PONG\r\n$5\r\nfirst\r\n" + b"".join(
        b"$%d\r\nk%d\r\n" % (len(b"k%d" % i), i) for i in range(1, 16)) + b"$3\r\nend\r\n"
    assert transport.value() == expected
    assert transport.writes == 1
    assert protocol.pending_requests == 0


def test_a_later_burst_waits_for_an_earlier_one_and_both_go_out_together():
    backend = FakeBackend(manual=True)
    protocol, transport = connect(make_factory(backend))
    protocol.dataReceived(gets(2))
    protocol.dataReceived(b"PING\r\n")  # complete at once, but behind the GETs
    backend.calls[0].answer(b"a")
    assert transport.value() == b""  # its burst is not complete yet
    backend.calls[1].answer(b"b")
    assert transport.value() == b"$1\r\na\r\n$1\r\nb\r\n+PONG\r\n"
    assert transport.writes == 1


def test_a_completed_burst_is_written_while_a_later_one_still_waits():
    backend = FakeBackend(manual=True)
    protocol, transport = connect(make_factory(backend))
    protocol.dataReceived(gets(1))
    protocol.dataReceived(gets(1))
    backend.calls[0].answer(b"x")
    assert transport.value() == b"$1\r\nx\r\n"


def test_a_reply_arriving_after_the_connection_closed_is_dropped():
    backend = FakeBackend(manual=True)
    factory = make_factory(backend)
    protocol, transport = connect(factory)
    protocol.dataReceived(gets(1))
    protocol.connectionLost(Failure(ConnectionError("gone")))
    backend.calls[0].answer(b"late")
    assert transport.value() == b""
    assert factory.connections == {}


# -- error mapping -----------------------------------------------------------------------


@pytest.mark.parametrize(("error", "reply"), [
    (NoLeaderError(),
     b"-CLUSTERDOWN no leader: the cluster is electing a leader; retry shortly\r\n"),
    (NoLeaderError("the node is shutting down"), b"-CLUSTERDOWN the node is shutting down\r\n"),
    (OutcomeUnknownError(), b"-TIMEOUT outcome unknown: the command may or may not have "
                            b"taken effect; read the key before retrying\r\n"),
    (OverloadedError(), b"-ERR server busy: too many requests in flight; retry with "
                        b"backoff\r\n"),
    (OverloadedError("4096 writes queued"), b"-ERR server busy: 4096 writes queued\r\n"),
    (PermissionDenied("writes are disabled on this node"),
     b"-NOPERM writes are disabled on this node\r\n"),
])
def test_backend_failures_become_redis_errors(error, reply):
    backend = FakeBackend(manual=True)
    factory = make_factory(backend)
    protocol, transport = connect(factory)
    protocol.dataReceived(b"SET k v\r\nPING\r\n")
    backend.calls[0].fail(error)
    assert transport.value() == reply + b"+PONG\r\n"
    assert not transport.disconnecting
    assert factory.stats.internal_errors == 0


def test_an_unexpected_backend_error_is_logged_answered_and_survived():
    class Broken(FakeBackend):
        def write(self, command):
            raise ZeroDivisionError("bug")

        def read(self, command, linearizable):
            return succeed("a str is not a result")

    factory = make_factory(Broken())
    protocol, transport = connect(factory)
    protocol.dataReceived(b"SET k v\r\nGET k\r\nPING\r\n")
    error = b"-ERR internal error: the node failed to run this command (logged for the " \
            b"operator); retry, and report it if it persists\r\n"
    assert transport.value() == error + error + b"+PONG\r\n"
    assert factory.stats.internal_errors == 2
    assert not transport.disconnecting


def test_command_errors_keep_the_connection_open():
    protocol, transport = connect(make_factory())
    protocol.dataReceived(b"NOSUCH\r\nGET\r\nPING\r\n")
    assert transport.value().endswith(b"+PONG\r\n")
    assert transport.value().count(b"-ERR") == 2
    assert not transport.disconnecting


# -- bad input: error then close ---------------------------------------------------------


def test_a_protocol_error_is_answered_after_earlier_replies_then_the_connection_closes():
    backend = FakeBackend(manual=True)
    factory = make_factory(backend)
    protocol, transport = connect(factory)
    protocol.dataReceived(gets(1) + b"PING\r\n*x\r\nPING\r\n")
    assert transport.value() == b""
    assert transport.producerState == "paused"  # nothing more is read
    backend.calls[0].answer(b"v")
    assert transport.value() == (
        b"$1\r\nv\r\n+PONG\r\n-ERR Protocol error: invalid multibulk length\r\n")
    assert transport.disconnecting
    assert factory.stats.protocol_errors == 1
    protocol.dataReceived(b"PING\r\n")
    assert transport.value().endswith(b"length\r\n")


@pytest.mark.parametrize(("data", "message"), [
    (b"*1\r\n$2000000000\r\n", b"invalid bulk length 2000000000: larger than bulk_bytes_max"),
    (b"*70000\r\n", b"invalid multibulk length 70000: more than args_max (65536)"),
    (b"x" * (64 * 1024 + 2), b"too big inline request (line_bytes_max is 65536 bytes)"),
    # a TLS ClientHello sent to a plaintext port, and then some
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)) * 300,
     b"unbalanced quotes"),
])
def test_oversized_or_binary_junk_is_refused_without_buffering_it(data, message):
    protocol, transport = connect(make_factory())
    protocol.dataReceived(data)
    last_reply = transport.value().rstrip(b"\r\n").rsplit(b"\r\n", 1)[-1]
    assert last_reply.startswith(b"-ERR Protocol error: ")
    assert message in last_reply
    assert transport.disconnecting
    assert protocol.buffered_bytes == 0


def test_quit_answers_ok_and_closes_ignoring_later_commands():
    protocol, transport = connect(make_factory())
    assert transport.producer is protocol
    protocol.dataReceived(b"PING\r\nQUIT\r\nPING\r\n")
    assert transport.value() == b"+PONG\r\n+OK\r\n"
    assert transport.disconnecting
    # A TCP transport would not close while a producer is registered.
    assert transport.producer is None


# -- flow control ------------------------------------------------------------------------


def test_pending_requests_max_pauses_reading_until_replies_drain():
    backend = FakeBackend(manual=True)
    protocol, transport = connect(make_factory(backend, pending_requests_max=4))
    protocol.dataReceived(gets(10))
    assert len(backend.calls) == 4
    assert transport.producerState == "paused"
    assert protocol.pending_requests == 4
    for call in backend.calls[:4]:
        call.answer(b"x")
    # The next 4 come from the buffered input, without any new read.
    assert len(backend.calls) == 8
    assert transport.producerState == "paused"
    for call in backend.calls[4:8]:
        call.answer(b"x")
    assert len(backend.calls) == 10
    assert transport.producerState == "producing"  # the last 2 fit: read again
    for call in backend.calls[8:]:
        call.answer(b"x")
    assert transport.value() == b"$1\r\nx\r\n" * 10
    assert (transport.pauses, transport.resumes) == (1, 1)


def test_pending_bytes_max_pauses_reading_too():
    backend = FakeBackend(manual=True)
    protocol, transport = connect(make_factory(backend, pending_bytes_max=200))
    protocol.dataReceived(b"".join(encode_command([b"SET", b"k", b"v" * 90]) for _ in range(5)))
    assert len(backend.calls) == 3  # 94 + 94 bytes < 200: a third is still admitted
    assert transport.producerState == "paused"
    for call in backend.calls:
        call.answer(OK)
    assert len(backend.calls) == 5


def test_a_client_that_does_not_read_its_replies_is_not_read_either():
    backend = FakeBackend()
    protocol, transport = connect(make_factory(backend))
    protocol.pauseProducing()  # what the transport does when its write buffer is full
    assert transport.producerState == "paused"
    protocol.dataReceived(gets(3))  # a read that was already under way
    assert backend.calls == []
    protocol.resumeProducing()
    assert len(backend.calls) == 3
    assert transport.producerState == "producing"
    assert transport.value() == b"$-1\r\n" * 3


def test_replies_piling_up_unread_past_output_bytes_max_drop_the_connection():
    backend = FakeBackend(manual=True)
    factory = make_factory(backend, output_bytes_max=1000)
    protocol, transport = connect(factory)
    protocol.dataReceived(gets(3))
    protocol.pauseProducing()  # the client stopped reading
    backend.calls[0].answer(b"x" * 600)
    backend.calls[1].answer(b"x" * 300)
    assert not transport.disconnecting  # 913 bytes written while paused
    backend.calls[2].answer(b"x" * 100)
    assert transport.disconnected  # aborted: its replies would never drain
    assert factory.stats.output_overflows == 1


def test_a_client_that_catches_up_starts_a_fresh_output_count():
    backend = FakeBackend(manual=True)
    protocol, transport = connect(make_factory(backend, output_bytes_max=1000))
    protocol.dataReceived(gets(1))
    protocol.dataReceived(gets(1))  # a second burst, written on its own
    protocol.pauseProducing()
    backend.calls[0].answer(b"x" * 900)
    protocol.resumeProducing()  # the transport drained its buffer
    protocol.pauseProducing()
    backend.calls[1].answer(b"x" * 900)
    assert not transport.disconnecting
    assert transport.value().count(b"x" * 900) == 2


# -- idle timeout ------------------------------------------------------------------------


def test_idle_connections_are_closed_after_idle_timeout_s():
    factory = make_factory(idle_timeout_s=10)
    protocol, transport = connect(factory)
    clock: Clock = factory.clock
    clock.advance(9)
    protocol.dataReceived(b"PING\r\n")
    clock.advance(9)
    assert not transport.disconnecting
    clock.advance(1.5)
    assert transport.disconnecting and not transport.disconnected  # closed gracefully
    assert factory.stats.idle_closed == 1


def test_a_connection_waiting_for_the_backend_is_not_idle():
    backend = FakeBackend(manual=True)
    factory = make_factory(backend, idle_timeout_s=10)
    protocol, transport = connect(factory)
    protocol.dataReceived(gets(1))
    factory.clock.advance(100)
    assert not transport.disconnecting
    backend.calls[0].answer(b"v")
    factory.clock.advance(9.9)
    assert not transport.disconnecting
    factory.clock.advance(0.2)
    assert transport.disconnecting


def test_an_idle_client_that_stopped_reading_is_aborted_not_drained():
    factory = make_factory(idle_timeout_s=10)
    protocol, transport = connect(factory)
    protocol.pauseProducing()  # its replies fill the write buffer and are never read
    factory.clock.advance(11)
    assert transport.disconnected  # abortConnection: loseConnection would wait forever


def test_idle_timeout_zero_never_closes_and_schedules_nothing():
    factory = make_factory(idle_timeout_s=0)
    protocol, transport = connect(factory)
    assert factory.clock.getDelayedCalls() == []
    factory.clock.advance(1e6)
    assert not transport.disconnecting


def test_closing_a_connection_cancels_its_idle_timer():
    factory = make_factory(idle_timeout_s=10)
    protocol, _ = connect(factory)
    protocol.connectionLost(Failure(ConnectionError("bye")))
    assert factory.clock.getDelayedCalls() == []


# -- connections_max ---------------------------------------------------------------------


def test_connections_over_connections_max_are_refused_with_a_redis_error():
    factory = make_factory(connections_max=2)
    first, _ = connect(factory)
    connect(factory)
    _, refused = connect(factory)
    assert refused.value() == b"-ERR max number of clients reached\r\n"
    assert refused.disconnecting
    assert factory.stats.connections_refused == 1
    first.connectionLost(Failure(ConnectionError("bye")))
    protocol, transport = connect(factory)
    protocol.dataReceived(b"PING\r\n")
    assert transport.value() == b"+PONG\r\n"


# -- ACL and identity --------------------------------------------------------------------


@implementer(IClientACL)
class ReadersCannotWrite:
    def __init__(self):
        self.asked = []

    def authorize(self, identity, flags):
        self.asked.append((identity, flags))
        return identity != "reader" or not flags & (CommandFlag.WRITE | CommandFlag.ADMIN)


def test_the_acl_decides_per_command_from_identity_and_flags():
    acl = ReadersCannotWrite()
    backend = FakeBackend()
    factory = ClientFactory(backend, acl=acl, clock=Clock(),
                            identify=lambda protocol: "reader")
    protocol, transport = connect(factory)
    protocol.dataReceived(b"GET k\r\nSET k v\r\nRAFT.REMOVE n2\r\nPING\r\n")
    assert transport.value() == (
        b"$-1\r\n-NOPERM this user has no permissions to run the 'set' command\r\n"
        b"-NOPERM this user has no permissions to run the 'raft.remove' command\r\n+PONG\r\n")
    assert [c.kind for c in backend.calls] == ["read"]
    assert acl.asked[0] == ("reader", CommandFlag.READ)
    assert acl.asked[3][1] == CommandFlag.LOCAL | CommandFlag.NO_LEADER


def test_identify_runs_once_and_an_identity_set_by_the_node_wins():
    seen = []

    def identify(protocol):
        seen.append(protocol.client_id)
        return "cn-from-cert"

    factory = ClientFactory(FakeBackend(), clock=Clock(), identify=identify)
    protocol, _ = connect(factory)
    protocol.dataReceived(b"PING\r\n")
    protocol.dataReceived(b"PING\r\n")
    assert protocol.identity == "cn-from-cert" and seen == [protocol.client_id]
    preset, _ = connect(factory)
    preset.identity = "set-by-node"
    preset.dataReceived(b"PING\r\n")
    assert preset.identity == "set-by-node" and len(seen) == 1


# -- limits ------------------------------------------------------------------------------


def test_client_limits_refuse_nonsense():
    with pytest.raises(ValueError, match="pending_requests_max must be at least 1"):
        ClientLimits(pending_requests_max=0)
    with pytest.raises(ValueError, match="idle_timeout_s"):
        ClientLimits(idle_timeout_s=-1)
    with pytest.raises(ValueError, match="request_bytes_max"):
        ClientLimits(bulk_bytes_max=100, request_bytes_max=10)


def test_client_limits_from_the_config_settings():
    from kvraft.config import ClientSettings
    settings = ClientSettings(line_bytes_max=1000, args_max=7, idle_timeout_s=30.0)
    limits = ClientLimits.from_settings(settings)
    assert (limits.line_bytes_max, limits.args_max, limits.idle_timeout_s) == (1000, 7, 30.0)
    assert limits.request_bytes_max == ClientLimits().request_bytes_max


# -- session order --------------------------------------------------------------------------


def test_a_pipelined_read_waits_for_the_writes_before_it():
    backend = FakeBackend(manual=True)
    protocol, transport = connect(make_factory(backend))
    protocol.dataReceived(b"SET a 1\r\nSET b 2\r\nGET a\r\nGET b\r\nSET a 3\r\n")
    # The two writes go out together; the reads wait for them.
    assert [c.kind for c in backend.calls] == ["write", "write"]
    backend.calls[1].answer(OK)
    assert [c.kind for c in backend.calls] == ["write", "write"]
    backend.calls[0].answer(OK)
    # Both reads go out together; the write after them waits for their answers.
    assert [c.kind for c in backend.calls] == ["write", "write", "read", "read"]
    backend.calls[2].answer(b"1")
    assert len(backend.calls) == 4
    backend.calls[3].answer(b"2")
    assert [c.kind for c in backend.calls][-1] == "write"
    backend.calls[4].answer(OK)
    assert transport.value() == b"+OK\r\n+OK\r\n$1\r\n1\r\n$1\r\n2\r\n+OK\r\n"


def test_connection_commands_do_not_wait_behind_a_boundary():
    backend = FakeBackend(manual=True)
    protocol, transport = connect(make_factory(backend))
    protocol.dataReceived(b"SET a 1\r\nPING\r\nGET a\r\n")
    assert [c.kind for c in backend.calls] == ["write"]
    backend.calls[0].answer(OK)
    assert [c.kind for c in backend.calls] == ["write", "read"]
    backend.calls[1].answer(b"1")
    assert transport.value() == b"+OK\r\n+PONG\r\n$1\r\n1\r\n"

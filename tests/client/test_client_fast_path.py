"""kvraft.client.server's fast paths (whole multibulk commands in one read, replies
through ``submit_read``/``submit_write``, a pipeline's commands through
``submit_reads``/``submit_writes`` in one call) behave exactly like the general pump:
order, session order, limits, backpressure, closing. Every test runs against a backend
with and without the grouped calls."""

from __future__ import annotations

import pytest
from client_support import FakeBackend, SubmitBackend, connect, make_factory

from kvraft.client.errors import NoLeaderError, OverloadedError
from kvraft.client.resp import encode_command
from kvraft.results import OK, CommandError


@pytest.fixture(autouse=True, params=["single", "grouped"])
def submit_mode(request, monkeypatch):
    monkeypatch.setattr(SubmitBackend, "grouped_default", request.param == "grouped")
    return request.param


def cmd(*args: bytes) -> bytes:
    return encode_command(list(args))


def gets(count: int) -> bytes:
    return b"".join(cmd(b"GET", b"k%d" % i) for i in range(count))


def test_one_command_per_read_is_answered_when_the_backend_answers():
    backend = SubmitBackend()
    protocol, transport = connect(make_factory(backend))
    protocol.dataReceived(cmd(b"SET", b"k", b"v"))
    assert backend.kinds() == ["write"]
    assert transport.value() == b""
    backend.answer_all()
    assert transport.value() == b"+OK\r\n"
    protocol.dataReceived(cmd(b"GET", b"k"))
    backend.answer_all()
    assert transport.value() == b"+OK\r\n$1\r\nv\r\n"
    assert transport.writes == 2
    assert protocol.pending_requests == 0 and protocol.buffered_bytes == 0


def test_a_synchronous_backend_across_a_read_write_boundary_in_one_read():
    # The Deferred backend answers inside the call: the burst must not be written
    # (and dropped from the queue) before the rest of the read is dispatched.
    protocol, transport = connect(make_factory(FakeBackend()))
    protocol.dataReceived(cmd(b"SET", b"a", b"1") + cmd(b"GET", b"a") + cmd(b"SET", b"a", b"2")
                          + cmd(b"GET", b"a"))
    assert transport.value() == b"+OK\r\n$1\r\n1\r\n+OK\r\n$1\r\n2\r\n"


@pytest.mark.parametrize("at_once", [False, True])
def test_submit_backends_keep_session_order_within_a_read(at_once):
    backend = SubmitBackend(at_once=at_once)
    protocol, transport = connect(make_factory(backend))
    protocol.dataReceived(cmd(b"SET", b"a", b"1") + cmd(b"SET", b"b", b"2") + cmd(b"GET", b"a")
                          + cmd(b"PING") + cmd(b"SET", b"a", b"3"))
    if not at_once:
        assert backend.kinds() == ["write", "write"]  # the read waits for both writes
        backend.answer_all()
        assert backend.kinds() == ["write", "write", "read"]
        backend.answer_all()
        assert backend.kinds()[-1] == "write"  # the write waited for the read's answer
        backend.answer_all()
    assert backend.kinds() == ["write", "write", "read", "write"]
    assert transport.value() == b"+OK\r\n+OK\r\n$1\r\n1\r\n+PONG\r\n+OK\r\n"
    assert protocol.pending_requests == 0


def test_replies_of_one_read_per_command_keep_request_order():
    backend = SubmitBackend()
    protocol, transport = connect(make_factory(backend))
    for i in range(3):
        protocol.dataReceived(cmd(b"ECHO", b"e%d" % i) if i == 1 else cmd(b"GET", b"k%d" % i))
    queue = backend.queue
    backend.queue = []
    queue[1][2](queue[1][3], b"second")
    assert transport.value() == b""  # the first GET still waits; ECHO is behind it
    queue[0][2](queue[0][3], b"first")
    assert transport.value() == b"$5\r\nfirst\r\n$2\r\ne1\r\n$6\r\nsecond\r\n"


def test_a_command_split_across_reads_still_parses_after_a_reply():
    backend = SubmitBackend()
    protocol, transport = connect(make_factory(backend))
    second = cmd(b"GET", b"key")
    protocol.dataReceived(cmd(b"SET", b"key", b"v") + second[:7])  # half of the GET
    backend.answer_all()
    assert transport.value() == b"+OK\r\n"
    protocol.dataReceived(second[7:])
    backend.answer_all()
    assert transport.value() == b"+OK\r\n$1\r\nv\r\n"


def test_pending_requests_max_pauses_reading_with_one_command_per_read():
    backend = SubmitBackend()
    protocol, transport = connect(make_factory(backend, pending_requests_max=2))
    protocol.dataReceived(cmd(b"GET", b"a"))
    assert transport.producerState == "producing"
    protocol.dataReceived(cmd(b"GET", b"b"))
    assert transport.producerState == "paused"
    protocol.dataReceived(cmd(b"GET", b"c"))  # read before the pause took effect: kept
    assert backend.queued() == 2
    backend.answer_all(b"x")
    assert backend.queued() == 1  # the kept command runs once there is room
    assert transport.producerState == "producing"
    backend.answer_all(b"y")
    assert transport.value() == b"$1\r\nx\r\n" * 2 + b"$1\r\ny\r\n"
    assert (transport.pauses, transport.resumes) == (1, 1)


def test_a_whole_pipeline_beyond_the_room_is_limited_like_a_split_one():
    backend = SubmitBackend()
    protocol, transport = connect(make_factory(backend, pending_requests_max=4))
    protocol.dataReceived(gets(10))
    assert backend.queued() == 4
    assert transport.producerState == "paused"
    while backend.queue:
        backend.answer_all(b"x")
    assert len(backend.submitted) == 10
    assert transport.value() == b"$1\r\nx\r\n" * 10
    assert transport.producerState == "producing"


def test_pending_bytes_max_pauses_reading_with_one_command_per_read():
    backend = SubmitBackend()
    protocol, transport = connect(make_factory(backend, pending_bytes_max=200))
    for _ in range(3):
        protocol.dataReceived(cmd(b"SET", b"k", b"v" * 90))
    assert transport.producerState == "paused"  # 282 bytes held
    backend.answer_all()
    assert transport.producerState == "producing"


def test_a_paused_transport_stops_the_fast_path_too():
    backend = SubmitBackend()
    protocol, transport = connect(make_factory(backend))
    protocol.pauseProducing()  # the client does not read its replies
    protocol.dataReceived(cmd(b"GET", b"k"))
    assert backend.queue == []
    protocol.resumeProducing()
    assert backend.kinds() == ["read"]
    backend.answer_all()
    assert transport.value() == b"$-1\r\n"


def test_quit_in_a_whole_read_answers_and_closes():
    backend = SubmitBackend()
    protocol, transport = connect(make_factory(backend))
    protocol.dataReceived(cmd(b"GET", b"k") + cmd(b"QUIT") + cmd(b"GET", b"never"))
    assert not transport.disconnecting  # the GET before QUIT is still answered first
    backend.answer_all()
    assert transport.value() == b"$-1\r\n+OK\r\n"
    assert transport.disconnecting
    assert backend.kinds() == ["read"]


def test_an_unknown_command_in_a_whole_read_is_an_error_reply_in_order():
    backend = SubmitBackend()
    protocol, transport = connect(make_factory(backend))
    protocol.dataReceived(cmd(b"SET", b"k", b"v") + cmd(b"NOPE"))
    backend.answer_all()
    assert transport.value().startswith(b"+OK\r\n-ERR unknown command 'NOPE'")
    assert not transport.disconnecting


def test_resp3_replies_through_submit():
    backend = SubmitBackend()
    protocol, transport = connect(make_factory(backend))
    protocol.dataReceived(cmd(b"HELLO", b"3"))
    transport.clear()
    protocol.dataReceived(cmd(b"GET", b"missing"))
    backend.answer_all()
    assert transport.value() == b"_\r\n"


def test_backend_errors_through_submit_become_error_replies():
    backend = SubmitBackend()
    protocol, transport = connect(make_factory(backend))
    protocol.dataReceived(cmd(b"SET", b"k", b"v"))
    backend.answer_all(NoLeaderError())
    assert transport.value().startswith(b"-")
    assert not transport.disconnecting


def test_a_reply_after_the_connection_closed_is_dropped_on_the_fast_path():
    backend = SubmitBackend()
    protocol, transport = connect(make_factory(backend))
    protocol.dataReceived(cmd(b"GET", b"k"))
    protocol.connectionLost(None)
    backend.answer_all(OK)
    assert transport.value() == b""


def test_replies_held_for_a_later_burst_count_against_pending_bytes_max():
    backend = SubmitBackend(grouped=False)  # answers b and c one by one
    protocol, transport = connect(make_factory(backend, pending_bytes_max=300))
    protocol.dataReceived(cmd(b"GET", b"a"))
    protocol.dataReceived(cmd(b"GET", b"b") + cmd(b"GET", b"c"))
    (a, b, c), backend.queue = backend.queue, []
    b[2](b[3], b"x" * 400)  # stored: its burst still waits for c
    assert transport.producerState == "producing"
    a[2](a[3], b"1")  # a is written; b's reply still holds 400 bytes
    assert transport.value() == b"$1\r\n1\r\n"
    assert transport.producerState == "paused"
    c[2](c[3], b"3")
    assert transport.producerState == "producing"
    assert transport.value().endswith(b"$1\r\n3\r\n")


def test_a_pipeline_of_writes_is_one_submit_writes_call_and_one_reply_write():
    backend = SubmitBackend(grouped=True)
    protocol, transport = connect(make_factory(backend))
    protocol.dataReceived(b"".join(cmd(b"SET", b"k%d" % i, b"v") for i in range(16)))
    assert backend.group_sizes == [16]
    backend.answer_all()
    assert transport.value() == b"+OK\r\n" * 16
    assert transport.writes == 1
    assert protocol.pending_requests == 0 and protocol.buffered_bytes == 0


def test_grouped_replies_mix_results_and_errors_in_order():
    backend = SubmitBackend(grouped=True)
    protocol, transport = connect(make_factory(backend))
    protocol.dataReceived(gets(3))
    (_, commands, done, token), = backend.queue
    done(token, [b"one", CommandError("WRONGTYPE no"), None])
    assert transport.value() == b"$3\r\none\r\n-WRONGTYPE no\r\n$-1\r\n"


def test_a_refused_request_answers_every_command_with_the_error():
    backend = SubmitBackend()
    protocol, transport = connect(make_factory(backend))
    protocol.dataReceived(b"".join(cmd(b"SET", b"k%d" % i, b"v") for i in range(3)))
    backend.answer_all(OverloadedError("too many writes in flight; retry shortly"))
    replies = transport.value().split(b"\r\n")[:-1]
    assert len(replies) == 3 and all(r.startswith(b"-") for r in replies)
    assert protocol.pending_requests == 0


def test_an_admin_command_in_a_pipeline_keeps_its_place_among_the_writes():
    backend = SubmitBackend(grouped=True)
    order = []
    backend.admin = lambda command: (order.append(("admin", backend.kinds())),
                                     FakeBackend.admin(backend, command))[1]
    protocol, transport = connect(make_factory(backend))
    protocol.dataReceived(cmd(b"SET", b"a", b"1") + cmd(b"SET", b"b", b"1") + cmd(b"FLUSHALL")
                          + cmd(b"SET", b"c", b"1"))
    assert order == [("admin", ["write", "write"])]  # the writes before went first
    assert backend.group_sizes == [2, 1]
    backend.answer_all()
    assert transport.value() == b"+OK\r\n" * 4


def test_hello_3_in_a_pipeline_changes_only_the_replies_after_it():
    backend = SubmitBackend(grouped=True)
    protocol, transport = connect(make_factory(backend))
    protocol.dataReceived(cmd(b"GET", b"missing") + cmd(b"HELLO", b"3")
                          + cmd(b"GET", b"missing"))
    backend.answer_all()
    out = transport.value()
    assert out.startswith(b"$-1\r\n") and out.endswith(b"_\r\n")
    assert backend.group_sizes == [1, 1]


def test_readonly_in_a_pipeline_splits_the_reads_by_consistency():
    backend = SubmitBackend(grouped=True)
    seen = []
    submit_reads = backend.submit_reads
    backend.submit_reads = lambda commands, linearizable, done, token: (
        seen.append((len(commands), linearizable)),
        submit_reads(commands, linearizable, done, token))
    protocol, transport = connect(make_factory(backend))
    protocol.dataReceived(gets(2) + cmd(b"READONLY") + gets(3))
    assert seen == [(2, True), (3, False)]
    backend.answer_all()
    assert transport.value() == b"$-1\r\n" * 2 + b"+OK\r\n" + b"$-1\r\n" * 3


def test_a_client_that_sends_again_after_its_answer_is_reported_back_with_its_answer_time():
    backend = SubmitBackend()
    backend.returned = []
    backend.client_returned = backend.returned.append
    factory = make_factory(backend)
    protocol, transport = connect(factory)
    protocol.dataReceived(cmd(b"SET", b"k", b"v"))
    assert backend.returned == []  # never answered: not coming back
    factory.clock.advance(1.5)
    backend.answer_all()  # the reply is written at 1.5
    factory.clock.advance(2.0)
    protocol.dataReceived(cmd(b"GET", b"k"))
    assert backend.returned == [1.5]  # back, answered at 1.5 (not 3.5, its arrival)
    # A request sent while another is outstanding is not a return, even when an
    # earlier one was just answered; nor is the second part of a request that came in
    # two reads.
    protocol.dataReceived(cmd(b"GET", b"k"))
    first, *rest = backend.queue
    backend.queue = rest
    first[2](first[3], b"v")  # the first GET is answered at 3.5, the second is not
    protocol.dataReceived(cmd(b"GET", b"k"))
    assert backend.returned == [1.5]
    backend.answer_all()
    factory.clock.advance(1.0)
    request = cmd(b"SET", b"k", b"w")
    protocol.dataReceived(request[:5])
    protocol.dataReceived(request[5:])
    assert backend.returned == [1.5, 3.5]
    assert transport.value() == b"+OK\r\n" + b"$1\r\nv\r\n" * 3

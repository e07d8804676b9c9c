"""A long array reply (KEYS of a big key space) is encoded ``REPLY_STEP_ITEMS`` elements
per reactor turn, so that the node keeps serving (and a leader keeps sending heartbeats)
while it is built; it is written whole, in request order, exactly as encoded at once."""

from __future__ import annotations

import pytest
from client_support import FakeBackend, SubmitBackend, connect, make_factory

from kvraft.client import server
from kvraft.client.resp import encode_command, encode_reply

STEP = 4
KEYS = [b"k%02d" % i for i in range(11)]  # three steps of four, four, three


@pytest.fixture(autouse=True)
def small_steps(monkeypatch):
    monkeypatch.setattr(server, "REPLY_STEP_ITEMS", STEP)


def cmd(*args: bytes) -> bytes:
    return encode_command(list(args))


def filled(backend):
    backend.data.update((key, b"v") for key in KEYS)
    return backend


def scheduled_steps(factory) -> list[tuple]:
    """The arguments of every call the factory's clock is asked to schedule from now on
    (an encoding step's is the index it starts at)."""
    steps: list[tuple] = []
    call_later = factory.clock.callLater
    factory.clock.callLater = lambda delay, f, *a: steps.append(a) or call_later(delay, f, *a)
    return steps


def finish_steps(factory) -> None:
    """Run the remaining encoding steps: ``Clock.advance(0)`` also runs the calls that
    the calls it runs schedule for now (the step count is checked where it matters)."""
    factory.clock.advance(0)


BACKENDS = {
    "submit": lambda: SubmitBackend(),
    "grouped": lambda: SubmitBackend(grouped=True),
    "deferred": lambda: FakeBackend(),
}


@pytest.fixture(params=sorted(BACKENDS))
def backend(request):
    return filled(BACKENDS[request.param]())


def answer(backend) -> None:
    if isinstance(backend, SubmitBackend):
        backend.answer_all()


def keys_answered(backend):
    """A connection that sent KEYS * and got the backend's answer: (factory, protocol,
    transport, the steps scheduled since)."""
    factory = make_factory(backend)
    steps = scheduled_steps(factory)
    protocol, transport = connect(factory)
    protocol.dataReceived(cmd(b"KEYS", b"*"))
    answer(backend)
    return factory, protocol, transport, steps


def test_a_long_array_is_encoded_over_several_turns_and_written_whole(backend):
    factory, protocol, transport, steps = keys_answered(backend)
    assert transport.value() == b""  # the first step is done, the next is scheduled
    assert steps == [(STEP,)]
    finish_steps(factory)
    assert steps == [(STEP,), (2 * STEP,)]  # each step in a turn of its own
    assert transport.value() == encode_reply(KEYS)
    assert transport.writes == 1
    assert not factory.clock.getDelayedCalls()
    assert protocol.pending_requests == 0 and protocol.buffered_bytes == 0


def test_replies_after_a_long_array_wait_for_it(backend):
    factory = make_factory(backend)
    protocol, transport = connect(factory)
    protocol.dataReceived(cmd(b"KEYS", b"*"))
    answer(backend)
    protocol.dataReceived(cmd(b"GET", b"k03"))
    protocol.dataReceived(cmd(b"SET", b"new", b"1"))  # a write after a read that answered
    answer(backend)
    answer(backend)
    assert transport.value() == b""
    finish_steps(factory)
    assert transport.value() == encode_reply(KEYS) + b"$1\r\nv\r\n+OK\r\n"


def test_a_long_array_within_a_pipeline_keeps_its_place(backend):
    factory = make_factory(backend)
    protocol, transport = connect(factory)
    protocol.dataReceived(cmd(b"GET", b"k00") + cmd(b"KEYS", b"*") + cmd(b"GET", b"k10"))
    answer(backend)
    assert transport.value() == b""
    finish_steps(factory)
    assert transport.value() == b"$1\r\nv\r\n" + encode_reply(KEYS) + b"$1\r\nv\r\n"


def test_resp3_long_arrays_are_the_same_array(backend):
    factory = make_factory(backend)
    protocol, transport = connect(factory)
    protocol.dataReceived(cmd(b"HELLO", b"3"))
    hello = transport.value()
    protocol.dataReceived(cmd(b"KEYS", b"*"))
    answer(backend)
    finish_steps(factory)
    assert transport.value() == hello + encode_reply(KEYS, resp3=True)


def test_a_connection_lost_while_encoding_stops_the_steps(backend):
    factory, protocol, transport, steps = keys_answered(backend)
    protocol.connectionLost(None)
    finish_steps(factory)
    assert steps == [(STEP,)], "the step after the loss scheduled another"
    assert not factory.clock.getDelayedCalls()
    assert transport.value() == b""


def test_an_array_of_step_size_is_encoded_at_once(backend):
    backend.data.clear()
    backend.data.update((key, b"v") for key in KEYS[:STEP])
    factory = make_factory(backend)
    protocol, transport = connect(factory)
    protocol.dataReceived(cmd(b"KEYS", b"*"))
    answer(backend)
    assert transport.value() == encode_reply(KEYS[:STEP])
    assert not factory.clock.getDelayedCalls()


def test_a_long_array_with_nils_is_encoded_in_steps_the_general_way(backend):
    # MGET of keys some of which are missing: not all bytes, so each step takes the
    # element-by-element encoder; the reply is still the one encode_reply gives at once.
    asked = KEYS[:6] + [b"missing"] + KEYS[6:]
    factory = make_factory(backend)
    protocol, transport = connect(factory)
    protocol.dataReceived(cmd(b"MGET", *asked))
    answer(backend)
    assert transport.value() == b""
    finish_steps(factory)
    expected = [b"v"] * 6 + [None] + [b"v"] * 5
    assert transport.value() == encode_reply(expected)

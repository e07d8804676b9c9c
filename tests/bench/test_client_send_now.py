"""The client port's direct reply write (``ClientProtocol._send_now``): replies go to the
socket in the turn they are ready, and nothing is ever reordered or lost when the
kernel takes only part of a reply."""

import socket

import pytest
from twisted.internet import tcp
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, StringTransport

from kvraft.client.resp import encode_command
from kvraft.client.server import ClientFactory


class _Backend:
    node_id = "n1"

    def read(self, command, linearizable=True):
        raise AssertionError("not used")

    write = admin = read

    def info(self):
        return {}


@pytest.fixture
def wired():
    """A ClientProtocol on a real (non-blocking) socket pair, under a MemoryReactor."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.settimeout(5)
    reactor = MemoryReactor()
    factory = ClientFactory(_Backend(), clock=Clock())
    protocol = factory.buildProtocol(None)
    transport = tcp.Connection(ours, protocol, reactor)
    transport.connected = 1
    protocol.makeConnection(transport)
    yield protocol, transport, theirs, reactor
    ours.close()
    theirs.close()


def test_a_reply_reaches_the_socket_without_waiting_for_a_writable_poll(wired):
    protocol, transport, theirs, reactor = wired
    protocol.dataReceived(encode_command([b"PING"]))
    assert theirs.recv(100) == b"+PONG\r\n"
    assert transport not in reactor.writers, "nothing was left for the reactor to write"


def test_what_the_kernel_refuses_is_queued_and_later_replies_stay_behind_it(wired):
    protocol, transport, theirs, reactor = wired
    big = b"x" * (8 << 20)  # more than any loopback socket buffer takes at once
    protocol.dataReceived(encode_command([b"ECHO", big]))
    assert transport._tempDataBuffer, "the rest of the reply waits in the transport"
    assert transport in reactor.writers
    protocol.dataReceived(encode_command([b"PING"]))  # must not overtake the echo
    expected = b"$%d\r\n%s\r\n+PONG\r\n" % (len(big), big)
    received = bytearray()
    theirs.setblocking(False)
    while len(received) < len(expected):
        try:
            received += theirs.recv(1 << 20)
        except BlockingIOError:
            assert transport in reactor.writers, "data is missing but nothing is queued"
            transport.doWrite()  # what the reactor does when the socket is writable
    assert bytes(received) == expected
    assert transport not in reactor.writers


def test_test_transports_keep_the_ordinary_write():
    factory = ClientFactory(_Backend(), clock=Clock())
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(encode_command([b"PING"]))
    assert transport.value() == b"+PONG\r\n"

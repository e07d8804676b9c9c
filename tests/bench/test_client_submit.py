"""The client port's Deferred-free path: a backend offering ``submit_read`` and
``submit_write`` answers through ``done(token, result)``; replies keep request order, errors
become error replies, and each reply is encoded as the connection spoke when it was sent."""

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from kvraft.client.errors import NoLeaderError, OverloadedError
from kvraft.client.resp import encode_command
from kvraft.client.server import ClientFactory
from kvraft.results import Status


class SubmitBackend:
    """Holds submitted requests until the test answers them, in any order."""

    node_id = "n1"

    def __init__(self):
        self.pending: list = []  # (command, done, token)
        self.deferred_calls = 0

    def submit_read(self, command, linearizable, done, token):
        self.pending.append((command, done, token))

    def submit_write(self, command, done, token):
        if command[1] == b"refused":
            done(token, OverloadedError("too many writes in flight; retry shortly"))
            return
        self.pending.append((command, done, token))

    def read(self, command, linearizable=True):
        self.deferred_calls += 1
        raise AssertionError("the Deferred API must not be used")

    write = read

    def admin(self, command):
        raise AssertionError("not used")

    def info(self):
        return {}

    def answer(self, i, result):
        command, done, token = self.pending[i]
        done(token, result)


def _connect(backend):
    protocol = ClientFactory(backend, clock=Clock()).buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def test_replies_keep_request_order_when_answers_come_out_of_order():
    backend = SubmitBackend()
    protocol, transport = _connect(backend)
    protocol.dataReceived(b"".join(encode_command([b"SET", b"k%d" % i, b"v"])
                                   for i in range(3)))
    assert len(backend.pending) == 3 and transport.value() == b""
    backend.answer(2, Status("OK"))
    backend.answer(1, NoLeaderError("no leader: the cluster is electing one"))
    assert transport.value() == b"", "the first reply is still missing"
    backend.answer(0, Status("OK"))
    assert transport.value() == (b"+OK\r\n-CLUSTERDOWN no leader: the cluster is electing "
                                 b"one\r\n+OK\r\n")
    assert backend.deferred_calls == 0


def test_an_answer_given_during_submit_is_written_in_order():
    backend = SubmitBackend()
    protocol, transport = _connect(backend)
    protocol.dataReceived(encode_command([b"SET", b"refused", b"v"])
                          + encode_command([b"SET", b"ok", b"v"]))
    assert len(backend.pending) == 1, "the refused write was answered during submit"
    assert transport.value() == b"", "a burst is written once all its replies are in"
    backend.answer(0, Status("OK"))
    refused, ok = transport.value().split(b"\r\n")[:2]
    assert refused.startswith(b"-") and b"too many writes in flight" in refused
    assert ok == b"+OK"
    assert transport.value().count(b"\r\n") == 2


def test_a_reply_is_encoded_in_the_protocol_version_of_its_request():
    backend = SubmitBackend()
    protocol, transport = _connect(backend)
    protocol.dataReceived(encode_command([b"GET", b"missing"]))
    protocol.dataReceived(encode_command([b"HELLO", b"3"]))  # waits behind the GET
    backend.answer(0, None)
    assert transport.value().startswith(b"$-1\r\n"), "RESP2 null: sent before HELLO 3"
    transport.clear()
    protocol.dataReceived(encode_command([b"GET", b"missing"]))
    backend.answer(1, None)
    assert transport.value() == b"_\r\n", "RESP3 null after HELLO 3"

"""The command contract between the client layer and the real ``kv`` state machine:
every command the client layer normalizes is one the machine applies, with the reply a
Redis client expects. (Replication is left out: the backend here applies at once.)"""

from __future__ import annotations

import pytest
from client_support import connect
from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from zope.interface import implementer

from kvraft.client.backend import IClientBackend
from kvraft.client.server import ClientFactory
from kvraft.machines.kv import KvStateMachine


@implementer(IClientBackend)
class MachineBackend:
    """Applies writes to a KvStateMachine at once, as one node would after commit."""

    node_id = "n1"

    def __init__(self) -> None:
        self.machine = KvStateMachine()
        self.index = 0

    def write(self, command):
        self.index += 1
        return succeed(self.machine.apply(self.index, command))

    def read(self, command, linearizable):
        return succeed(self.machine.query(command))

    def admin(self, command):
        return self.write(command)  # only FLUSHALL reaches the machine

    def info(self):
        return {}


@pytest.mark.parametrize(("request_", "reply"), [
    (b"SET k v\r\nGET k\r\n", b"+OK\r\n$1\r\nv\r\n"),
    (b"SET k v\r\nSET k w NX GET\r\nSET k x XX GET\r\nGET k\r\n",
     b"+OK\r\n$1\r\nv\r\n$1\r\nv\r\n$1\r\nx\r\n"),
    (b"SET k v\r\nSET k w IFEQ nope\r\nSET k w IFEQ v\r\nGET k\r\n",
     b"+OK\r\n$-1\r\n+OK\r\n$1\r\nw\r\n"),
    (b"SETNX k 1\r\nSETNX k 2\r\nGETSET k 3\r\nGETSET other 1\r\n",
     b":1\r\n:0\r\n$1\r\n1\r\n$-1\r\n"),
    (b"INCR n\r\nINCRBY n 10\r\nDECR n\r\nDECRBY n 20\r\n", b":1\r\n:11\r\n:10\r\n:-10\r\n"),
    (b"SET n 9223372036854775807\r\nINCR n\r\n",
     b"+OK\r\n-ERR increment or decrement would overflow\r\n"),
    (b"SET s abc\r\nINCR s\r\n", b"+OK\r\n-ERR value is not an integer or out of range\r\n"),
    (b"APPEND k ab\r\nAPPEND k cd\r\nSTRLEN k\r\nSTRLEN nope\r\n", b":2\r\n:4\r\n:4\r\n:0\r\n"),
    (b"MSET a 1 b 2\r\nMGET a b c\r\nEXISTS a b c a\r\nDBSIZE\r\n",
     b"+OK\r\n*3\r\n$1\r\n1\r\n$1\r\n2\r\n$-1\r\n:3\r\n:2\r\n"),
    (b"MSET a 1 b 2\r\nDEL a nope\r\nKEYS *\r\nFLUSHALL\r\nDBSIZE\r\n",
     b"+OK\r\n:1\r\n*1\r\n$1\r\nb\r\n+OK\r\n:0\r\n"),
])
def test_normalized_commands_run_on_the_kv_machine(request_, reply):
    factory = ClientFactory(MachineBackend(), clock=Clock())
    protocol, transport = connect(factory)
    protocol.dataReceived(request_)
    assert transport.value() == reply

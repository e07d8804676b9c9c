"""The node applies each committed batch with one ``apply_batch`` call when the machine
provides ``IBatchStateMachine``, and with ``apply`` per command otherwise; the clients'
answers are the same either way."""

import pytest
from test_node_support import NodeCluster
from zope.interface import Interface

from kvraft import node as node_module
from kvraft.machines.kv import KvStateMachine
from kvraft.raft import Role


class INothing(Interface):
    """Provided by nothing: stands in for IBatchStateMachine to force the fallback."""


@pytest.mark.parametrize("batched", [True, False])
def test_committed_batches_apply_through_the_machine_s_best_call(tmp_path, monkeypatch,
                                                                 batched):
    calls = {"apply": 0, "apply_batch": 0}
    real_apply, real_batch = KvStateMachine.apply, KvStateMachine.apply_batch

    def apply(self, index, command):
        calls["apply"] += 1
        return real_apply(self, index, command)

    def apply_batch(self, index, commands):
        calls["apply_batch"] += 1
        return real_batch(self, index, commands)

    monkeypatch.setattr(KvStateMachine, "apply", apply)
    monkeypatch.setattr(KvStateMachine, "apply_batch", apply_batch)
    if not batched:
        monkeypatch.setattr(node_module, "IBatchStateMachine", INothing)
    cluster = NodeCluster(tmp_path, size=3)
    try:
        cluster.run_until(lambda: any(n.role == Role.Leader for n in cluster.nodes.values()),
                          what="a leader")
        leader = next(n for n in cluster.nodes.values() if n.role == Role.Leader)
        answers = {}
        commands = [[b"SET", b"a", b"1"], [b"INCR", b"a"], [b"set", b"b", b"x"],
                    [b"SET", b"b", b"y", b"NX"], [b"APPEND", b"b", b"z"]]
        for i, command in enumerate(commands):
            leader.submit_write(command, lambda token, result: answers.update({token: result}),
                                i)
        cluster.run_until(lambda: len(answers) == len(commands), what="answers")
        assert [str(answers[i]) if i in (0, 2) else answers[i] for i in range(5)] == [
            "OK", 2, "OK", None, 2]
        cluster.run_until(lambda: all(n.machine.last_applied == leader.machine.last_applied
                                      for n in cluster.nodes.values()), what="all applied")
        for n in cluster.nodes.values():
            assert n.machine.query([b"MGET", b"a", b"b"]) == [b"2", b"xz"]
    finally:
        cluster.close()
    if batched:
        assert calls["apply_batch"] >= 3 and calls["apply"] == 0  # one per entry per node
    else:
        assert calls["apply_batch"] == 0 and calls["apply"] == 3 * len(commands)

"""Contract of ``take_messages``/``take_read_states``: what a driver may send and serve
while a Ready is outstanding (its fsync still running in a writer thread)."""

import random

import pytest
from raft_harness import Cluster, make_core

from kvraft.raft import AFTER_PERSIST_TYPES, Entry, EntryType, Message, MsgType

VOTERS = ("n1", "n2", "n3")


def _leader_with_outstanding_ready() -> tuple[Cluster, object]:
    c = Cluster(VOTERS)
    c.elect("n1")
    leader = c.core("n1")
    leader.propose(b"x")
    rd = leader.ready()
    assert rd.entries and not leader.has_ready()
    return c, rd


def test_take_messages_hands_out_heartbeats_while_a_ready_is_outstanding():
    c, rd = _leader_with_outstanding_ready()
    leader = c.core("n1")
    for _ in range(leader.config.heartbeat_ticks):
        leader.tick()
    taken = leader.take_messages()
    assert sorted((m.type, m.to) for m in taken) == [
        (MsgType.MsgHeartbeat, "n2"), (MsgType.MsgHeartbeat, "n3")]
    assert leader.take_messages() == [], "taken messages are handed out once"
    c.storage["n1"].append(rd.entries)
    leader.advance(rd)
    follow_up = leader.ready() if leader.has_ready() else None
    if follow_up is not None:
        assert MsgType.MsgHeartbeat not in {m.type for m in follow_up.messages}


def test_take_messages_sends_new_appends_before_the_previous_write_is_durable():
    c, rd = _leader_with_outstanding_ready()
    leader = c.core("n1")
    leader.propose(b"y")  # arrives while the write of b"x" is in flight
    taken = leader.take_messages()
    apps = [m for m in taken if m.type == MsgType.MsgApp]
    assert {m.to for m in apps} == {"n2", "n3"}
    assert all([e.data for e in m.entries] == [b"y"] for m in apps)
    c.storage["n1"].append(rd.entries)
    leader.advance(rd)
    rd2 = leader.ready()
    assert [e.data for e in rd2.entries] == [b"y"], "y is still persisted by the next Ready"
    assert all(m.type != MsgType.MsgApp or not m.entries for m in rd2.messages)


def test_take_messages_never_releases_an_append_acknowledgement_early():
    follower = make_core("n2", VOTERS)
    follower.step(Message(type=MsgType.MsgApp, frm="n1", to="n2", term=1, index=0,
                          log_term=0, entries=[Entry(term=1, index=1)], commit=0))
    rd = follower.ready()
    assert [m.type for m in rd.messages_after_persist] == [MsgType.MsgAppResp]
    # While entry 1 is being written: more entries and a heartbeat arrive.
    follower.step(Message(type=MsgType.MsgApp, frm="n1", to="n2", term=1, index=1,
                          log_term=1, entries=[Entry(term=1, index=2)], commit=0))
    follower.step(Message(type=MsgType.MsgHeartbeat, frm="n1", to="n2", term=1, commit=0,
                          context=b"r1"))
    taken = follower.take_messages()
    assert [m.type for m in taken] == [MsgType.MsgHeartbeatResp]
    assert taken[0].context == b"r1"
    follower.advance(rd)
    rd2 = follower.ready()
    assert [e.index for e in rd2.entries] == [2]
    assert [(m.type, m.index) for m in rd2.messages_after_persist] == [
        (MsgType.MsgAppResp, 2)], "the ack for entry 2 waits for entry 2's write"


@pytest.mark.parametrize("kind", [MsgType.MsgVote, MsgType.MsgPreVote])
def test_take_messages_never_releases_a_vote_early(kind):
    voter = make_core("n2", VOTERS, check_quorum=False)
    voter.step(Message(type=kind, frm="n1", to="n2", term=1))
    assert voter.take_messages() == []
    rd = voter.ready()
    assert [m.type for m in rd.messages_after_persist] == [
        MsgType.MsgVoteResp if kind == MsgType.MsgVote else MsgType.MsgPreVoteResp]


def test_read_index_is_confirmed_while_a_ready_is_outstanding():
    c, rd = _leader_with_outstanding_ready()
    leader = c.core("n1")
    leader.read_index(b"read-1")
    beats = [m for m in leader.take_messages() if m.type == MsgType.MsgHeartbeat]
    assert {m.to for m in beats} == {"n2", "n3"}
    round_ctx = beats[0].context
    assert round_ctx
    # A read arriving after the round's heartbeats left must not join that round.
    leader.read_index(b"read-2")
    later = [m for m in leader.take_messages() if m.type == MsgType.MsgHeartbeat]
    assert later and later[0].context != round_ctx
    leader.step(Message(type=MsgType.MsgHeartbeatResp, frm="n2", to="n1",
                        term=leader.term, context=round_ctx))
    states = leader.take_read_states()
    assert [s.request_ctx for s in states] == [b"read-1"]
    assert leader.take_read_states() == []
    c.storage["n1"].append(rd.entries)
    leader.advance(rd)
    assert all(s.request_ctx != b"read-1"
               for s in (leader.ready().read_states if leader.has_ready() else []))


class _SlowDiskCluster(Cluster):
    """Each node keeps its Ready outstanding for a random number of rounds (a slow
    fsync in a writer thread), sending ``take_messages`` and serving
    ``take_read_states`` meanwhile, as kvraft/node.py does."""

    def __init__(self, rng: random.Random):
        super().__init__(VOTERS)
        self.rng = rng
        self.pending = {node: None for node in self.ids}  # node -> [rd, rounds left]
        self.early: list[Message] = []

    def drain(self, node: str) -> bool:
        core = self.cores[node]
        moved = False
        taken = core.take_messages()
        assert all(m.type not in AFTER_PERSIST_TYPES for m in taken), taken
        self.early.extend(taken)
        self.inflight.extend(taken)
        self.read_states[node].extend(core.take_read_states())
        moved |= bool(taken)
        slot = self.pending[node]
        if slot is None and core.has_ready():
            rd = core.ready()
            self.inflight.extend(rd.messages)
            self.pending[node] = slot = [rd, self.rng.randrange(3)]
            moved = True
        if slot is not None:
            rd, left = slot
            if left > 0:
                slot[1] -= 1
                return True
            storage = self.storage[node]
            if rd.entries:
                storage.append(rd.entries)
            if rd.hard_state is not None:
                storage.set_hard_state(rd.hard_state)
            self.inflight.extend(rd.messages_after_persist)
            self.applied[node].extend(rd.committed_entries)
            self.read_states[node].extend(rd.read_states)
            core.advance(rd)
            core.check_invariants()
            self.pending[node] = None
            moved = True
        return moved


@pytest.mark.parametrize("seed", range(8))
def test_slow_disks_with_early_messages_keep_the_logs_consistent(seed):
    rng = random.Random(seed)
    c = _SlowDiskCluster(rng)
    c.elect("n1")
    proposed = []
    for i in range(60):
        leader = c.leaders()[0]
        if rng.random() < 0.7:
            data = b"w%d" % i
            c.propose(leader, data)
            proposed.append(data)
        if rng.random() < 0.3:
            c.core(leader).read_index(b"r%d" % i)
        if rng.random() < 0.3:
            c.tick(leader)
        for node in c.ids:
            c.drain(node)
        c.deliver()
    c.stabilize()
    assert c.leaders() == ["n1"]
    assert c.early, "messages were taken while Readies were outstanding"
    for node in c.ids:
        assert c.applied_data(node) == proposed
        assert [e.index for e in c.applied[node]] == sorted(
            {e.index for e in c.applied[node]}), "applied in order, once"
    applied_normal = [e for e in c.applied["n1"] if e.type == EntryType.Normal]
    assert applied_normal
    reads = c.read_states["n1"]
    assert reads and all(s.index <= c.core("n1").log.committed for s in reads)

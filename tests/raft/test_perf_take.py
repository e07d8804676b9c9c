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
    assert [m.to for m in beats] == ["n2"], "one follower makes a quorum with the leader"
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


def _leader_writing_y_after_x_was_acknowledged():
    """n1 leads; x is durable everywhere; the Ready with y is outstanding at n1 and the
    followers' acknowledgements of x have not arrived yet."""
    c = Cluster(VOTERS)
    c.elect("n1")
    leader = c.core("n1")
    leader.propose(b"x")
    rd1 = leader.ready()
    c.storage["n1"].append(rd1.entries)
    c.inflight.extend(rd1.messages)
    leader.advance(rd1)
    c.deliver()
    for node in ("n2", "n3"):
        c.drain(node)
    acks = c.inflight
    c.inflight = []
    leader.propose(b"y")
    rd2 = leader.ready()
    assert [e.data for e in rd2.entries] == [b"y"] and rd2.committed_entries == []
    return c, leader, rd2, acks


def test_take_committed_entries_applies_what_commits_during_a_write():
    c, leader, rd2, acks = _leader_writing_y_after_x_was_acknowledged()
    assert leader.take_committed_entries() == []
    c.deliver(acks)  # x commits while y is being written
    taken = leader.take_committed_entries()
    assert [e.data for e in taken] == [b"x"]
    assert leader.log.applied == taken[-1].index
    assert leader.take_committed_entries() == [], "handed out once"
    leader.check_invariants()
    c.storage["n1"].append(rd2.entries)
    leader.advance(rd2)
    leader.check_invariants()
    later = leader.ready() if leader.has_ready() else None
    assert later is None or all(e.data != b"x" for e in later.committed_entries)


def test_take_committed_entries_stops_at_the_durable_index():
    c, leader, rd2, acks = _leader_writing_y_after_x_was_acknowledged()
    c.deliver(acks)
    c.deliver([m for m in rd2.messages])  # y reaches the followers...
    for node in ("n2", "n3"):
        c.drain(node)
    c.deliver()  # ... which acknowledge it: y commits, but is not durable at n1
    assert leader.log.committed == rd2.entries[-1].index
    taken = leader.take_committed_entries()
    assert [e.data for e in taken] == [b"x"], "y waits for the leader's own write"
    c.storage["n1"].append(rd2.entries)
    leader.advance(rd2)
    rd3 = leader.ready()
    assert [e.data for e in rd3.committed_entries] == [b"y"]
    leader.advance(rd3)
    leader.check_invariants()


def test_taken_entries_follow_the_committed_entries_of_the_outstanding_ready():
    c = Cluster(VOTERS)
    c.elect("n1")
    leader = c.core("n1")
    held = []
    for data in (b"x1", b"x2"):  # both durable everywhere, acknowledgements held back
        leader.propose(data)
        rd = leader.ready()
        c.storage["n1"].append(rd.entries)
        c.inflight.extend(rd.messages)
        leader.advance(rd)
        c.deliver()
        for node in ("n2", "n3"):
            c.drain(node)
        held.append(c.inflight)
        c.inflight = []
    c.deliver(held[0])  # x1 commits
    leader.propose(b"y")
    rd3 = leader.ready()
    assert [e.data for e in rd3.committed_entries] == [b"x1"]
    c.deliver(held[1])  # x2 commits while y is being written
    taken = leader.take_committed_entries()
    assert [e.data for e in taken] == [b"x2"], "after x1, which rd3 handed out"
    applied = leader.log.applied
    c.storage["n1"].append(rd3.entries)
    leader.advance(rd3)
    assert leader.log.applied == applied, "advance never moves applied back"
    leader.check_invariants()


class _SlowDiskCluster(Cluster):
    """Each node keeps its Ready outstanding for a random number of rounds (a slow
    fsync in a writer thread), sending ``take_messages`` and serving
    ``take_read_states`` meanwhile, as kvraft/node.py does."""

    def __init__(self, rng: random.Random):
        super().__init__(VOTERS)
        self.rng = rng
        self.pending = {node: None for node in self.ids}  # node -> [rd, rounds left]
        self.early: list[Message] = []
        self.taken_entries = 0

    def drain(self, node: str) -> bool:
        core = self.cores[node]
        moved = False
        taken = core.take_messages()
        assert all(m.type not in AFTER_PERSIST_TYPES for m in taken), taken
        self.early.extend(taken)
        self.inflight.extend(taken)
        self.read_states[node].extend(core.take_read_states())
        applied_early = core.take_committed_entries()
        self.applied[node].extend(applied_early)
        self.taken_entries += len(applied_early)
        moved |= bool(taken) or bool(applied_early)
        slot = self.pending[node]
        if slot is None and core.has_ready():
            durable = self.storage[node].last_index()
            rd = core.ready()
            self.inflight.extend(rd.messages)
            # Committed entries already durable are applied now (take_committed_entries
            # hands out only what follows them); the rest after the write.
            early = [e for e in rd.committed_entries if e.index <= durable]
            self.applied[node].extend(early)
            rd_late = rd.committed_entries[len(early):]
            self.pending[node] = slot = [rd, self.rng.randrange(3), rd_late]
            moved = True
        if slot is not None:
            rd, left, late = slot
            if left > 0:
                slot[1] -= 1
                return True
            storage = self.storage[node]
            if rd.entries:
                storage.append(rd.entries)
            if rd.hard_state is not None:
                storage.set_hard_state(rd.hard_state)
            self.inflight.extend(rd.messages_after_persist)
            self.applied[node].extend(late)
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
    assert c.taken_entries, "entries were applied while Readies were outstanding"
    for node in c.ids:
        assert c.applied_data(node) == proposed
        assert [e.index for e in c.applied[node]] == sorted(
            {e.index for e in c.applied[node]}), "applied in order, once"
    applied_normal = [e for e in c.applied["n1"] if e.type == EntryType.Normal]
    assert applied_normal
    reads = c.read_states["n1"]
    assert reads and all(s.index <= c.core("n1").log.committed for s in reads)

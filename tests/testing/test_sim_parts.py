"""The simulator's parts on their own: durable storage, network, KV model, the safety
monitor, and simulated clients."""

from __future__ import annotations

import random

import pytest

from kvraft.raft import ConfState, Entry, HardState, MemoryStorage
from kvraft.testing.clients import ClientConfig, ClientReply, SimClient
from kvraft.testing.durable_storage import LogImage, SimStorage
from kvraft.testing.invariants import InvariantViolation, SafetyMonitor
from kvraft.testing.kvmodel import KVMachine, decode_batch, encode_batch
from kvraft.testing.linearizability import check
from kvraft.testing.network import NetworkFaults, SimNetwork

CONF = ConfState(voters=("n1", "n2", "n3"))


def ents(term: int, lo: int, hi: int) -> list[Entry]:
    return [Entry(term=term, index=i, data=f"{term}/{i}".encode()) for i in range(lo, hi + 1)]


# --- durable storage ---------------------------------------------------------------------

def test_unsynced_writes_are_lost_on_crash():
    s = SimStorage(CONF, MemoryStorage)
    s.write_entries(ents(1, 1, 3))
    s.write_hard_state(HardState(term=1, vote="n2", commit=2))
    s.sync()
    s.write_entries(ents(2, 3, 5))  # truncates 3 of term 1, unsynced
    s.write_hard_state(HardState(term=2, vote="n3", commit=4))
    assert s.core_storage.last_index() == 5  # the core sees writes before the sync
    s.crash()
    assert s.durable.last_index == 3 and s.durable.term(3) == 1
    assert s.core_storage.last_index() == 3 and s.core_storage.term(3) == 1
    hs, _ = s.core_storage.initial_state()
    assert (hs.term, hs.vote, hs.commit) == (1, "n2", 2)


def test_crash_may_keep_a_torn_prefix_of_unsynced_writes():
    outcomes = set()
    for seed in range(60):
        s = SimStorage(CONF, MemoryStorage)
        s.write_entries(ents(1, 1, 4))
        s.write_hard_state(HardState(term=1, commit=0))
        s.crash(random.Random(seed), torn=True)
        last = s.durable.last_index
        # Whatever survived is a prefix of what was written, in write order.
        assert [e.index for e in s.durable.entries] == list(range(1, last + 1))
        if s.durable.hard_state.term == 1:
            assert last == 4, "the hard state was written after all the entries"
        outcomes.add(last)
    assert {0, 4} <= outcomes and outcomes & {1, 2, 3}, outcomes


def test_compaction_is_durable_and_survives_a_crash():
    s = SimStorage(CONF, MemoryStorage)
    s.write_entries(ents(1, 1, 6))
    snap = s.compact(4, b"state@4")
    assert snap.metadata.index == 4 and snap.metadata.term == 1
    s.crash()
    assert s.durable.base_index == 4 and s.durable.last_index == 6
    assert s.core_storage.first_index() == 5 and s.core_storage.snapshot().data == b"state@4"
    assert s.durable.covers(3, 1) and s.durable.covers(4, 1) and not s.durable.covers(5, 2)


def test_log_image_append_truncates_conflicting_suffix():
    image = LogImage()
    image.append(ents(1, 1, 5))
    image.append(ents(3, 3, 4))
    assert [(e.index, e.term) for e in image.entries] == [(1, 1), (2, 1), (3, 3), (4, 3)]
    with pytest.raises(AssertionError, match="gap"):
        image.append(ents(3, 9, 9))


# --- network -------------------------------------------------------------------------------

def test_partition_shapes():
    net = SimNetwork(("a", "b", "c", "d", "e"), random.Random(1))
    net.partition(("a", "b"))
    assert net.link_up("a", "b") and net.link_up("c", "e")
    assert not net.link_up("a", "c") and not net.link_up("e", "b")
    net.heal()
    net.block("a", "b")
    assert not net.link_up("a", "b") and net.link_up("b", "a")
    net.heal()
    net.bridge(("a", "b"), "c", ("d", "e"))
    assert net.link_up("a", "c") and net.link_up("c", "e") and net.link_up("d", "c")
    assert not net.link_up("a", "d") and not net.link_up("e", "b")
    net.heal()
    net.isolate("c")
    assert not net.link_up("c", "a") and not net.link_up("a", "c") and net.link_up("a", "b")
    with pytest.raises(ValueError, match="unknown node 'z'"):
        net.block("a", "z")


def test_network_faults_are_applied_at_their_rates():
    net = SimNetwork(("a", "b"), random.Random(2),
                     NetworkFaults(drop_rate=0.2, duplicate_rate=0.1, delay_steps_min=1,
                                   delay_steps_max=4))
    fates = [net.send("a", "b") for _ in range(5000)]
    lost = sum(1 for f in fates if not f)
    doubled = sum(1 for f in fates if len(f) == 2)
    assert 800 < lost < 1200 and 300 < doubled < 500
    assert {d for f in fates for d in f} == {1, 2, 3, 4}
    net.block("a", "b")
    assert net.send("a", "b") == [] and net.stats["cut"] == 1


def test_bad_fault_rates_are_refused():
    with pytest.raises(ValueError, match="drop_rate"):
        SimNetwork(("a",), random.Random(), NetworkFaults(drop_rate=1.5))


# --- KV model ------------------------------------------------------------------------------

def test_kv_applies_each_request_once_and_returns_the_first_result():
    kv = KVMachine()
    put = {"c": 1, "r": 1, "f": "put", "k": "x", "v": 5}
    cas = {"c": 2, "r": 1, "f": "cas", "k": "x", "v": [5, 6]}
    assert kv.apply(1, encode_batch([put])) == [(1, 1, True)]
    assert kv.apply(2, encode_batch([cas, put])) == [(2, 1, True), (1, 1, True)]
    assert kv.get("x") == 6, "the retried put must not apply again"
    stale = {"c": 2, "r": 0, "f": "put", "k": "x", "v": 9}
    assert kv.apply(3, encode_batch([stale])) == [(2, 0, None)]
    assert kv.apply(4, b"") == [] and kv.get("x") == 6
    restored = KVMachine.restore(kv.snapshot())
    assert restored.snapshot() == kv.snapshot() and restored.last_applied == 4
    with pytest.raises(AssertionError, match="in order"):
        kv.apply(6, b"")


def test_kv_cas_mismatch_does_not_apply():
    kv = KVMachine()
    assert kv.apply(1, encode_batch([{"c": 1, "r": 1, "f": "cas", "k": "x",
                                      "v": [1, 2]}])) == [(1, 1, False)]
    assert kv.get("x") is None


def test_opaque_payloads_are_not_commands():
    assert decode_batch(b"X") == [] and decode_batch(b"\xc1") == []


# --- safety monitor ------------------------------------------------------------------------

def test_monitor_detects_two_leaders_in_a_term():
    m = SafetyMonitor(("n1", "n2", "n3"))
    assert m.note_leader("n1", 2) and not m.note_leader("n1", 2)
    with pytest.raises(InvariantViolation, match="two leaders in term 2"):
        m.note_leader("n3", 2)


def test_monitor_detects_log_matching_and_apply_violations():
    m = SafetyMonitor(("n1", "n2", "n3"))
    a, b = LogImage(), LogImage()
    a.append(ents(1, 1, 3))
    b.append(ents(1, 1, 2) + [Entry(term=1, index=3, data=b"other")])
    m.note_durable("n1", a, 1)
    with pytest.raises(InvariantViolation, match="log matching"):
        m.note_durable("n2", b, 1)
    m.note_apply("n1", 1, 1, b"x", 0, 1)
    with pytest.raises(InvariantViolation, match="state machine safety"):
        m.note_apply("n2", 1, 1, b"y", 0, 1)
    with pytest.raises(InvariantViolation, match="monotonic"):
        m.note_apply("n1", 3, 1, b"z", 1, 5)
    with pytest.raises(InvariantViolation, match="beyond commit"):
        m.note_apply("n1", 2, 1, b"z", 1, 1)


def test_monitor_detects_lost_committed_entries_and_incomplete_leaders():
    m = SafetyMonitor(("n1", "n2", "n3"))
    logs = {n: LogImage() for n in ("n1", "n2", "n3")}
    logs["n1"].append(ents(1, 1, 2))
    logs["n2"].append(ents(1, 1, 2))
    m.note_commit("n1", 2, 1)
    m.check_committed_durable(logs)
    logs["n2"].append(ents(2, 2, 2))  # overwrites the committed entry
    with pytest.raises(InvariantViolation, match="durable on only"):
        m.check_committed_durable(logs)
    m.note_apply("n1", 1, 1, b"1/1", 0, 2)
    m.note_apply("n1", 2, 1, b"1/2", 1, 2)
    m.check_leader_completeness("n1", 3, logs["n1"], m.max_applied)
    with pytest.raises(InvariantViolation, match="leader completeness"):
        m.check_leader_completeness("n3", 3, logs["n3"], m.max_applied)


def test_violation_message_names_the_seed():
    v = InvariantViolation("election safety", "two leaders").with_seed(42)
    assert "seed 42" in str(v) and v.seed == 42 and v.name == "election safety"


# --- clients -----------------------------------------------------------------------------

class FakeDriver:
    def __init__(self):
        self.now = 0
        self.sent = []
        self.timers = []
        self.wakes = []

    def client_send(self, node, request):
        self.sent.append((node, request))

    def client_timer(self, client, delay, request, attempt):
        self.timers.append((self.now + delay, request, attempt))

    def client_wake(self, client, delay):
        self.wakes.append(self.now + delay)


def make_client(**config):
    driver, history = FakeDriver(), []
    cfg = ClientConfig(read_weight=0, put_weight=1, cas_weight=0, **config)
    return SimClient(1, ("n1", "n2", "n3"), random.Random(3), driver, history, cfg), driver


def test_client_follows_leader_hints_and_records_ok():
    client, driver = make_client()
    client.start_next()
    node, request = driver.sent[-1]
    client.on_reply(ClientReply(1, request.request, request.attempt, "redirect", hint="n3"))
    assert client.leader_guess == "n3"
    driver.now = driver.timers[-1][0]
    client.on_timer(request.request, driver.timers[-1][2])  # the backoff ends
    node, retry = driver.sent[-1]
    assert node == "n3" and retry.request == request.request and retry.attempt == 2
    client.on_reply(ClientReply(1, retry.request, retry.attempt, "ok", True))
    assert [r["type"] for r in client.history] == ["invoke", "ok"]
    assert check(client.history).ok


def test_client_records_fail_only_when_every_attempt_was_refused():
    client, driver = make_client(operation_timeout_steps=10)
    client.start_next()
    _, request = driver.sent[-1]
    driver.now = 50
    client.on_reply(ClientReply(1, request.request, 1, "dropped", "no-leader"))
    assert client.history[-1]["type"] == "fail"

    client, driver = make_client(operation_timeout_steps=10)
    client.start_next()
    _, request = driver.sent[-1]
    driver.now = 400
    client.on_timer(request.request, 1)  # the attempt timed out: its fate is unknown
    assert client.history[-1]["type"] == "info"

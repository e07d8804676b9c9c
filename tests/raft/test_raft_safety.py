"""Safety (Raft 5.4): only current-term entries commit by counting (Figure 8), the
election restriction, and state-machine safety under a seeded random schedule."""

import random

from raft_harness import Cluster, make_core, persist_and_advance, storage_with

from kvraft.raft import Message, MsgType, ProposalDropped, Role

FIVE = ("n1", "n2", "n3", "n4", "n5")


def strip_term(term):
    """An intercept that removes entries of ``term`` from MsgApps (they are 'lost')."""
    def intercept(m):
        if m.type == MsgType.MsgApp:
            m.entries = [e for e in m.entries if e.term != term]
        return m
    return intercept


def win(c, node):
    """Campaign until ``node`` leads (a first attempt may lose to a voted term)."""
    for _ in range(5):
        c.core(node).campaign()
        c.stabilize()
        if c.core(node).role == Role.Leader:
            return
    raise AssertionError(f"{node} could not win: {c.core(node).status()}")


def figure8_until_c(c):
    """Figure 8 (a)-(c), terms renumbered: S1 leads term 1 and puts index 2 on S2; S5
    leads term 2 with S3, S4 and writes index 2 alone; S1 leads term 3 and puts its
    term-1 index 2 on a majority (S1, S2, S3)."""
    c.elect("n1")
    c.partition(["n1", "n2"], ["n3", "n4", "n5"])
    c.propose("n1", b"from-term-1")
    c.stabilize()
    c.core("n5").campaign()
    c.drain("n5")
    c.deliver()
    for node in ("n3", "n4"):
        c.drain(node)
    c.deliver()
    assert c.core("n5").role == Role.Leader and c.core("n5").term == 2
    c.isolate("n5")  # its no-op at index 2 (term 2) never leaves
    c.stabilize()
    c.restart("n5")  # S5 crashes (and is back, isolated, as a follower)
    c.partition(["n1", "n2", "n3"], ["n4"], ["n5"])
    c.restart("n1")  # S1 crashed and comes back as a follower of term 1
    c.intercept = strip_term(3)  # S1's own term-3 entries get lost on the way
    win(c, "n1")
    assert c.core("n1").term == 3
    return c.core("n1")


def test_safety_5_4_2_figure8_old_term_entry_on_a_majority_is_not_committed():
    c = Cluster(FIVE, pre_vote=False, check_quorum=False)
    leader = figure8_until_c(c)
    progress = leader.tracker.progress
    assert (progress["n2"].match, progress["n3"].match) == (2, 2)
    assert leader.log.term(2) == 1
    assert leader.log.committed == 1, "index 2 is on a majority but of an older term"
    # (d): S1 crashes; S5 wins with S2, S3, S4 and overwrites index 2 everywhere.
    c.intercept = None
    c.down.add("n1")
    c.partition(["n2", "n3", "n4", "n5"], ["n1"])
    win(c, "n5")
    c.propose("n5", b"from-term-4")
    c.stabilize()
    for node in ("n2", "n3", "n4", "n5"):
        assert c.storage[node].term(2) == 2
        assert b"from-term-1" not in c.applied_data(node)
        assert c.applied_data(node) == [b"from-term-4"]


def test_safety_5_4_2_figure8_current_term_entry_commits_the_old_one():
    c = Cluster(FIVE, pre_vote=False, check_quorum=False)
    leader = figure8_until_c(c)
    c.intercept = None  # (e): S1's term-3 entry reaches the majority
    c.tick("n1")
    c.stabilize()
    assert leader.log.committed == 3
    assert c.applied_data("n2") == [b"from-term-1"]
    c.down.add("n1")
    c.partition(["n2", "n3", "n4", "n5"], ["n1"])
    for _ in range(5):
        c.core("n5").campaign()
        c.stabilize()
    assert c.core("n5").role != Role.Leader, "S5's log is now behind a majority"


def test_safety_5_4_2_leader_counts_replicas_only_for_its_own_term():
    s = storage_with([(1, 1), (2, 2)], term=2)
    core = make_core("n1", ("n1", "n2", "n3"), s, pre_vote=False)
    core.campaign()
    persist_and_advance(core, s)
    core.step(Message(type=MsgType.MsgVoteResp, frm="n2", to="n1", term=3))
    assert core.role == Role.Leader
    persist_and_advance(core, s)
    core.step(Message(type=MsgType.MsgAppResp, frm="n2", to="n1", term=3, index=2))
    assert core.log.committed == 0, "entry 2 (term 2) cannot commit by counting"
    core.step(Message(type=MsgType.MsgAppResp, frm="n2", to="n1", term=3, index=3))
    assert core.log.committed == 3, "the term-3 no-op commits itself and entry 2"


def test_safety_5_4_1_a_node_missing_committed_entries_cannot_win():
    c = Cluster(("n1", "n2", "n3"), pre_vote=False)
    c.elect("n1")
    c.isolate("n3")
    c.propose("n1", b"committed")
    c.stabilize()
    c.heal()
    c.down.add("n1")
    for _ in range(5):
        c.core("n3").campaign()
        c.stabilize()
        assert c.core("n3").role != Role.Leader


def test_safety_5_4_3_random_schedule_keeps_applied_logs_prefix_consistent():
    for seed in range(4):
        rng = random.Random(seed)
        c = Cluster(FIVE)
        proposed = 0
        for _ in range(400):
            action = rng.random()
            if action < 0.05:
                nodes = list(FIVE)
                rng.shuffle(nodes)
                cut = rng.randrange(1, 5)
                c.partition(nodes[:cut], nodes[cut:])
            elif action < 0.10:
                c.heal()
            elif action < 0.45:
                leaders = c.leaders()
                if leaders:
                    try:
                        c.propose(rng.choice(leaders), b"v%d" % proposed)
                        proposed += 1
                    except ProposalDropped:
                        pass
            for node in FIVE:
                c.tick(node)
            c.stabilize()
            terms = {}
            for node in FIVE:
                core = c.core(node)
                if core.role == Role.Leader:
                    assert terms.setdefault(core.term, node) == node, "two leaders in a term"
        c.heal()
        for _ in range(40):
            for node in FIVE:
                c.tick(node)
            c.stabilize()
        applied = [[(e.index, e.term, e.data) for e in c.applied[n]] for n in FIVE]
        longest = max(applied, key=len)
        for log in applied:
            assert log == longest[:len(log)], f"seed {seed}: applied logs diverge"
        committed_payloads = [data for _, _, data in longest if data]
        assert proposed > 20 and len(committed_payloads) > 10, "the schedule made progress"

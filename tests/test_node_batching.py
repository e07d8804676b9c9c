"""A leader's write batching: while its last batch is not yet committed, the writes that
arrive wait (up to ``raft.proposal_hold_ms``) and then go out together as one entry."""

import msgpack
import pytest
from test_node_support import NodeCluster

from kvraft.client.errors import BackendError, NoLeaderError
from kvraft.node import gather_pace_slack, gather_spread_share
from kvraft.raft import Role


def _leader(cluster):
    cluster.run_until(lambda: any(n.role == Role.Leader for n in cluster.nodes.values()),
                      what="a leader")
    return next(n for n in cluster.nodes.values() if n.role == Role.Leader)


def _cut_off_followers(cluster, leader):
    for other in cluster.nodes:
        if other != leader.node_id:
            cluster.net.blocked.add((leader.node_id, other))


def _first_batch_stuck(cluster, leader, answers) -> int:
    """Propose write "a" with the followers cut off, so that it cannot commit for now;
    the leader's last log index after it."""
    _cut_off_followers(cluster, leader)
    leader.submit_write([b"SET", b"a", b"1"], answers, "a")
    cluster.reactor.advance(0)
    return leader.core.log.last_index()


@pytest.fixture
def answers():
    got = {}

    def done(token, result):
        assert token not in got, f"{token} answered twice"
        got[token] = result
    done.got = got
    return done


def test_writes_that_arrive_while_the_last_batch_commits_wait_and_go_out_as_one_entry(
        tmp_path, answers):
    cluster = NodeCluster(tmp_path, raft={"proposal_hold_ms": 50})
    try:
        leader = _leader(cluster)
        first = _first_batch_stuck(cluster, leader, answers)
        for i in range(5):
            leader.submit_write([b"SET", b"k%d" % i, b"v"], answers, i)
            cluster.reactor.advance(0.005)
        assert leader.core.log.last_index() == first  # held behind "a"
        cluster.reactor.advance(0.05)  # the hold ends: one entry for all five
        assert leader.core.log.last_index() == first + 1
        cluster.net.heal()
        cluster.run_until(lambda: len(answers.got) == 6, what="all answered")
        assert all(str(result) == "OK" for result in answers.got.values())
    finally:
        cluster.close()


def test_the_next_batch_goes_out_as_soon_as_the_last_one_is_applied(tmp_path, answers):
    cluster = NodeCluster(tmp_path, raft={"proposal_hold_ms": 10_000})
    try:
        leader = _leader(cluster)
        leader.submit_write([b"SET", b"a", b"1"], answers, "a")
        leader.submit_write([b"SET", b"b", b"1"], answers, "b")
        cluster.reactor.advance(0)  # commits at once here: no hold is waited out
        leader.submit_write([b"SET", b"c", b"1"], answers, "c")
        cluster.reactor.advance(0)
        assert set(answers.got) == {"a", "b", "c"}
    finally:
        cluster.close()


def test_the_next_batch_leaves_before_the_committed_one_is_applied(tmp_path):
    cluster = NodeCluster(tmp_path, raft={"proposal_hold_ms": 10_000})
    try:
        leader = _leader(cluster)
        held = []  # the followers' messages to the leader, delivered later
        cluster.net.filter = lambda m: held.append(m) if m.to == leader.node_id else m
        seen = {}

        def done(token, result):
            seen[token] = (str(result), leader.core.log.last_index())

        leader.submit_write([b"SET", b"a", b"1"], done, "a")
        cluster.reactor.advance(0)
        a_index = leader.core.log.last_index()
        leader.submit_write([b"SET", b"b", b"1"], done, "b")
        cluster.reactor.advance(0)
        assert leader.core.log.last_index() == a_index, "b not held while a commits"
        cluster.net.filter = None
        for m in held:
            cluster.net.deliver(m.frm, m)
        cluster.run_until(lambda: "a" in seen, what="a answered")
        # When a's client hears OK, b is in the log already: proposed (and sent) in
        # the turn that committed a, before a was applied.
        assert seen["a"] == ("OK", a_index + 1)
        cluster.run_until(lambda: "b" in seen, what="b answered")
        assert seen["b"][0] == "OK"
    finally:
        cluster.close()


def test_no_hold_proposes_each_turn(tmp_path, answers):
    cluster = NodeCluster(tmp_path, raft={"proposal_hold_ms": 0})
    try:
        leader = _leader(cluster)
        first = _first_batch_stuck(cluster, leader, answers)
        for i in range(3):
            leader.submit_write([b"SET", b"k%d" % i, b"v"], answers, i)
            cluster.reactor.advance(0)
        assert leader.core.log.last_index() == first + 3
        cluster.net.heal()
        cluster.run_until(lambda: len(answers.got) == 4, what="all answered")
    finally:
        cluster.close()


def _entry_sizes(leader, after: int) -> list[int]:
    """Commands per entry in the leader's log after index ``after``."""
    log = leader.core.log
    entries = log.slice(after + 1, log.last_index() + 1)
    return [len(msgpack.unpackb(e.data, raw=False)[2]) for e in entries if e.data]


@pytest.fixture
def make_cluster(tmp_path):
    """``make_cluster(**raft)``: a NodeCluster closed when the test ends."""
    made = []

    def make(**raft):
        made.append(NodeCluster(tmp_path, raft=raft))
        return made[-1]
    yield make
    for cluster in made:
        cluster.close()


def _a_follower(cluster, leader):
    return next(n for n in cluster.nodes.values() if n is not leader)


def test_a_group_of_writes_is_answered_once_with_every_result_in_order(make_cluster, answers):
    cluster = make_cluster()
    leader = _leader(cluster)
    leader.submit_write([b"SET", b"x", b"1"], answers, "single")
    leader.submit_writes([[b"SET", b"x", b"2"], [b"INCRBY", b"x", b"5"],
                          [b"SET", b"x", b"3", b"NX"]], answers, "group")
    leader.submit_write([b"INCRBY", b"x", b"1"], answers, "after")
    cluster.run_until(lambda: len(answers.got) == 3, what="all answered")
    assert str(answers.got["single"]) == "OK"
    group = answers.got["group"]
    assert [str(group[0]), group[1], group[2]] == ["OK", 7, None]
    assert answers.got["after"] == 8  # in the log after the whole group


def test_a_batch_is_cut_before_a_group_that_would_pass_batch_commands_max(
        make_cluster, answers):
    cluster = make_cluster(batch_commands_max=4)
    leader = _leader(cluster)
    first = _first_batch_stuck(cluster, leader, answers)  # later writes wait
    leader.submit_writes([[b"SET", b"a%d" % i, b"v"] for i in range(3)], answers, "g1")
    leader.submit_writes([[b"SET", b"b%d" % i, b"v"] for i in range(3)], answers, "g2")
    cluster.net.heal()
    cluster.run_until(lambda: len(answers.got) == 3, what="all answered")
    assert _entry_sizes(leader, first) == [3, 3]  # never 4 + 2: a group stays whole
    assert [str(r) for r in answers.got["g2"]] == ["OK"] * 3


def test_writes_beyond_batch_bytes_max_go_into_several_entries_and_all_succeed(
        make_cluster, answers):
    # Twenty 100 kB values (2 MB) in one turn: one entry would pass max_msg_bytes
    # (1 MiB) and the core would refuse it whole ("too-large").
    cluster = make_cluster(batch_bytes_max=300_000)
    leader = _leader(cluster)
    first = leader.core.log.last_index()
    for i in range(20):
        leader.submit_write([b"SET", b"big%d" % i, b"v" * 100_000], answers, i)
    cluster.run_until(lambda: len(answers.got) == 20, what="all answered")
    assert all(str(result) == "OK" for result in answers.got.values()), answers.got
    sizes = _entry_sizes(leader, first)
    assert sum(sizes) == 20 and max(sizes) <= 3


def test_a_refused_group_gets_one_error_for_all_its_commands(make_cluster, answers):
    cluster = make_cluster()
    leader = _leader(cluster)
    follower = _a_follower(cluster, leader)
    for other in cluster.nodes:
        cluster.net.isolate(other)
    cluster.run_until(lambda: follower.core.lead == "", seconds=60,
                      what="the follower to lose its leader")
    follower.submit_writes([[b"SET", b"a", b"1"], [b"SET", b"b", b"1"]], answers, "g")
    cluster.run_until(lambda: "g" in answers.got, seconds=60, what="an answer")
    assert isinstance(answers.got["g"], NoLeaderError)


def test_a_group_of_reads_is_answered_once_after_its_readindex_round(make_cluster, answers):
    cluster = make_cluster()
    leader = _leader(cluster)
    leader.submit_writes([[b"SET", b"a", b"1"], [b"SET", b"b", b"2"]], answers, "w")
    cluster.run_until(lambda: "w" in answers.got, what="the writes")
    follower = _a_follower(cluster, leader)
    follower.submit_reads([[b"GET", b"a"], [b"GET", b"missing"], [b"GET", b"b"]], True,
                          answers, "r")
    cluster.run_until(lambda: "r" in answers.got, what="the reads")
    assert answers.got["r"] == [b"1", None, b"2"]


def test_a_read_the_machine_fails_on_is_answered_with_an_error_and_the_rest_normally(
        make_cluster, answers, monkeypatch):
    cluster = make_cluster()
    leader = _leader(cluster)
    query = leader.machine.query

    def broken(command):
        if command[1] == b"bad":
            raise RuntimeError("a state machine bug")
        return query(command)
    monkeypatch.setattr(leader.machine, "query", broken)
    leader.submit_read([b"GET", b"a"], True, answers, "a")
    leader.submit_reads([[b"GET", b"bad"], [b"GET", b"b"]], True, answers, "group")
    cluster.run_until(lambda: len(answers.got) == 2, what="both answered")
    assert answers.got["a"] is None
    bad, b = answers.got["group"]
    assert isinstance(bad, BackendError) and b is None


def test_a_stale_read_group_the_machine_fails_on_is_answered_too(make_cluster, answers,
                                                                 monkeypatch):
    cluster = make_cluster()
    leader = _leader(cluster)
    monkeypatch.setattr(leader.machine, "query", lambda command: 1 / 0)
    leader.submit_reads([[b"GET", b"a"]], False, answers, "stale")  # READONLY: at once
    (error,) = answers.got["stale"]
    assert isinstance(error, BackendError)


# -- the gather: a closed loop of clients makes one entry per round -----------------------

gather_s = 0.005  # raft.proposal_gather_ms in these tests
spread_s = gather_s * gather_spread_share  # ... probed clients come back this far apart
client_turn_s = 0.0002  # how long client i takes to send again: (i + 1) of these
loop_step_s = 0.0001  # ClosedLoop.run_answers advances the clock by this much at a time
loop_stall_s = 5.0  # ... and fails if the answers it waits for take this long
hold_ms = 10_000  # raft.proposal_hold_ms: so long that only a commit or a gather ends a hold


def _gathering_cluster(make_cluster, gather_ms: float = gather_s * 1000):
    """A cluster whose leader gathers for ``gather_ms`` (0: never)."""
    return make_cluster(proposal_hold_ms=hold_ms, proposal_gather_ms=gather_ms)


class ClosedLoop:
    """Clients that each send their next write a little after their last one was
    answered, like a worker pool or redis-benchmark; ``stop(i)`` makes client i go
    idle. Each answer is recorded as (client, seconds from its submit to its answer), and
    each answer that is not OK in ``errors`` (the client then stops)."""

    def __init__(self, cluster, leader, clients: int, turn_s: float = client_turn_s):
        self.cluster, self.leader = cluster, leader
        self.turn_s = turn_s
        self.running = set(range(clients))
        self.latencies: list[tuple[int, float]] = []
        self.errors: list = []
        self.sent_s: dict[int, float] = {}
        self.answered_s: dict[int, float] = {}
        self.count = 0
        for client in range(clients):
            self.send(client)

    def send(self, client: int) -> None:
        self.count += 1
        if client in self.answered_s:  # as the client port tells the node
            self.leader.client_returned(self.answered_s.pop(client))
        self.sent_s[client] = self.cluster.reactor.seconds()
        self.leader.submit_write([b"SET", b"c%d" % client, b"%d" % self.count],
                                 self.answered, client)

    def answered(self, client: int, result) -> None:
        if str(result) != "OK":
            self.errors.append(result)
            return
        now = self.answered_s[client] = self.cluster.reactor.seconds()
        self.latencies.append((client, now - self.sent_s[client]))
        if client in self.running:
            self.cluster.reactor.callLater(self.turn_s * (client + 1), self.send, client)

    def stop(self, client: int) -> None:
        self.running.discard(client)

    def run_answers(self, count: int) -> list[tuple[int, float]]:
        """Advance the clock in small steps until ``count`` more answers came."""
        start = len(self.latencies)
        deadline = self.cluster.reactor.seconds() + loop_stall_s
        while len(self.latencies) < start + count:
            assert not self.errors, self.errors
            assert self.cluster.reactor.seconds() < deadline, "the clients stalled"
            self.cluster.reactor.advance(loop_step_s)
        return self.latencies[start:start + count]


def _loop_gone_quiet(make_cluster, clients: int):
    """A gathering cluster and its leader just after answering the last round of a
    closed loop of ``clients`` that all went idle: none of them comes back."""
    cluster = _gathering_cluster(make_cluster)
    leader = _leader(cluster)
    loop = ClosedLoop(cluster, leader, clients=clients)
    loop.run_answers(clients * 3)
    for client in range(clients):
        loop.stop(client)
    loop.run_answers(clients)  # the last round
    return cluster, leader


def test_a_leader_gathers_a_closed_loop_of_clients_into_one_entry_per_round(make_cluster):
    cluster = _gathering_cluster(make_cluster)
    leader = _leader(cluster)
    loop = ClosedLoop(cluster, leader, clients=4)
    loop.run_answers(8)  # the first rounds show the leader that its clients come back
    first = leader.core.log.last_index()
    loop.run_answers(20)
    sizes = _entry_sizes(leader, first)
    assert sizes[:4] == [4, 4, 4, 4], sizes  # each round one entry: all four clients
    assert leader.metrics.proposal_gathers["returned"] >= 4
    assert leader.metrics.proposal_gathers["timeout"] == 0


def test_without_a_gather_a_closed_loop_splits_into_smaller_entries(make_cluster):
    cluster = _gathering_cluster(make_cluster, gather_ms=0)
    leader = _leader(cluster)
    loop = ClosedLoop(cluster, leader, clients=4)
    loop.run_answers(8)
    first = leader.core.log.last_index()
    loop.run_answers(20)
    # Each write goes out with those that came back while the last entry committed:
    # the loop splits into cohorts, and 20 writes take more than 5 entries of 4.
    sizes = _entry_sizes(leader, first)
    assert len(sizes) >= 7 and sizes.count(4) < 5, sizes
    assert not leader.metrics.proposal_gathers


def test_a_gather_for_clients_that_went_idle_ends_once_the_rest_fall_behind_and_stops(
        make_cluster):
    cluster = _gathering_cluster(make_cluster)
    leader = _leader(cluster)
    loop = ClosedLoop(cluster, leader, clients=8)
    loop.run_answers(24)
    for client in (4, 5, 6, 7):
        loop.stop(client)
    loop.run_answers(8)  # the round in which clients 4 to 7 are answered the last time
    # Clients 0 to 3 come back at once; the leader waits for 4 to 7 only while they
    # could still be a closed loop's stragglers (gather_pace_slack clients' worth of
    # spread after the four), then proposes the four writes it has: long before the
    # gather time.
    waited = loop.run_answers(4)
    assert leader.metrics.proposal_gathers["behind"] == 1
    assert leader.metrics.proposal_gathers["timeout"] == 0
    pace_s = (4 - 1 + gather_pace_slack) * spread_s
    assert min(latency for _, latency in waited) >= pace_s - client_turn_s * 4, waited
    assert max(latency for _, latency in waited) < gather_s / 2, waited
    # Fewer than gather_keep_share came back: gathering stopped. The next write goes
    # out alone, as soon as its client is back; then, once an answer to the four saw
    # them come back together, it gathers again, and their rounds are answered within
    # a fraction of the gather time.
    after = leader.core.log.last_index()
    later = loop.run_answers(16)
    sizes = _entry_sizes(leader, after)
    assert sizes[0] == 1 and sizes[-3:] == [4, 4, 4], sizes
    assert max(latency for _, latency in later) < gather_s / 2, later
    assert leader.metrics.proposal_gathers["behind"] == 1


def test_a_gather_waits_up_to_proposal_gather_ms_for_the_first_client(make_cluster,
                                                                        answers):
    cluster, leader = _loop_gone_quiet(make_cluster, clients=4)
    answered_s = cluster.reactor.seconds()
    # A client answered long ago writes: it is not one of those due, and none of them
    # is back to set a pace, so the write waits out the gather time.
    before = leader.core.log.last_index()
    leader.client_returned(0.0)
    leader.submit_write([b"SET", b"other", b"1"], answers, "other")
    while leader.core.log.last_index() == before:
        assert cluster.reactor.seconds() - answered_s < loop_stall_s, "never proposed"
        cluster.reactor.advance(loop_step_s)
    assert cluster.reactor.seconds() - answered_s >= gather_s - loop_step_s
    assert leader.metrics.proposal_gathers["timeout"] == 1
    assert leader.metrics.proposal_gathers["behind"] == 0


def test_a_gather_that_ends_with_most_clients_back_goes_on_gathering(make_cluster):
    cluster = _gathering_cluster(make_cluster)
    leader = _leader(cluster)
    loop = ClosedLoop(cluster, leader, clients=4)
    loop.run_answers(12)
    loop.stop(3)
    loop.run_answers(4)
    loop.run_answers(3)  # held until the gather ended: client 3 never came back
    assert leader.metrics.proposal_gathers["behind"] == 1
    # Three of four came back, together: the leader goes on gathering, and each round
    # of the three is one entry.
    after = leader.core.log.last_index()
    loop.run_answers(9)
    assert _entry_sizes(leader, after)[:3] == [3, 3, 3]
    assert leader.metrics.proposal_gathers["behind"] == 1


def test_a_request_that_does_not_follow_its_answer_does_not_end_a_gather(
        make_cluster, answers):
    cluster = _gathering_cluster(make_cluster)
    leader = _leader(cluster)
    loop = ClosedLoop(cluster, leader, clients=4)
    loop.run_answers(12)
    loop.stop(3)
    loop.run_answers(4)  # the round in which client 3 is answered the last time
    # Instead of client 3, a client answered long ago writes: not one of those due.
    leader.client_returned(0.0)
    leader.submit_write([b"SET", b"other", b"1"], answers, "other")
    loop.run_answers(3)
    assert leader.metrics.proposal_gathers["behind"] == 1  # client 3 is still due
    assert leader.metrics.proposal_gathers["returned"] >= 2


def test_clients_that_trickle_back_one_by_one_are_not_gathered(make_cluster):
    # Each client comes back within the gather time, but the clients of an answer come
    # back further apart than a closed loop's: what requests that only happen to follow
    # answers look like (an open-loop load on a pool of connections).
    cluster = _gathering_cluster(make_cluster)
    leader = _leader(cluster)
    loop = ClosedLoop(cluster, leader, clients=5, turn_s=spread_s * 2)
    assert loop.turn_s * 5 < gather_s
    loop.run_answers(60)
    assert not leader.metrics.proposal_gathers


def test_gathering_stops_when_the_clients_start_to_trickle_back(make_cluster):
    cluster = _gathering_cluster(make_cluster)
    leader = _leader(cluster)
    loop = ClosedLoop(cluster, leader, clients=4)
    loop.run_answers(12)
    assert leader.metrics.proposal_gathers["returned"] >= 1  # gathering
    # From their next answer on, the clients still come back within the gather time,
    # but one by one: the gather for the round already on its way, and the one that
    # sees them trickle back, are the last of ten rounds.
    loop.turn_s = spread_s * 2
    assert loop.turn_s * 4 < gather_s
    gathers = sum(leader.metrics.proposal_gathers.values())
    loop.run_answers(40)
    assert sum(leader.metrics.proposal_gathers.values()) <= gathers + 2


def test_a_write_after_the_clients_went_quiet_is_proposed_at_once(make_cluster, answers):
    cluster, leader = _loop_gone_quiet(make_cluster, clients=3)
    cluster.reactor.advance(1.0)  # quiet: none of the answered clients came back
    before = leader.core.log.last_index()
    leader.submit_write([b"SET", b"late", b"1"], answers, "late")
    cluster.reactor.advance(0)
    assert leader.core.log.last_index() == before + 1  # not held for the quiet clients
    cluster.run_until(lambda: "late" in answers.got, what="the late write")

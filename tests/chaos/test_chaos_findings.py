"""Minimal reproductions of what the chaos harness found in the product.

Each test asserts the behaviour the product should have and is marked
``xfail(strict=True)`` while the bug is open: when a fix lands the test passes, strict
xfail turns that into a failure, and whoever fixed it removes the marker. The ones that
need real processes are also ``slow`` (``pytest --runslow tests/chaos``).
"""

import random
import time

import pytest
from twisted.internet.testing import MemoryReactorClock, StringTransportWithDisconnection

from kvraft import certs, tls
from kvraft.devcluster import LocalCluster
from kvraft.peer.codec import encode_hello, encode_message
from kvraft.peer.transport import PeerTransport, _LinkFactory
from kvraft.raft import MemoryStorage, RaftConfig, RaftCore
from kvraft.raft.types import Entry, Message, MsgType
from kvraft.testing.chaos.client import RespClient
from kvraft.testing.chaos.nemesis import tear_wal

CLUSTER = "findings"


def _follower(node_id: str, leader: str) -> RaftCore:
    """A follower of a 3-node cluster n1..n3 that knows ``leader`` leads term 1."""
    core = RaftCore(RaftConfig(id=node_id, voters=("n1", "n2", "n3"), election_ticks=10,
                               heartbeat_ticks=1, seed=1), MemoryStorage())
    core.step(Message(type=MsgType.MsgHeartbeat, to=node_id, frm=leader, term=1))
    while core.has_ready():
        core.advance(core.ready())
    return core


def _sent(core: RaftCore) -> list[Message]:
    messages = []
    while core.has_ready():
        rd = core.ready()
        messages += rd.messages + rd.messages_after_persist
        core.advance(rd)
    return messages


def test_a_proposal_forwarded_twice_reaches_the_leader(tmp_path):
    """Seen in chaos runs after partitions heal (``bad frame (wrong sender): a message
    from 'n2' on the link of 'n3'``): n2 forwarded a client write to n3, which it still
    took for the leader; n3, now a follower of n1, forwards it on with ``frm`` still
    ``n2``; n1's peer layer checks ``frm`` against the authenticated peer (n3) and
    closes the link. Everything queued on the link is lost (the write times out after
    5 s: the client sees -TIMEOUT, and recovery after a heal takes 5 s instead of
    milliseconds). MsgReadIndex and MsgTransferLeader are forwarded the same way."""
    n3 = _follower("n3", leader="n1")
    n3.step(Message(type=MsgType.MsgProp, to="n3", frm="n2",
                    entries=[Entry(term=0, index=0, data=b"client write")]))
    forwarded = [m for m in _sent(n3) if m.type == MsgType.MsgProp]
    assert [(m.frm, m.to) for m in forwarded] == [("n2", "n1")]

    # n1 receives it on the link n3 dialed.
    certs.init_ca(tmp_path)
    certs.issue_node(tmp_path, "n1", local_dev=True)
    received: list[Message] = []
    n1 = PeerTransport("n1", {"n2": ("127.0.0.1", 1), "n3": ("127.0.0.1", 2)},
                       tls.TLSCredentials(tmp_path / "ca.pem", tmp_path / "n1.pem",
                                          tmp_path / "n1-key.pem"),
                       received.append, reactor=MemoryReactorClock(), cluster=CLUSTER)
    n1.check_identity = lambda link, claimed: None  # the TLS layer is not under test
    link = _LinkFactory(n1, None).buildProtocol(None)
    wire = StringTransportWithDisconnection()
    wire.protocol = link
    link.makeConnection(wire)
    link.dataReceived(encode_hello("n3", CLUSTER))
    link.dataReceived(encode_message(forwarded[0]))
    assert wire.connected, "n1 closed n3's link over a forwarded proposal"
    assert [m.type for m in received] == [MsgType.MsgProp]


def _cluster(tmp_path) -> LocalCluster:
    cluster = LocalCluster(tmp_path / "cluster", size=3,
                           raft={"election_timeout_ms": 600, "heartbeat_interval_ms": 100})
    cluster.prepare()
    cluster.start_all()
    return cluster


def _call(cluster: LocalCluster, node: str, *args, timeout_s: float = 10.0):
    conn = RespClient(cluster.host, cluster.nodes[node].plain_port, timeout_s=timeout_s)
    try:
        return conn.call(*args)
    finally:
        conn.close()


def _applied(cluster: LocalCluster, node: str) -> int:
    return int(cluster.info(node)["raft_applied_index"])


def _wait(predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


@pytest.mark.slow
@pytest.mark.integration
def test_a_follower_that_lost_its_log_tail_recovers_or_stops(tmp_path):
    """Seen when the torn-WAL nemesis cut bytes off the last complete record (not a
    legal fault: that entry had been synced and acknowledged; the nemesis no longer
    does it). The follower restarts one entry short; the leader's heartbeats carry
    ``commit = min(match, committed)``, one past the follower's log, and the core
    raises ``commit index N is beyond the last index N-1`` on every one. The node
    catches the error per message (``kvraft.node: dropping a message the core
    refused``), never answers a heartbeat, so the leader never probes it again: it
    stays a zombie member, logs a traceback per heartbeat, and its clients' reads time
    out. etcd panics here. Either outcome is acceptable; silence is not. Fixed: the core
    raises ``LogLostError`` and the node stops with a critical log line saying what to
    do (tests/test_node_log_lost.py)."""
    cluster = _cluster(tmp_path)
    try:
        leader = cluster.wait_for_leader()
        for i in range(20):
            assert _call(cluster, leader, b"SET", f"k{i}", "v") == "OK"
        follower = next(n for n in cluster.nodes if n != leader)
        target = _applied(cluster, leader)
        assert _wait(lambda: _applied(cluster, follower) >= target, 10)
        cluster.kill(follower)
        tear_wal(cluster.nodes[follower].data_dir, random.Random(1), cut_complete=True)
        cluster.start(follower)
        for i in range(5):
            assert _call(cluster, leader, b"SET", f"after{i}", "v") == "OK"
        target = _applied(cluster, leader)

        def caught_up_or_stopped():
            if not cluster.running(follower):
                return True
            try:
                return _applied(cluster, follower) >= target
            except (OSError, RuntimeError):
                return False

        assert _wait(caught_up_or_stopped, 15), (
            f"{follower} neither caught up nor stopped:\n"
            f"{cluster.tail_log(follower, lines=8)}")
    finally:
        cluster.close()


@pytest.mark.slow
@pytest.mark.integration
def test_removing_the_leader_is_answered_once_in_effect(tmp_path):
    """Seen in the membership nemesis: RAFT.REMOVE <leader> sent to the leader took
    effect within a second (it handed leadership to a remaining voter, which committed
    C_new), but the command was answered only when ``change_timeout_s`` (60 s) expired:
    the removed node never learns that C_new committed, since the new leader does not
    replicate to a non-member."""
    cluster = _cluster(tmp_path)
    try:
        leader = cluster.wait_for_leader()
        assert _call(cluster, leader, b"SET", b"k", b"v") == "OK"
        started = time.monotonic()
        reply = None
        try:
            reply = _call(cluster, leader, b"RAFT.REMOVE", leader, timeout_s=15)
        except Exception as e:  # noqa: BLE001 - the reply's absence is the finding
            reply = e
        took = time.monotonic() - started
        assert reply == "OK" and took < 10, f"answered {reply!r} after {took:.1f} s"
        # OK means C_old,new committed (the node being removed may never see C_new
        # applied: the new leader stops talking to it). C_new then follows at once.
        others = [n for n in cluster.nodes if n != leader]

        def removed():
            try:
                members = _call(cluster, cluster.wait_for_leader(among=others),
                                b"RAFT.MEMBERS")
            except Exception:  # noqa: BLE001 - mid-election: no leader, or no answer yet
                return False
            return leader.encode() not in [row[1] for row in members]

        assert _wait(removed, 10), "the removal did not complete"
    finally:
        cluster.close()

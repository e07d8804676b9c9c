"""InstallSnapshot as a chunk stream (kvraft.snapshot_stream): a follower that missed
compacted entries gets the leader's snapshot in bounded chunks with flow control, a
checksum, and retries after any fault (Raft section 7)."""

import dataclasses

import pytest
from test_node_support import NodeCluster

from kvraft import snapshot_stream
from kvraft.raft import MsgType, ProgressState

SMALL = {"snapshot_entries": 20, "compaction_margin_entries": 5}


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(snapshot_stream, "chunk_bytes_max", 512)
    monkeypatch.setattr(snapshot_stream, "inflight_bytes_max", 2048)


def lagging_cluster(tmp_path, writes=120):
    """n3 is cut off while the others write and compact beyond its log."""
    c = NodeCluster(tmp_path, raft=SMALL)
    leader = c.wait_leader()
    lagger = next(n for n in c.nodes if n != leader)
    c.net.isolate(lagger)
    c.run(0.5)
    for i in range(writes):
        c.write(leader, b"SET", b"key-%d" % i, b"value-%d" % i * 3)
    node = c.nodes[leader]
    c.run_until(lambda: node.storage.log.first_index() > c.nodes[lagger].machine.last_applied
                + 1, what="the leader compacted past the lagging node")
    return c, leader, lagger


def chunks_and_answers(c, lagger):
    chunks = [m for m in c.net.sent if m.type == MsgType.MsgSnapChunk and m.to == lagger]
    answers = [m for m in c.net.sent if m.type == MsgType.MsgSnapChunkResp and m.frm == lagger]
    return chunks, answers


def test_a_lagging_follower_is_caught_up_by_a_streamed_snapshot(tmp_path, small_chunks):
    c, leader, lagger = lagging_cluster(tmp_path)
    try:
        c.net.heal()
        c.run_until(lambda: c.caught_up(leader, lagger), what="the follower caught up")
        assert c.digest(lagger) == c.digest(leader)
        node = c.nodes[lagger]
        meta = node.snapshotter.meta
        assert node.storage.log.first_index() >= meta.index + 1 > 2
        assert node.machine.query([b"GET", b"key-0"]) == b"value-0" * 3
        chunks, answers = chunks_and_answers(c, lagger)
        assert len(chunks) > 4, "the body travelled in several chunks"
        assert all(len(m.snapshot.data) <= 512 for m in chunks)
        assert chunks[-1].context and not any(m.context for m in chunks[:-1])
        assert answers[-1].context == snapshot_stream.INSTALLED
        # Flow control: never more than inflight_bytes_max sent and not acknowledged.
        sent = acked = worst = 0
        for m in c.net.sent:
            if m.type == MsgType.MsgSnapChunk and m.to == lagger:
                sent = m.index + len(m.snapshot.data)
                worst = max(worst, sent - acked)
            elif m.type == MsgType.MsgSnapChunkResp and m.frm == lagger:
                acked = max(acked, m.index)
        assert 0 < worst <= 2048
        pr = c.nodes[leader].core.tracker.progress[lagger]
        assert pr.state == ProgressState.Replicate
        # And it keeps up from the log afterwards.
        c.write(leader, b"SET", b"after", b"1")
        c.run_until(lambda: node.machine.query([b"GET", b"after"]) == b"1", what="after")
    finally:
        c.close()


def test_a_corrupted_chunk_fails_the_checksum_and_the_leader_retries(tmp_path, small_chunks):
    c, leader, lagger = lagging_cluster(tmp_path)
    corrupted = []

    def corrupt_once(m):
        if m.type == MsgType.MsgSnapChunk and m.index > 0 and not corrupted:
            corrupted.append(m.index)
            data = bytearray(m.snapshot.data)
            data[0] ^= 0xFF
            return dataclasses.replace(m, snapshot=dataclasses.replace(
                m.snapshot, data=bytes(data)))
        return m

    try:
        c.net.filter = corrupt_once
        c.net.heal()
        c.run_until(lambda: c.caught_up(leader, lagger), seconds=60,
                    what="the follower caught up")
        assert corrupted
        _, answers = chunks_and_answers(c, lagger)
        assert any(m.reject for m in answers), "the bad stream was refused"
        assert answers[-1].context == snapshot_stream.INSTALLED
        assert c.digest(lagger) == c.digest(leader)
        assert c.nodes[leader].snapshot_sender.failed_total >= 1
    finally:
        c.close()


def test_a_lost_chunk_is_detected_and_the_stream_restarts(tmp_path, small_chunks):
    c, leader, lagger = lagging_cluster(tmp_path)
    dropped = []

    def drop_second(m):
        if m.type == MsgType.MsgSnapChunk and m.index > 0 and not dropped:
            dropped.append(m.index)
            return None
        return m

    try:
        c.net.filter = drop_second
        c.net.heal()
        c.run_until(lambda: c.caught_up(leader, lagger), seconds=60,
                    what="the follower caught up")
        _, answers = chunks_and_answers(c, lagger)
        assert dropped and any(m.reject for m in answers)
        assert c.digest(lagger) == c.digest(leader)
    finally:
        c.close()


def test_silence_times_out_and_the_snapshot_is_sent_again(tmp_path, small_chunks):
    c, leader, lagger = lagging_cluster(tmp_path)
    muted = [True]

    def mute_answers(m):
        if m.type == MsgType.MsgSnapChunkResp and muted[0]:
            return None
        return m

    try:
        c.net.filter = mute_answers
        c.net.heal()
        sender = c.nodes[leader].snapshot_sender
        c.run_until(lambda: sender.failed_total >= 1, seconds=snapshot_stream.ack_timeout_s + 5,
                    what="the stream timed out")
        muted[0] = False
        c.run_until(lambda: c.caught_up(leader, lagger), seconds=60,
                    what="the follower caught up")
        assert c.digest(lagger) == c.digest(leader)
    finally:
        c.close()


class _Sink:
    def __init__(self):
        self.sent = []

    def send(self, msg):
        self.sent.append(msg)


def _receiver(accepted):
    from test_node_support import FakeReactor

    from kvraft.storage.memory import MemorySnapshotStore
    store = MemorySnapshotStore()
    delivered = []
    receiver = snapshot_stream.SnapshotReceiver(
        "n2", _Sink(), store, FakeReactor(), delivered.append, committed=lambda: 3,
        term=lambda: 5, accepted=lambda index: accepted)
    return receiver, store, delivered


def _chunks(body, size):
    import zlib

    from kvraft.raft import Message, Snapshot, SnapshotMetadata
    meta = SnapshotMetadata(index=10, term=5)
    out = []
    for offset in range(0, len(body), size):
        piece = body[offset:offset + size]
        last = offset + size >= len(body)
        out.append(Message(type=MsgType.MsgSnapChunk, to="n2", frm="n1", term=5,
                           index=offset, snapshot=Snapshot(metadata=meta, data=piece),
                           context=zlib.crc32(body).to_bytes(4, "big") if last else b""))
    return meta, out


def test_a_received_snapshot_is_published_only_when_the_core_installs_it():
    body = bytes(range(256)) * 10
    receiver, store, delivered = _receiver(accepted=True)
    meta, chunks = _chunks(body, 700)
    for m in chunks:
        receiver.on_chunk(m)
    assert [m.type for m in delivered] == [MsgType.MsgSnap]
    assert delivered[0].snapshot.data == b"" and delivered[0].term == 5
    assert store.list() == [], "not published before the core installs it"
    receiver.publish(meta)
    assert [s.index for s in store.list()] == [10]
    assert b"".join(store.open(10)) == body
    answers = receiver.transport.sent
    assert [a.index for a in answers[:-1]] == [700, 1400, 2100, 2560]
    assert answers[-1].context == snapshot_stream.INSTALLED


def test_a_snapshot_the_core_turns_down_is_thrown_away():
    receiver, store, delivered = _receiver(accepted=False)
    meta, chunks = _chunks(b"x" * 1000, 300)
    for m in chunks:
        receiver.on_chunk(m)
    assert delivered and receiver.pending is None
    with pytest.raises(KeyError):
        receiver.publish(meta)
    assert store.list() == []


def test_chunks_out_of_order_or_from_a_stale_term_are_refused():
    receiver, store, delivered = _receiver(accepted=True)
    _, chunks = _chunks(b"y" * 1000, 300)
    receiver.on_chunk(chunks[0])
    receiver.on_chunk(chunks[2])  # chunk 1 lost
    assert receiver.transport.sent[-1].reject and receiver.stream is None
    stale = dataclasses.replace(chunks[0], term=4)
    receiver.on_chunk(stale)
    assert receiver.transport.sent[-1].reject and not delivered

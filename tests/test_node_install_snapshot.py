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

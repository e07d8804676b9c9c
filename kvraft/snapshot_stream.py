"""InstallSnapshot as a stream of bounded chunks with flow control, between two nodes.

The core only says *that* a follower needs a snapshot (a MsgSnap with metadata, no
data). The node does the rest, over the ordinary peer links::

    leader                                             follower
    core: MsgSnap(meta) ─► SnapshotSender
      opens the snapshot file, sends MsgSnapChunk ───► SnapshotReceiver
      (offset, <= chunk_bytes_max of body each;          writes each chunk to a snapshot
       at most inflight_bytes_max unacknowledged)        writer, computes CRC32, acks
                                   ◄── MsgSnapChunkResp(index = bytes held)
      last chunk carries CRC32 of the whole body ───►    compares, steps a data-less
                                                         MsgSnap into its core; if the
                                                         core installs it, the node
                                                         publishes it (fsync, rename)
                                                         and restores (kvraft.node)
      core.report_snapshot(peer, True) ◄── MsgSnapChunkResp(context=b"installed")

Anything else ends the stream and reports failure to the leader's core, which then
probes the follower again and sends a new MsgSnap when it still needs one: a rejected or
out-of-order chunk, a checksum mismatch, the link down when the stream starts, no
acknowledgement for ``ack_timeout_s`` (a dropped chunk shows up this way: the transport
drops silently), the sender losing leadership. Field use of the two message kinds is
documented on ``kvraft.raft.types.Message``.

Memory is bounded on both sides: the sender holds one chunk read ahead plus what the
transport queues (``inflight_bytes_max`` per stream, at most ``streams_max`` streams);
the receiver holds one chunk at a time and one stream (a newer stream replaces it).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator

from twisted.logger import Logger

from kvraft.raft import Message, MsgType, Snapshot, SnapshotMetadata
from kvraft.storage.errors import StorageError

log = Logger(namespace="kvraft.snapshot_stream")

chunk_bytes_max = 1024 * 1024
"""Body bytes per MsgSnapChunk (the peer frame limit is 16 MiB)."""
inflight_bytes_max = 4 * chunk_bytes_max
"""Body bytes sent to one follower and not yet acknowledged."""
streams_max = 8
"""Snapshots a leader streams at once; a follower beyond that is told to wait."""
ack_timeout_s = 10.0
"""A stream with no acknowledgement for this long is given up."""
install_timeout_s = 120.0
"""After the last chunk: how long the follower may take to hand it to its core."""
receive_idle_s = 30.0
"""A follower drops a half-received snapshot after this long without a chunk."""
INSTALLED = b"installed"


def _stream_id(meta: SnapshotMetadata) -> tuple[int, int]:
    return meta.index, meta.term


class _OutStream:
    """One snapshot being sent to one follower."""

    __slots__ = ("peer", "meta", "term", "chunks", "ahead", "sent", "acked", "crc",
                 "finished", "timer")

    def __init__(self, peer: str, meta: SnapshotMetadata, term: int, chunks: Iterator[bytes]):
        self.peer = peer
        self.meta = meta
        self.term = term  # the leader's term when the core asked: the MsgSnap's
        self.chunks = chunks
        self.ahead: bytes | None = None  # the next piece, read to know which one is last
        self.sent = 0  # body bytes sent
        self.acked = 0  # body bytes the follower holds
        self.crc = 0
        self.finished = False  # the last chunk is sent
        self.timer = None


def _pieces(chunks: Iterator[bytes], size: int) -> Iterator[bytes]:
    """Re-cut a chunk stream into pieces of at most ``size`` bytes."""
    for chunk in chunks:
        if len(chunk) <= size:
            if chunk:
                yield chunk
            continue
        view = memoryview(chunk)
        for start in range(0, len(chunk), size):
            yield bytes(view[start:start + size])


class SnapshotSender:
    """The leader's side: turns the core's MsgSnaps into chunk streams.

    ``open_body(index)`` returns the body chunks of the local snapshot at ``index``;
    ``report(peer, ok)`` is the core's ``report_snapshot``.
    """

    def __init__(self, node_id: str, transport, reactor,
                 open_body: Callable[[int], Iterator[bytes]],
                 report: Callable[[str, bool], None]):
        self.node_id = node_id
        self.transport = transport
        self.reactor = reactor
        self.open_body = open_body
        self.report = report
        self.streams: dict[str, _OutStream] = {}
        self.sent_total = 0  # snapshots fully installed by followers
        self.failed_total = 0

    def start(self, msg: Message) -> None:
        """The core wants ``msg.to`` to get the snapshot in ``msg.snapshot``."""
        peer, meta = msg.to, msg.snapshot.metadata
        current = self.streams.get(peer)
        if current is not None:
            if _stream_id(current.meta) == _stream_id(meta) and current.term == msg.term:
                return
            self._end(current, ok=None)
        if len(self.streams) >= streams_max or not self.transport.is_connected(peer):
            self.report(peer, False)  # the core probes again later
            return
        try:
            chunks = _pieces(iter(self.open_body(meta.index)), chunk_bytes_max)
        except (KeyError, OSError, ValueError, StorageError) as e:
            log.error("cannot send snapshot {index} to {peer}: {error}", index=meta.index,
                      peer=peer, error=str(e))
            self.report(peer, False)
            return
        stream = _OutStream(peer, meta, msg.term, chunks)
        self.streams[peer] = stream
        log.info("sending snapshot {index} (term {term}) to {peer}", index=meta.index,
                 term=meta.term, peer=peer)
        self._arm(stream, ack_timeout_s)
        self._pump(stream)

    def on_response(self, msg: Message) -> None:
        """A MsgSnapChunkResp from a follower."""
        stream = self.streams.get(msg.frm)
        if stream is None or msg.snapshot is None \
                or _stream_id(msg.snapshot.metadata) != _stream_id(stream.meta):
            return  # an old stream's answer
        if msg.reject:
            log.warn("{peer} refused snapshot {index} at byte {offset}", peer=stream.peer,
                     index=stream.meta.index, offset=msg.index)
            self._end(stream, ok=False)
            return
        if msg.context == INSTALLED:
            self._end(stream, ok=True)
            return
        if msg.index > stream.acked:
            stream.acked = min(msg.index, stream.sent)
            self._arm(stream, install_timeout_s if stream.finished and
                      stream.acked == stream.sent else ack_timeout_s)
        self._pump(stream)

    def stop_all(self) -> None:
        """Drop every stream (no longer leader, or stopping); nothing is reported: the
        core forgets follower progress when it steps down."""
        for stream in list(self.streams.values()):
            self._end(stream, ok=None)

    # -- internals ----------------------------------------------------------------------

    def _pump(self, stream: _OutStream) -> None:
        try:
            while not stream.finished and stream.sent - stream.acked < inflight_bytes_max:
                piece = stream.ahead if stream.ahead is not None else next(stream.chunks, None)
                stream.ahead = next(stream.chunks, None)
                last = stream.ahead is None
                self._send_piece(stream, piece or b"", last)
        except (OSError, ValueError, StorageError) as e:  # e.g. CorruptSnapshotError
            log.error("reading snapshot {index} for {peer} failed: {error}",
                      index=stream.meta.index, peer=stream.peer, error=str(e))
            self._end(stream, ok=False)

    def _send_piece(self, stream: _OutStream, piece: bytes, last: bool) -> None:
        stream.crc = zlib.crc32(piece, stream.crc)
        context = stream.crc.to_bytes(4, "big") if last else b""
        self.transport.send(Message(
            type=MsgType.MsgSnapChunk, to=stream.peer, frm=self.node_id, term=stream.term,
            index=stream.sent, context=context,
            snapshot=Snapshot(metadata=stream.meta, data=piece)))
        stream.sent += len(piece)
        stream.finished = last

    def _arm(self, stream: _OutStream, timeout_s: float) -> None:
        if stream.timer is not None and stream.timer.active():
            stream.timer.cancel()
        stream.timer = self.reactor.callLater(timeout_s, self._timed_out, stream)

    def _timed_out(self, stream: _OutStream) -> None:
        stream.timer = None
        if self.streams.get(stream.peer) is stream:
            log.warn("snapshot {index} to {peer}: no answer in time; giving up (the leader "
                     "retries)", index=stream.meta.index, peer=stream.peer)
            self._end(stream, ok=False)

    def _end(self, stream: _OutStream, ok: bool | None) -> None:
        if self.streams.get(stream.peer) is stream:
            del self.streams[stream.peer]
        if stream.timer is not None and stream.timer.active():
            stream.timer.cancel()
        stream.timer = None
        close = getattr(stream.chunks, "close", None)
        if close is not None:
            close()
        if ok is True:
            self.sent_total += 1
            log.info("{peer} installed snapshot {index} ({size} bytes)", peer=stream.peer,
                     index=stream.meta.index, size=stream.sent)
        elif ok is False:
            self.failed_total += 1
        if ok is not None:
            self.report(stream.peer, ok)


class _InStream:
    """The snapshot being received from a leader."""

    __slots__ = ("leader", "meta", "term", "writer", "received", "crc", "timer")

    def __init__(self, leader: str, meta: SnapshotMetadata, term: int, writer):
        self.leader = leader
        self.meta = meta
        self.term = term
        self.writer = writer
        self.received = 0
        self.crc = 0
        self.timer = None


class SnapshotReceiver:
    """The follower's side: writes a chunk stream to a snapshot writer and, once the
    body is complete and its checksum matches, hands the snapshot to the core.

    The snapshot is published (``writer.commit``: fsync, rename) only when the core
    installs it (``publish``, called by the node while it handles the Ready holding the
    snapshot); if the core turns it down (it already has those entries, it is no longer
    a follower...), the written file is thrown away. So a published snapshot is always
    one the node's state reaches.

    ``deliver(msg)`` steps a message into the core; ``committed()`` and ``term()`` read
    the core's commit index and term; ``accepted(index)`` says whether the core now
    holds a pending snapshot at ``index``.
    """

    def __init__(self, node_id: str, transport, snapshots, reactor,
                 deliver: Callable[[Message], None], committed: Callable[[], int],
                 term: Callable[[], int], accepted: Callable[[int], bool]):
        self.node_id = node_id
        self.transport = transport
        self.snapshots = snapshots
        self.reactor = reactor
        self.deliver = deliver
        self.committed = committed
        self.term = term
        self.accepted = accepted
        self.stream: _InStream | None = None
        self.pending: _InStream | None = None  # complete, verified, awaiting the core
        self.received_total = 0

    def on_chunk(self, msg: Message) -> None:
        """A MsgSnapChunk from a leader."""
        snap = msg.snapshot
        if snap is None:
            return
        meta, offset = snap.metadata, msg.index
        if msg.term < self.term():
            self._answer(msg.frm, meta, offset, reject=True)  # a deposed leader
            return
        stream = self.stream
        same = (stream is not None and stream.leader == msg.frm and stream.term == msg.term
                and _stream_id(stream.meta) == _stream_id(meta))
        if offset == 0 and not (same and stream.received == 0):
            self._drop()
            if meta.index <= self.committed():
                # Already have it all: let the core say so (it answers with our commit
                # index, and the leader resumes from there).
                self._hand_over(msg.frm, msg.term, meta)
                return
            stream = self._begin(msg.frm, msg.term, meta)
        elif not same:
            self._answer(msg.frm, meta, offset, reject=True)
            return
        if offset < stream.received:
            self._answer(msg.frm, meta, stream.received)  # a duplicate
            return
        if offset > stream.received:
            log.warn("snapshot {index} from {leader}: chunk at byte {offset}, expected "
                     "{expected}; dropping it", index=meta.index, leader=msg.frm,
                     offset=offset, expected=stream.received)
            self._drop()
            self._answer(msg.frm, meta, offset, reject=True)
            return
        try:
            stream.writer.write(snap.data)
        except OSError as e:
            log.error("writing snapshot {index} failed: {error}", index=meta.index,
                      error=str(e))
            self._drop()
            self._answer(msg.frm, meta, offset, reject=True)
            return
        stream.crc = zlib.crc32(snap.data, stream.crc)
        stream.received += len(snap.data)
        self._arm(stream)
        self._answer(msg.frm, meta, stream.received)
        if msg.context:
            self._finish(stream, msg.context)

    def publish(self, meta: SnapshotMetadata) -> None:
        """The core is installing the snapshot at ``meta.index``: make it durable in the
        snapshot store (fsync; may block). Raises KeyError if it was not received."""
        pending, self.pending = self.pending, None
        if pending is None or _stream_id(pending.meta) != _stream_id(meta):
            if pending is not None:
                pending.writer.abort()
            raise KeyError(f"snapshot {meta.index} (term {meta.term}) was not received")
        pending.writer.commit()
        self.received_total += 1

    def stop(self) -> None:
        """Abandon a snapshot being received (or awaiting the core)."""
        self._drop()
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.writer.abort()

    # -- internals ----------------------------------------------------------------------

    def _begin(self, leader: str, term: int, meta: SnapshotMetadata) -> _InStream:
        stream = _InStream(leader, meta, term, self.snapshots.create(meta))
        self.stream = stream
        log.info("receiving snapshot {index} (term {term}) from {leader}", index=meta.index,
                 term=meta.term, leader=leader)
        return stream

    def _finish(self, stream: _InStream, expected: bytes) -> None:
        self.stream = None
        if stream.timer is not None and stream.timer.active():
            stream.timer.cancel()
        if expected != stream.crc.to_bytes(4, "big"):
            log.error("snapshot {index} from {leader} fails its checksum (CRC32 {got:#010x}, "
                      "sent {sent}); dropping it", index=stream.meta.index,
                      leader=stream.leader, got=stream.crc, sent=expected.hex())
            stream.writer.abort()
            self._answer(stream.leader, stream.meta, stream.received, reject=True)
            return
        log.info("snapshot {index} from {leader} received ({size} bytes, checksum ok)",
                 index=stream.meta.index, leader=stream.leader, size=stream.received)
        if self.pending is not None:
            self.pending.writer.abort()
        self.pending = stream
        self._hand_over(stream.leader, stream.term, stream.meta)
        if self.pending is stream and not self.accepted(stream.meta.index):
            # The core turned it down (its answer tells the leader where we are).
            self.pending = None
            stream.writer.abort()

    def _hand_over(self, leader: str, term: int, meta: SnapshotMetadata) -> None:
        self.deliver(Message(type=MsgType.MsgSnap, to=self.node_id, frm=leader, term=term,
                             snapshot=Snapshot(metadata=meta)))
        self._answer(leader, meta, 0, installed=True)

    def _answer(self, leader: str, meta: SnapshotMetadata, held: int, reject: bool = False,
                installed: bool = False) -> None:
        self.transport.send(Message(
            type=MsgType.MsgSnapChunkResp, to=leader, frm=self.node_id, term=self.term(),
            index=held, reject=reject, context=INSTALLED if installed else b"",
            snapshot=Snapshot(metadata=SnapshotMetadata(index=meta.index, term=meta.term))))

    def _arm(self, stream: _InStream) -> None:
        if stream.timer is not None and stream.timer.active():
            stream.timer.cancel()
        stream.timer = self.reactor.callLater(receive_idle_s, self._idle, stream)

    def _idle(self, stream: _InStream) -> None:
        stream.timer = None
        if self.stream is stream:
            log.warn("snapshot {index} from {leader}: nothing received for {idle:.0f}s; "
                     "dropping it", index=stream.meta.index, leader=stream.leader,
                     idle=receive_idle_s)
            self._drop()

    def _drop(self) -> None:
        stream, self.stream = self.stream, None
        if stream is None:
            return
        if stream.timer is not None and stream.timer.active():
            stream.timer.cancel()
        stream.writer.abort()

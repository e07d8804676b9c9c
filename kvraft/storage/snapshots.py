"""Snapshot files under ``data_dir/snap/``, shared by the file backends.

A snapshot is one file ``<index, 20 digits>-<term, 20 digits>.snap``::

    header   <8sHHI   magic b"KVRFSNAP", format version, flags (0), metadata length
    metadata msgpack {"index", "term", "conf_state": {...}}
    body     the state machine's bytes, as written
    trailer  <QI8s    body length, CRC32 of everything before the trailer, b"KVRFSEND"

It is written under a temporary name, fsynced, renamed into place and the directory
fsynced, so a published name always holds a complete file; a crash leaves at most a
``*.tmp`` file, removed when the store opens. Bit rot is caught by the checksum: once
per file by ``list()``/``latest()`` (the result is cached while the file is unchanged),
and again while ``open()`` streams the body.
"""

from __future__ import annotations

import os
import re
import struct
import tempfile
from collections.abc import Iterator
from zlib import crc32

import msgpack
from twisted.logger import Logger
from zope.interface import implementer

from kvraft.interfaces import ISnapshotStore, ISnapshotWriter
from kvraft.raft.types import ConfState, SnapshotMetadata
from kvraft.storage import fsutil
from kvraft.storage.errors import CorruptSnapshotError

log = Logger()

SNAPSHOT_MAGIC = b"KVRFSNAP"
SNAPSHOT_END = b"KVRFSEND"
SNAPSHOT_VERSION = 1
HEADER = struct.Struct("<8sHHI")
TRAILER = struct.Struct("<QI8s")
METADATA_BYTES_MAX = 16 * 1024 * 1024
"""A metadata block larger than this is treated as a corrupt length field."""
RETAIN_DEFAULT = 2

_NAME = re.compile(r"^(\d{20})-(\d{20})\.snap$")


def snapshot_name(index: int, term: int) -> str:
    """The file name of the snapshot at ``index``/``term``."""
    return f"{index:020d}-{term:020d}.snap"


def encode_metadata(metadata: SnapshotMetadata) -> bytes:
    """msgpack of the metadata, ConfState included."""
    cs = metadata.conf_state
    return msgpack.packb({
        "index": metadata.index,
        "term": metadata.term,
        "conf_state": {
            "voters": list(cs.voters),
            "learners": list(cs.learners),
            "voters_outgoing": list(cs.voters_outgoing),
            "learners_next": list(cs.learners_next),
            "auto_leave": cs.auto_leave,
        },
    }, use_bin_type=True)


def decode_metadata(data: bytes) -> SnapshotMetadata:
    """The inverse of ``encode_metadata``; ``ValueError`` if malformed."""
    try:
        fields = msgpack.unpackb(data, raw=False)
        cs = fields["conf_state"]
        return SnapshotMetadata(index=fields["index"], term=fields["term"], conf_state=ConfState(
            voters=tuple(cs["voters"]), learners=tuple(cs["learners"]),
            voters_outgoing=tuple(cs["voters_outgoing"]),
            learners_next=tuple(cs["learners_next"]), auto_leave=bool(cs["auto_leave"])))
    except Exception as e:
        raise ValueError(f"the metadata block is malformed ({e})") from None


def _copy(metadata: SnapshotMetadata) -> SnapshotMetadata:
    return decode_metadata(encode_metadata(metadata))


@implementer(ISnapshotWriter)
class FileSnapshotWriter:
    """A snapshot being written to a temporary file in the store's directory."""

    def __init__(self, store: FileSnapshotStore, metadata: SnapshotMetadata):
        self._store = store
        self._metadata = _copy(metadata)
        meta = encode_metadata(metadata)
        fd, self._tmp = tempfile.mkstemp(
            prefix=f".{snapshot_name(metadata.index, metadata.term)}.", suffix=".tmp",
            dir=store.directory)
        self._file = os.fdopen(fd, "wb")
        head = HEADER.pack(SNAPSHOT_MAGIC, SNAPSHOT_VERSION, 0, len(meta)) + meta
        self._crc = crc32(head)
        self._body_bytes = 0
        self._file.write(head)

    def write(self, chunk: bytes) -> None:
        """Append ``chunk`` to the body. May block."""
        if self._file is None:
            raise ValueError("write() after commit() or abort()")
        self._crc = crc32(chunk, self._crc)
        self._body_bytes += len(chunk)
        self._file.write(chunk)

    def commit(self) -> SnapshotMetadata:
        """Write the trailer, fsync, publish under the final name, fsync the directory;
        return the metadata. May block."""
        if self._file is None:
            raise ValueError("commit() after commit() or abort()")
        f, self._file = self._file, None
        try:
            f.write(TRAILER.pack(self._body_bytes, self._crc, SNAPSHOT_END))
            f.flush()
            os.fsync(f.fileno())
        except BaseException:
            f.close()
            os.unlink(self._tmp)
            raise
        f.close()
        meta = self._metadata
        path = os.path.join(self._store.directory, snapshot_name(meta.index, meta.term))
        os.replace(self._tmp, path)
        fsutil.fsync_dir(self._store.directory)
        self._store._remember_valid(path, meta)
        return _copy(meta)

    def abort(self) -> None:
        """Throw the partial snapshot away (idempotent)."""
        if self._file is not None:
            f, self._file = self._file, None
            f.close()
            try:
                os.unlink(self._tmp)
            except FileNotFoundError:
                pass


@implementer(ISnapshotStore)
class FileSnapshotStore:
    """Snapshot files in one directory; see the module docstring."""

    def __init__(self, directory: str, chunk_bytes: int = 1024 * 1024):
        self.directory = directory
        self._chunk_bytes = chunk_bytes
        # path -> ((size, mtime_ns), metadata or None when invalid)
        self._checked: dict[str, tuple[tuple[int, int], SnapshotMetadata | None]] = {}
        os.makedirs(directory, exist_ok=True)
        for name in os.listdir(directory):
            if name.endswith(".tmp"):  # a writer that never committed (crash or abort)
                os.unlink(os.path.join(directory, name))

    def __repr__(self) -> str:
        return f"<FileSnapshotStore {self.directory}>"

    def create(self, metadata: SnapshotMetadata) -> FileSnapshotWriter:
        """Start writing the snapshot described by ``metadata``."""
        return FileSnapshotWriter(self, metadata)

    def list(self) -> list[SnapshotMetadata]:
        """Metadata of every valid snapshot, newest (index, term) first. Invalid files
        are skipped with a warning (once per file version)."""
        return [_copy(meta) for _, meta in self._valid()]

    def latest(self) -> SnapshotMetadata | None:
        """Metadata of the newest valid snapshot, or None."""
        valid = self._valid()
        return _copy(valid[0][1]) if valid else None

    def open(self, index: int) -> Iterator[bytes]:
        """The body of the newest valid snapshot at ``index``, in chunks. The checksum
        is verified as it streams; the last chunk is held back until it matches, so a
        reader sees ``CorruptSnapshotError`` before it has the whole body."""
        for path, meta in self._valid():
            if meta.index == index:
                # Opened now, so a retain() that deletes the file later cannot break it.
                return self._stream(open(path, "rb"), path)
        raise KeyError(f"no valid snapshot at index {index} in {self.directory}")

    def retain(self, count: int = RETAIN_DEFAULT) -> None:
        """Delete all but the newest ``count`` valid snapshots (invalid ones are kept
        for inspection; they are already ignored)."""
        if count < 0:
            raise ValueError(f"retain({count}): count must be >= 0")
        doomed = [path for path, _ in self._valid()[count:]]
        for path in doomed:
            os.unlink(path)
            self._checked.pop(path, None)
        if doomed:
            fsutil.fsync_dir(self.directory)

    def close(self) -> None:
        """Nothing to release (files are opened per call)."""

    # -- checking ------------------------------------------------------------------------

    def _remember_valid(self, path: str, meta: SnapshotMetadata) -> None:
        self._checked[path] = (_stamp(os.stat(path)), meta)

    def _valid(self) -> list[tuple[str, SnapshotMetadata]]:
        found = []
        for name in os.listdir(self.directory):
            match = _NAME.match(name)
            if match is None:
                continue
            path = os.path.join(self.directory, name)
            try:
                stamp = _stamp(os.stat(path))
            except FileNotFoundError:
                continue
            cached = self._checked.get(path)
            if cached is None or cached[0] != stamp:
                meta = self._check(path, int(match.group(1)), int(match.group(2)))
                self._checked[path] = cached = (stamp, meta)
            if cached[1] is not None:
                found.append((path, cached[1]))
        found.sort(key=lambda item: (item[1].index, item[1].term), reverse=True)
        return found

    def _check(self, path: str, index: int, term: int) -> SnapshotMetadata | None:
        try:
            with open(path, "rb") as f:
                meta, body_bytes, crc = _read_head(f, path)
                left = body_bytes
                while left > 0:
                    chunk = f.read(min(self._chunk_bytes, left))
                    if not chunk:
                        raise CorruptSnapshotError(f"snapshot {path} is truncated")
                    crc = crc32(chunk, crc)
                    left -= len(chunk)
                _check_trailer(f, path, crc, body_bytes)
            if (meta.index, meta.term) != (index, term):
                raise CorruptSnapshotError(
                    f"snapshot {path} holds index {meta.index} term {meta.term}, not what "
                    "its name says")
        except (CorruptSnapshotError, OSError) as e:
            log.warn("skipping snapshot {path}: {error}. An older snapshot (or the "
                     "leader) will be used instead; move the file aside once inspected.",
                     path=path, error=str(e))
            return None
        return meta

    def _stream(self, f, path: str) -> Iterator[bytes]:
        with f:
            _meta, body_bytes, crc = _read_head(f, path)
            left = body_bytes
            held = None
            while left > 0:
                chunk = f.read(min(self._chunk_bytes, left))
                if not chunk:
                    raise CorruptSnapshotError(f"snapshot {path} is truncated")
                crc = crc32(chunk, crc)
                left -= len(chunk)
                if held is not None:
                    yield held
                held = chunk
            _check_trailer(f, path, crc, body_bytes)
            if held is not None:
                yield held


def _stamp(st: os.stat_result) -> tuple[int, int]:
    return st.st_size, st.st_mtime_ns


def _read_head(f, path: str) -> tuple[SnapshotMetadata, int, int]:
    """Read header and metadata; return them with the body length and the running CRC."""
    size = os.fstat(f.fileno()).st_size
    head = f.read(HEADER.size)
    if len(head) < HEADER.size:
        raise CorruptSnapshotError(f"snapshot {path} is truncated ({size} bytes)")
    magic, version, _flags, meta_bytes = HEADER.unpack(head)
    if magic != SNAPSHOT_MAGIC:
        raise CorruptSnapshotError(f"{path} is not a kvraft snapshot (bad magic)")
    if version != SNAPSHOT_VERSION:
        raise CorruptSnapshotError(f"snapshot {path} has format version {version}; this "
                                   f"kvraft reads version {SNAPSHOT_VERSION}")
    body_bytes = size - HEADER.size - meta_bytes - TRAILER.size
    if meta_bytes > METADATA_BYTES_MAX or body_bytes < 0:
        raise CorruptSnapshotError(f"snapshot {path} is truncated or its header is corrupt "
                                   f"({size} bytes, metadata length {meta_bytes})")
    raw = f.read(meta_bytes)
    try:
        meta = decode_metadata(raw)
    except ValueError as e:
        raise CorruptSnapshotError(f"snapshot {path}: {e}") from None
    return meta, body_bytes, crc32(raw, crc32(head))


def _check_trailer(f, path: str, crc: int, body_bytes: int) -> None:
    raw = f.read(TRAILER.size)
    if len(raw) < TRAILER.size:
        raise CorruptSnapshotError(f"snapshot {path} is truncated (no trailer)")
    written_bytes, expected, end = TRAILER.unpack(raw)
    if end != SNAPSHOT_END:
        raise CorruptSnapshotError(f"snapshot {path} has a corrupt trailer")
    if written_bytes != body_bytes:
        raise CorruptSnapshotError(f"snapshot {path}: the trailer says the body is "
                                   f"{written_bytes} bytes, the file holds {body_bytes}")
    if crc != expected:
        raise CorruptSnapshotError(
            f"snapshot {path} fails its checksum (CRC32 {crc:#010x}, expected "
            f"{expected:#010x}): the file is corrupt. Delete it or move it aside; the node "
            "falls back to an older snapshot or gets one from the leader.")

"""The file snapshot store: atomic publication, checksums, and what it does with
corrupt, partial and stray files."""

from __future__ import annotations

import os

import pytest
from storage_support import warnings_in

from kvraft.raft.types import ConfState, SnapshotMetadata
from kvraft.storage import CorruptSnapshotError
from kvraft.storage.snapshots import FileSnapshotStore, snapshot_name

CHUNK = 64


def write(store: FileSnapshotStore, index: int, term: int, body: bytes) -> str:
    writer = store.create(SnapshotMetadata(index, term, ConfState(voters=("n1", "n2"))))
    for i in range(0, len(body), 100):
        writer.write(body[i:i + 100])
    writer.commit()
    return os.path.join(store.directory, snapshot_name(index, term))


def flip(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))


@pytest.fixture
def store(tmp_path):
    return FileSnapshotStore(str(tmp_path / "snap"), chunk_bytes=CHUNK)


def test_a_snapshot_is_one_file_named_by_index_and_term(store):
    path = write(store, 42, 7, b"x" * 1000)
    assert os.listdir(store.directory) == ["00000000000000000042-00000000000000000007.snap"]
    assert os.path.basename(path) == snapshot_name(42, 7)
    chunks = list(store.open(42))
    assert b"".join(chunks) == b"x" * 1000
    assert max(len(c) for c in chunks) <= CHUNK  # streamed in bounded chunks


def test_a_corrupt_snapshot_is_skipped_with_a_warning(store, log_events):
    write(store, 10, 1, b"old state" * 50)
    newest = write(store, 20, 2, b"new state" * 50)
    flip(newest, os.path.getsize(newest) // 2)
    fresh = FileSnapshotStore(store.directory, chunk_bytes=CHUNK)  # e.g. after a restart
    assert fresh.latest().index == 10
    assert [m.index for m in fresh.list()] == [10]
    warned = warnings_in(log_events)
    assert any(newest in w and "checksum" in w for w in warned), warned
    with pytest.raises(KeyError):
        fresh.open(20)
    assert os.path.exists(newest)  # kept for inspection, never silently deleted
    fresh.retain(1)
    assert os.path.exists(newest) and fresh.latest().index == 10


def test_a_partial_snapshot_file_is_skipped(store, log_events):
    write(store, 10, 1, b"a" * 300)
    partial = write(store, 11, 1, b"b" * 300)
    with open(partial, "r+b") as f:
        f.truncate(200)
    assert store.latest().index == 10
    assert any(partial in w for w in warnings_in(log_events))


def test_corruption_after_validation_is_caught_while_streaming(store):
    path = write(store, 30, 3, bytes(range(256)) * 8)
    assert store.latest().index == 30  # validated (and cached) here
    stat = os.stat(path)
    flip(path, os.path.getsize(path) - 100)  # in the last body chunk
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the cache cannot tell
    received = []
    with pytest.raises(CorruptSnapshotError, match=f"{path} fails its checksum"):
        for chunk in store.open(30):
            received.append(chunk)
    # The reader never got the whole body of a corrupt snapshot.
    assert sum(len(c) for c in received) < 256 * 8


def test_a_file_whose_metadata_disagrees_with_its_name_is_skipped(store):
    path = write(store, 5, 1, b"body")
    os.rename(path, os.path.join(store.directory, snapshot_name(6, 1)))
    assert store.list() == []


def test_unfinished_writers_leave_only_a_temporary_file_removed_on_open(store):
    writer = store.create(SnapshotMetadata(9, 1))
    writer.write(b"half of it")
    assert store.list() == []
    (tmp,) = os.listdir(store.directory)
    assert tmp.endswith(".tmp")
    FileSnapshotStore(store.directory)  # a restart: the crashed writer's file goes
    assert os.listdir(store.directory) == []


def test_retain_keeps_the_newest_two_by_default(store):
    for index in (1, 5, 3, 9):
        write(store, index, 1, b"s")
    store.retain()
    assert [m.index for m in store.list()] == [9, 5]
    assert len(os.listdir(store.directory)) == 2
    with pytest.raises(ValueError):
        store.retain(-1)


def test_open_holds_the_file_even_if_retain_deletes_it(store):
    write(store, 1, 1, b"a" * 500)
    chunks = store.open(1)
    write(store, 2, 1, b"b")
    write(store, 3, 1, b"c")
    store.retain(2)
    assert b"".join(chunks) == b"a" * 500

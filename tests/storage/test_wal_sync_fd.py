"""The WAL's ``IFdSyncLogStore``: a leader flushes the log by descriptor (Linux AIO), then
tells the log, which must then behave exactly as after its own ``sync``."""

import os

import pytest
from storage_support import OPENERS, make_entries, segment_path
from zope.interface.verify import verifyObject

from kvraft.interfaces import IFdSyncLogStore
from kvraft.storage import fsutil
from kvraft.storage.wal import open_storage


def same_file(fd: int, path: str) -> bool:
    return os.fstat(fd).st_ino == os.stat(path).st_ino


@pytest.fixture
def log(tmp_path):
    storage = open_storage(str(tmp_path / "data"), {"segment_bytes_max": 2048})
    yield storage.log
    storage.close()


def test_the_wal_offers_its_descriptor(log):
    assert verifyObject(IFdSyncLogStore, log)


def test_the_descriptor_is_the_last_segment_s_while_writes_are_unsynced(log, tmp_path):
    data_dir = str(tmp_path / "data")
    assert log.sync_fd() is None, "a new log has nothing to flush"
    log.append(make_entries(1, 5, term=1))
    fd = log.sync_fd()
    assert fd is not None and same_file(fd, segment_path(data_dir, 1))
    os.fdatasync(fd)
    log.mark_synced()
    assert log.sync_fd() is None


def test_after_a_roll_the_descriptor_is_the_new_segment_s(log, tmp_path):
    data_dir = str(tmp_path / "data")
    entries = make_entries(1, 200, term=1)
    log.append(entries)  # well past segment_bytes_max: the log rolls
    names = sorted(os.listdir(os.path.join(data_dir, "wal")))
    assert len(names) > 1
    last_first = int(names[-1][:20])
    assert same_file(log.sync_fd(), segment_path(data_dir, last_first))


def test_marked_synced_is_synced_for_the_log(log, monkeypatch):
    log.append(make_entries(1, 5, term=1))
    os.fdatasync(log.sync_fd())
    log.mark_synced()
    calls = []
    real = fsutil.fdatasync
    monkeypatch.setattr(fsutil, "fdatasync", lambda fd: (calls.append(fd), real(fd)))
    log.sync()
    assert calls == [], "the log synced again what the caller flushed"
    log.append(make_entries(6, 1, term=1))
    log.sync()
    assert len(calls) == 1, "a later append must still be synced"


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
def test_other_backends_are_synced_with_sync(tmp_path, backend):
    storage = OPENERS[backend](str(tmp_path / backend), {})
    try:
        assert not IFdSyncLogStore.providedBy(storage.log)
    finally:
        storage.close()

"""``kvraft.storage.aio``: fdatasync through Linux AIO, completed through an eventfd.

These run the real system calls on a real file. The one outcome a test cannot provoke on
a healthy disk, a failed flush, is fed to the completion path as the kernel would report
it (a negative ``res``).
"""

import errno
import os
import select
import time

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from kvraft.storage import aio
from kvraft.storage.aio import AioSync, open_aio_sync

DEADLINE_S = 10.0


def _open(on_done):
    flusher, reason = open_aio_sync(on_done)
    if flusher is None:
        pytest.skip(f"Linux AIO is unavailable here: {reason}")
    return flusher


def _wait_readable(fd: int) -> None:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        if poller.poll(100):
            return
    raise AssertionError(f"no completion within {DEADLINE_S} s")


@pytest.fixture
def data_file(tmp_path):
    fd = os.open(tmp_path / "data", os.O_RDWR | os.O_CREAT, 0o644)
    yield fd
    os.close(fd)


def test_a_flush_completes_once_and_reports_success(data_file):
    done = []
    flusher = _open(done.append)
    try:
        os.pwrite(data_file, b"x" * 4096, 0)
        flusher.submit(data_file)
        assert flusher.in_flight
        _wait_readable(flusher.fileno())
        flusher.doRead()
        assert done == [None]
        assert not flusher.in_flight
        flusher.doRead()  # a spurious wake-up reports nothing more
        assert done == [None]
    finally:
        flusher.close()


def test_flushes_can_follow_each_other(data_file):
    done = []
    flusher = _open(done.append)
    try:
        for i in range(3):
            os.pwrite(data_file, b"%d" % i, i)
            flusher.submit(data_file)
            _wait_readable(flusher.fileno())
            flusher.doRead()
        assert done == [None, None, None]
    finally:
        flusher.close()


def test_a_second_flush_while_one_is_in_flight_is_refused(data_file):
    flusher = _open(lambda error: None)
    try:
        flusher.submit(data_file)
        with pytest.raises(RuntimeError, match="already in flight"):
            flusher.submit(data_file)
    finally:
        flusher.close()


def test_a_descriptor_that_cannot_be_synced_is_refused_at_submit():
    flusher = _open(lambda error: None)
    r, w = os.pipe()
    try:
        with pytest.raises(OSError) as refused:
            flusher.submit(r)  # a pipe has no fsync: the kernel says EINVAL at once
        assert refused.value.errno == errno.EINVAL
        assert "io_submit" in str(refused.value)
        assert not flusher.in_flight
    finally:
        os.close(r)
        os.close(w)
        flusher.close()


def test_a_failed_flush_is_reported_as_the_kernel_s_error(data_file, monkeypatch):
    done = []
    flusher = _open(done.append)
    try:
        flusher.submit(data_file)
        _wait_readable(flusher.fileno())
        real = flusher._syscall

        def getevents_eio(number, *args):
            n = real(number, *args)
            if number == flusher._calls["io_getevents"] and n == 1:
                flusher._events[0].res = -errno.EIO
            return n

        monkeypatch.setattr(flusher, "_syscall", getevents_eio)
        flusher.doRead()
        assert len(done) == 1 and isinstance(done[0], OSError)
        assert done[0].errno == errno.EIO and "fdatasync" in str(done[0])
        assert not flusher.in_flight
    finally:
        flusher.close()


def test_close_waits_for_a_flush_in_flight_and_releases_the_eventfd(data_file):
    flusher = _open(lambda error: None)
    os.pwrite(data_file, b"y" * 65536, 0)
    flusher.submit(data_file)
    efd = flusher.fileno()
    flusher.close()
    flusher.close()  # idempotent
    with pytest.raises(OSError):
        os.fstat(efd)
    with pytest.raises(RuntimeError, match="closed"):
        flusher.submit(data_file)


def test_where_aio_is_unavailable_the_reason_is_given(monkeypatch):
    monkeypatch.setattr(aio.platform, "machine", lambda: "vax")
    flusher, reason = open_aio_sync(lambda error: None)
    assert flusher is None
    assert "vax" in reason


def test_io_setup_refused_gives_the_reason(monkeypatch):
    class NoAio:
        def __init__(self, *args, **kwargs):
            pass

        @staticmethod
        def syscall(*args):
            return -1

    monkeypatch.setattr(aio.ctypes, "CDLL", NoAio)
    flusher, reason = open_aio_sync(lambda error: None)
    assert flusher is None
    assert "io_setup failed" in reason


@pytest_twisted.inlineCallbacks
def test_the_reactor_reports_a_flush_through_the_eventfd(data_file):
    done = defer.Deferred()
    flusher = _open(done.callback)
    flusher.start(reactor)
    try:
        os.pwrite(data_file, b"z" * 4096, 0)
        flusher.submit(data_file)
        timeout = reactor.callLater(DEADLINE_S, done.errback,
                                    AssertionError("no completion through the reactor"))
        result = yield done
        if timeout.active():
            timeout.cancel()
        assert result is None
        assert not flusher.in_flight
    finally:
        flusher.close()
    assert flusher not in reactor.getReaders()


def test_aio_sync_is_constructible_only_on_linux(monkeypatch):
    monkeypatch.setattr(aio.sys, "platform", "darwin")
    with pytest.raises(aio.AioUnavailableError, match="Linux only"):
        AioSync(lambda error: None)

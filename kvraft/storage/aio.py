"""``fdatasync`` without blocking the reactor: Linux AIO's ``IOCB_CMD_FDSYNC``.

A leader's log write is on its own critical path twice: its clients wait for it, and while
``os.fdatasync`` blocks the reactor thread the leader can neither apply the batch its
followers just committed nor answer that batch's clients. A writer thread avoids the block
but not the GIL: the thread must take the GIL back after the system call, which costs a
thread switch each way per batch (``storage.fsync_in_thread``, measured slower here).

Linux AIO flushes a file asynchronously without any thread of ours: ``io_submit`` queues an
``IOCB_CMD_FDSYNC`` (the same ``vfs_fsync(file, datasync=1)`` that ``fdatasync`` runs, done
by a kernel worker) and returns at once; when the flush is done the kernel bumps an
``eventfd``, which the reactor watches like a socket. Nothing in Python waits, and no GIL
changes hands. Supported since Linux 4.18 for every filesystem that implements fsync.

``AioSync`` is that one operation, nothing more: one flush in flight at a time (a node
never has two log writes in flight), completions reported to ``on_done(error)`` from
``doRead`` on the reactor thread. ``open_aio_sync`` returns None, with the reason, where
Linux AIO is not available (another OS or architecture, a seccomp filter, ``aio-max-nr``
exhausted); the node then fsyncs on the reactor thread as before.

The system calls go through ``ctypes`` (the C library's ``syscall``): the standard library
has no binding, and no dependency is needed for four calls.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
from collections.abc import Callable

# Linux system call numbers: x86_64's own table, and the generic table arm64 uses.
_SYSCALLS = {
    "x86_64": {"io_setup": 206, "io_destroy": 207, "io_getevents": 208, "io_submit": 209},
    "aarch64": {"io_setup": 0, "io_destroy": 1, "io_submit": 2, "io_getevents": 4},
}
_SYSCALLS["amd64"] = _SYSCALLS["x86_64"]
_SYSCALLS["arm64"] = _SYSCALLS["aarch64"]

IOCB_CMD_FDSYNC = 3
"""``struct iocb.aio_lio_opcode``: flush the file's data (``fdatasync``)."""

IOCB_FLAG_RESFD = 1
"""``struct iocb.aio_flags``: signal ``aio_resfd`` (an eventfd) on completion."""

EVENTS_MAX = 4
"""Completions reaped per ``io_getevents`` call (one is ever in flight)."""


class _Iocb(ctypes.Structure):
    """``struct iocb`` (linux/aio_abi.h), little-endian field order."""

    _fields_ = [("aio_data", ctypes.c_uint64), ("aio_key", ctypes.c_uint32),
                ("aio_rw_flags", ctypes.c_int32), ("aio_lio_opcode", ctypes.c_uint16),
                ("aio_reqprio", ctypes.c_int16), ("aio_fildes", ctypes.c_uint32),
                ("aio_buf", ctypes.c_uint64), ("aio_nbytes", ctypes.c_uint64),
                ("aio_offset", ctypes.c_int64), ("aio_reserved2", ctypes.c_uint64),
                ("aio_flags", ctypes.c_uint32), ("aio_resfd", ctypes.c_uint32)]


class _IoEvent(ctypes.Structure):
    """``struct io_event`` (linux/aio_abi.h)."""

    _fields_ = [("data", ctypes.c_uint64), ("obj", ctypes.c_uint64),
                ("res", ctypes.c_int64), ("res2", ctypes.c_int64)]


class AioUnavailableError(Exception):
    """Linux AIO cannot be used here; the message says why."""


class AioSync:
    """Flush one file descriptor at a time through Linux AIO; a reactor reader.

    ``start(reactor)`` registers the completion eventfd with the reactor; ``submit(fd)``
    starts a flush and returns at once; ``on_done(None)`` (or ``on_done(OSError)``) runs
    from ``doRead`` once it is durable (or failed). ``close()`` waits for a flush in
    flight (``io_destroy`` does) and releases the context.
    """

    def __init__(self, on_done: Callable[[OSError | None], None]):
        if not sys.platform.startswith("linux"):
            raise AioUnavailableError(f"Linux AIO is Linux only (this is {sys.platform})")
        calls = _SYSCALLS.get(platform.machine())
        if calls is None:
            raise AioUnavailableError(f"no AIO system call numbers known for {platform.machine()}")
        if not hasattr(os, "eventfd"):
            raise AioUnavailableError("os.eventfd is missing (Python 3.10+ on Linux has it)")
        self._calls = calls
        self._syscall = ctypes.CDLL(None, use_errno=True).syscall
        self._ctx = ctypes.c_ulong(0)
        if self._syscall(calls["io_setup"], EVENTS_MAX, ctypes.byref(self._ctx)) != 0:
            err = ctypes.get_errno()
            raise AioUnavailableError(f"io_setup failed: {os.strerror(err)} (errno {err}); "
                                      "a seccomp filter, or /proc/sys/fs/aio-max-nr reached")
        try:
            self._efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        except OSError:
            self._syscall(calls["io_destroy"], self._ctx)
            raise
        self._iocb = _Iocb(aio_lio_opcode=IOCB_CMD_FDSYNC, aio_flags=IOCB_FLAG_RESFD,
                           aio_resfd=self._efd)
        self._iocbs = (ctypes.POINTER(_Iocb) * 1)(ctypes.pointer(self._iocb))
        self._events = (_IoEvent * EVENTS_MAX)()
        self._on_done = on_done
        self._reactor = None
        self.in_flight = False
        """True from ``submit`` until its completion is reported."""
        self.closed = False

    def start(self, reactor) -> None:
        """Watch for completions on ``reactor`` (an ``IReactorFDSet``)."""
        self._reactor = reactor
        reactor.addReader(self)

    def submit(self, fd: int) -> None:
        """Start flushing ``fd``'s data; ``OSError`` if the kernel refused at once (a bad
        descriptor, a file that cannot be synced), and then nothing is in flight."""
        if self.in_flight:
            raise RuntimeError("a flush is already in flight: wait for on_done")
        if self.closed:
            raise RuntimeError("AioSync is closed")
        self._iocb.aio_fildes = fd
        if self._syscall(self._calls["io_submit"], self._ctx, 1, self._iocbs) != 1:
            err = ctypes.get_errno()
            raise OSError(err, f"io_submit(fdatasync of fd {fd}): {os.strerror(err)}")
        self.in_flight = True

    # -- IReadDescriptor ----------------------------------------------------------------

    def fileno(self) -> int:
        return self._efd

    def logPrefix(self) -> str:  # noqa: N802 (Twisted's name)
        return "AioSync"

    def doRead(self) -> None:  # noqa: N802 (Twisted's name)
        """The eventfd fired: reap the completion and report it."""
        try:
            os.eventfd_read(self._efd)
        except BlockingIOError:
            return  # already reaped
        self._reap()

    def connectionLost(self, reason) -> None:  # noqa: N802 (Twisted's name)
        """The reactor dropped us (shutdown): nothing to do, ``close`` releases."""

    def _reap(self) -> None:
        n = self._syscall(self._calls["io_getevents"], self._ctx, 0, EVENTS_MAX,
                          self._events, None)
        if n < 0:
            err = ctypes.get_errno()
            self.in_flight = False
            self._on_done(OSError(err, f"io_getevents: {os.strerror(err)}"))
            return
        for i in range(n):
            res = self._events[i].res
            self.in_flight = False
            self._on_done(None if res >= 0 else OSError(-res, f"fdatasync (Linux AIO): "
                                                               f"{os.strerror(-res)}"))

    def close(self) -> None:
        """Stop watching, wait for a flush in flight, release the context (idempotent).
        A completion still unreported is dropped: the caller is shutting down."""
        if self.closed:
            return
        self.closed = True
        if self._reactor is not None:
            self._reactor.removeReader(self)
        self._syscall(self._calls["io_destroy"], self._ctx)
        os.close(self._efd)
        self.in_flight = False


def open_aio_sync(on_done: Callable[[OSError | None], None]) -> tuple[AioSync | None, str]:
    """An ``AioSync``, or None and the reason Linux AIO cannot be used here."""
    try:
        return AioSync(on_done), ""
    except (AioUnavailableError, OSError) as e:
        return None, str(e)

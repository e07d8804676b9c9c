"""Small durable-file helpers shared by the file backends.

Every function here either completes or raises ``OSError``; callers turn the error into
a ``StorageError`` that names the file. Module-level ``os`` is looked up at call time so
tests can replace it with a proxy that "crashes" at a chosen system call.
"""

from __future__ import annotations

import os


def fdatasync(fd: int) -> None:
    """Flush ``fd``'s data (and the metadata needed to read it back, e.g. its size)."""
    sync = getattr(os, "fdatasync", None) or os.fsync  # no fdatasync on macOS
    sync(fd)


def fsync_dir(path: str) -> None:
    """Make creations, renames and unlinks inside directory ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    """Write all of ``data`` at ``offset`` (``os.pwrite`` may write less than asked)."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        if written <= 0:  # pragma: no cover - regular files never do this
            raise OSError(f"pwrite wrote {written} bytes at offset {offset}")
        view = view[written:]
        offset += written


def preallocate(fd: int, offset: int, length: int) -> bool:
    """Reserve ``[offset, offset + length)`` of ``fd``'s file (zeros until written, and
    the file's size grows to cover it); False if the filesystem cannot.

    Writes into reserved space leave the file's size and block map as they are, so their
    ``fdatasync`` flushes data only, without a journal commit for the metadata (on ext4
    on this kind of machine: 0.26 against 0.40 ms at the median, three writers at once).
    """
    allocate = getattr(os, "posix_fallocate", None)
    if allocate is None:  # pragma: no cover - macOS
        return False
    try:
        allocate(fd, offset, length)
    except OSError:
        return False  # unsupported, or no space: the write that follows finds out
    return True


def pread_exact(fd: int, size: int, offset: int) -> bytes:
    """Read up to ``size`` bytes at ``offset``; fewer only at end of file."""
    chunks = []
    while size > 0:
        chunk = os.pread(fd, size, offset)
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
        offset += len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def atomic_write(path: str, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves either the old or the new
    content: write a temporary file, fsync it, rename it over ``path``, fsync the
    directory."""
    directory = os.path.dirname(path) or "."
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        pwrite_all(fd, data, 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(directory)


def lock_dir(data_dir: str) -> int:
    """Take an exclusive lock on ``data_dir/lock`` for this process; return its fd.

    Two processes appending to one log would corrupt it, so the second one fails here
    with an operator-facing ``BlockingIOError`` message. The kernel drops the lock when
    the process dies, so a crash never leaves a stale lock behind.
    """
    import fcntl  # POSIX only, like the rest of the file backends

    path = os.path.join(data_dir, "lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise BlockingIOError(
            f"{data_dir} is in use by another kvraft process (or another storage object "
            "in this one): stop it first, or give this node its own data_dir") from None
    os.ftruncate(fd, 0)
    pwrite_all(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def unlock_dir(fd: int) -> None:
    """Release a lock taken by ``lock_dir``."""
    os.close(fd)

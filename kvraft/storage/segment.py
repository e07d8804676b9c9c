"""One WAL segment file: its records' offsets, appends, cuts, reads and the open scan."""

from __future__ import annotations

import os
from array import array
from dataclasses import dataclass, field

from twisted.logger import Logger

from kvraft.raft.types import Entry
from kvraft.storage import fsutil
from kvraft.storage.errors import RESTORE_ADVICE, CorruptLogError, StorageError
from kvraft.storage.records import (
    RECORD_HEADER,
    SEGMENT_HEADER,
    RecordError,
    decode_entries,
    decode_segment_header,
    decode_term_index,
    encode_segment_header,
    read_record,
    scan_records,
    segment_name,
)

log = Logger()

UNSYNCED_BYTES_MAX = 1024 * 1024
"""At most this many bytes of a segment are written between two ``fdatasync`` calls (a
larger write goes in parts, each synced before the next). A crash can only tear what
was not yet synced, so a tear lies within this many bytes of the end of the data."""
SECTOR_BYTES = 512
"""The unit a disk writes whole: a sector of an unsynced write that did not reach the
disk before a crash reads as it was before that write (``Segment._is_torn``)."""


@dataclass
class ScanResult:
    """What ``Segment.scan`` found: the terms of its records and, for the last segment,
    a torn tail that was cut off."""

    terms: array = field(default_factory=lambda: array("Q"))
    torn_offset: int | None = None
    torn_reason: str = ""
    torn_bytes: int = 0


class Segment:
    """A segment file holding entries ``first_index .. first_index + count - 1``.

    ``offsets[k]`` is the byte offset of the record of entry ``first_index + k``; records
    are back to back, the last one ends at ``end``. ``dirty`` is True while bytes written
    since the last ``sync`` may not be durable; ``unsynced`` counts them.

    The file may be longer than ``end``: ``write`` reserves space ahead of the records
    (``preallocate_bytes`` at a time, not past ``size_max``), so that most writes change
    neither the file's size nor its block map and their sync flushes data only. Beyond
    ``end`` the file holds zeros, apart from writes not yet synced; ``trim`` cuts the
    reserve off (on roll and close), and ``open`` cuts off what a crash left behind.
    """

    def __init__(self, path: str, fd: int, generation: int, first_index: int, end: int):
        self.path = path
        self.fd = fd
        self.generation = generation
        self.first_index = first_index
        self.offsets = array("Q")
        self.end = end
        self.dirty = False
        self.unsynced = 0
        self.allocated = end
        """The file size: ``end`` plus the space reserved ahead of the records."""
        self.preallocate_bytes = 0
        self.size_max = 0

    def __repr__(self) -> str:
        return f"<Segment {os.path.basename(self.path)} entries={len(self.offsets)}>"

    @property
    def count(self) -> int:
        """Number of records."""
        return len(self.offsets)

    @property
    def last_index(self) -> int:
        """Index of the last record (``first_index - 1`` when empty)."""
        return self.first_index + len(self.offsets) - 1

    # -- creating and opening ----------------------------------------------------------

    @classmethod
    def create(cls, directory: str, generation: int, first_index: int) -> Segment:
        """A new empty segment, published atomically: header written and fsynced under a
        temporary name, renamed, directory fsynced. A segment file therefore always has
        a complete header."""
        path = os.path.join(directory, segment_name(first_index))
        tmp = path + ".tmp"
        header = encode_segment_header(generation, first_index)
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            fsutil.pwrite_all(fd, header, 0)
            fsutil.fdatasync(fd)
            os.replace(tmp, path)
            fsutil.fsync_dir(directory)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, generation, first_index, len(header))

    @classmethod
    def open(cls, path: str) -> Segment:
        """Open an existing segment and check its header (``CorruptLogError`` if bad)."""
        fd = os.open(path, os.O_RDWR)
        try:
            header = fsutil.pread_exact(fd, SEGMENT_HEADER.size, 0)
            generation, first_index = decode_segment_header(header)
        except ValueError as e:
            os.close(fd)
            raise CorruptLogError(f"WAL segment {path}: {e} (byte offset 0). "
                                  f"To recover, {RESTORE_ADVICE}.") from None
        return cls(path, fd, generation, first_index, SEGMENT_HEADER.size)

    def scan(self, is_last: bool, previous_term: int) -> ScanResult:
        """Read every record, check checksums, index continuity and term order, and fill
        ``offsets``. In the last segment a torn tail is cut off (durably) and reported;
        anything else wrong raises ``CorruptLogError`` naming the file and offset."""
        data = memoryview(fsutil.pread_exact(self.fd, os.fstat(self.fd).st_size, 0))
        result = ScanResult()
        pos, _, _ = scan_records(data, SEGMENT_HEADER.size, self.first_index,
                                 previous_term, self.offsets, result.terms)
        self.end = self.allocated = len(data)
        if pos < len(data):
            data_end = pos + len(bytes(data[pos:]).rstrip(b"\x00"))
            if data_end == pos and is_last:
                # Only zeros after the last record: space reserved ahead of the records
                # (a write there, if any, never reached the disk). Nothing is lost.
                self._cut(pos)
                return result
            self._diagnose(data, pos, data_end, result, is_last, previous_term)
        return result

    def _diagnose(self, data: memoryview, pos: int, data_end: int, result: ScanResult,
                  is_last: bool, previous_term: int) -> None:
        """Explain the record ``scan_records`` stopped at: cut it off if it is a torn
        tail, raise ``CorruptLogError`` otherwise."""
        try:
            payload, _ = read_record(data, pos)
        except RecordError as e:
            if is_last and self._is_torn(data, pos, data_end, e):
                result.torn_offset, result.torn_reason = pos, str(e)
                result.torn_bytes = data_end - pos
                self._cut_torn_tail(pos, result)
                return
            raise self._corrupt(pos, f"{e}, and more data follows it") from None
        try:
            term, index = decode_term_index(payload)
        except ValueError as e:
            raise self._corrupt(pos, str(e)) from None
        expected = self.first_index + len(self.offsets)
        if index != expected:
            raise self._corrupt(pos, f"a record for index {index} where index {expected} "
                                     "belongs")
        if result.terms:
            previous_term = result.terms[-1]
        raise self._corrupt(pos, f"entry {index} has term {term}, below the term "
                                 f"{previous_term} before it")

    @staticmethod
    def _is_torn(data: memoryview, pos: int, data_end: int, error: RecordError) -> bool:
        # A crash tears only what was written since the last sync. It leaves the final
        # record short, or complete with a bad checksum and only zeros after it. And as
        # the kernel writes pages back in any order, it can leave a sector of the
        # unsynced write unwritten, with later parts of that write intact behind it.
        # Such a sector reads as it was, which from the bad record on (past everything
        # synced) is zeros: so the record is torn if, in a sector it touches, every
        # byte from the record on is zero, and all data after it is within
        # UNSYNCED_BYTES_MAX. Anything else, a flipped bit above all, is corruption.
        if error.incomplete:
            return True
        if error.end is not None and error.end >= data_end:
            return True
        if data_end - pos > UNSYNCED_BYTES_MAX:
            return False
        span_end = error.end if error.end is not None else pos + RECORD_HEADER.size
        sector = pos - pos % SECTOR_BYTES
        while sector < span_end:
            lost = data[max(sector, pos):sector + SECTOR_BYTES]
            if not bytes(lost).strip(b"\x00"):
                return True
            sector += SECTOR_BYTES
        return False

    def _cut(self, pos: int) -> None:
        """Durably cut the file at ``pos`` (its records' end)."""
        os.ftruncate(self.fd, pos)
        fsutil.fdatasync(self.fd)
        self.end = self.allocated = pos

    def _cut_torn_tail(self, pos: int, result: ScanResult) -> None:
        self._cut(pos)
        log.warn("WAL segment {path}: cut off a torn record at byte offset {offset} "
                 "({reason}; {dropped} bytes dropped). The last write before a crash did "
                 "not complete; entries synced before it are intact.",
                 path=self.path, offset=pos, reason=result.torn_reason,
                 dropped=result.torn_bytes)

    def _corrupt(self, pos: int, what: str) -> CorruptLogError:
        return CorruptLogError(
            f"WAL segment {self.path} is corrupt at byte offset {pos}: {what}. The entries "
            f"from there on cannot be trusted and this node's log cannot be repaired in "
            f"place. To recover, {RESTORE_ADVICE}.")

    # -- writing -------------------------------------------------------------------------

    def write(self, data: bytes | bytearray, offsets: list[int]) -> None:
        """Append ``data`` (records starting at ``offsets``) at the end: one system
        call for a whole batch. Not durable until ``sync``, except that no more than
        ``UNSYNCED_BYTES_MAX`` bytes are ever unsynced: past that, what was written is
        synced before more is written."""
        end = self.end + len(data)
        if end > self.allocated and self.preallocate_bytes:
            target = max(end, min(end + self.preallocate_bytes, self.size_max))
            if fsutil.preallocate(self.fd, self.allocated, target - self.allocated):
                self.allocated = target
            else:
                self.preallocate_bytes = 0  # the filesystem cannot (or is full): append
        if self.unsynced + len(data) <= UNSYNCED_BYTES_MAX:
            self._put(data)
        else:
            self._write_in_parts(memoryview(data))
        self.offsets.extend(offsets)
        self.allocated = max(self.allocated, end)

    def _write_in_parts(self, view: memoryview) -> None:
        while view:
            if self.unsynced >= UNSYNCED_BYTES_MAX:
                self.sync()
            part = view[:UNSYNCED_BYTES_MAX - self.unsynced]
            self._put(part)
            view = view[len(part):]

    def _put(self, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` at the end, unsynced."""
        fsutil.pwrite_all(self.fd, data, self.end)
        self.end += len(data)
        self.unsynced += len(data)
        self.dirty = True

    def sync(self) -> None:
        """fdatasync the file if anything was written since the last sync."""
        if self.dirty:
            fsutil.fdatasync(self.fd)
            self.synced()

    def synced(self) -> None:
        """Record an fdatasync of the file that ran elsewhere (``WalLogStore.mark_synced``)."""
        self.dirty = False
        self.unsynced = 0

    def trim(self) -> None:
        """Cut off the space reserved after the records (synced by the next ``sync``):
        before the log rolls past this segment, and on close."""
        if self.allocated > self.end:
            os.ftruncate(self.fd, self.end)
            self.allocated = self.end
            self.dirty = True

    def truncate(self, index: int) -> None:
        """Durably drop the records of ``index`` and later: the cut is on disk before
        this returns, so no later write can land next to stale records."""
        keep = index - self.first_index
        new_end = self.offsets[keep] if keep < len(self.offsets) else self.end
        os.ftruncate(self.fd, new_end)  # the reserve after it goes too: no stale bytes
        fsutil.fdatasync(self.fd)
        del self.offsets[keep:]
        self.end = self.allocated = new_end
        self.dirty = False
        self.unsynced = 0

    # -- reading -------------------------------------------------------------------------

    def _offset(self, k: int) -> int:
        return self.offsets[k] if k < len(self.offsets) else self.end

    def read(self, lo: int, hi: int, max_bytes: int | None) -> list[Entry]:
        """Entries ``[lo, hi)`` from this file. With ``max_bytes``, stop after the first
        entry that takes the ``Entry.size()`` total over it (the caller trims). A record
        is always larger on disk than its ``size()``, so a window of records whose disk
        bytes fit the remaining budget never overshoots by more than one entry."""
        k, k_end = lo - self.first_index, hi - self.first_index
        assert 0 <= k <= k_end <= len(self.offsets), (lo, hi, self)
        out: list[Entry] = []
        used = 0
        while k < k_end:
            j = k_end
            if max_bytes is not None:
                budget, start, j = max_bytes - used, self.offsets[k], k + 1
                while j < k_end and self._offset(j + 1) - start <= budget:
                    j += 1
            entries = self._read_window(k, j)
            if max_bytes is None:
                return entries
            for entry in entries:
                out.append(entry)
                used += entry.size()
                if used > max_bytes:
                    return out
            k = j
        return out

    def _read_window(self, k: int, j: int) -> list[Entry]:
        start = self.offsets[k]
        data = memoryview(fsutil.pread_exact(self.fd, self._offset(j) - start, start))
        out, pos = decode_entries(data, self.first_index + k)
        if pos < len(data):  # bit rot since the open scan, or a bug: say where
            try:
                payload, _ = read_record(data, pos)
                index = decode_term_index(payload)[1]
                expected = self.first_index + k + len(out)
                what = f"a record for index {index} where index {expected} belongs"
            except ValueError as e:
                what = str(e)
            raise self._corrupt(start + pos, f"{what} (found on read)")
        return out

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def remove(self) -> None:
        """Close and unlink the file (the caller fsyncs the directory if it must)."""
        self.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def storage_error(action: str, path: str, error: OSError) -> StorageError:
    """An operator-facing error for a failed system call on ``path``."""
    return StorageError(
        f"could not {action} {path}: {error.strerror or error}. The WAL stops accepting "
        "writes: entries not yet synced may be lost and the page cache can no longer be "
        "trusted after a failed write or fsync. Fix the cause (disk full? failing disk?) "
        "and restart the node; it recovers from what is on disk.")

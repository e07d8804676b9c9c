"""On-disk framing of the write-ahead log: segment names, headers and records.

A segment file ``wal/<first index, 20 digits>.seg`` is a 32-byte header followed by
records::

    segment header  <8sHHQQI  magic b"KVRFTWAL", format version, flags (0),
                              log generation, first index, CRC32 of the 28 bytes before
    record header   <III      payload length, CRC32 of the payload,
                              CRC32 of the 8 header bytes before it
    payload         msgpack [term, index, type, data]

The header's own checksum lets the reader trust a record's length before it reads the
payload: a torn or flipped length is caught at once instead of sending the reader
past the end of the file. The generation changes when the whole log is replaced by an
installed snapshot (``reset``); segments of an older generation are leftovers.
"""

from __future__ import annotations

import re
import struct
from zlib import crc32

import msgpack

from kvraft.raft.types import Entry, EntryType

SEGMENT_MAGIC = b"KVRFTWAL"
SEGMENT_VERSION = 1
SEGMENT_HEADER = struct.Struct("<8sHHQQI")
RECORD_HEADER = struct.Struct("<III")
RECORD_PAYLOAD_BYTES_MAX = 256 * 1024 * 1024
"""Largest record payload written or believed on read (an entry batch is far smaller:
the core caps proposals long before this)."""

_SEGMENT_NAME = re.compile(r"^(\d{20})\.seg$")
_LENGTH_CRC = struct.Struct("<II")
_CHECK = struct.Struct("<I")
_packb = msgpack.Packer(use_bin_type=True).pack


def segment_name(first_index: int) -> str:
    """``00000000000000000001.seg`` for a segment whose first entry is index 1."""
    return f"{first_index:020d}.seg"


def parse_segment_name(name: str) -> int | None:
    """The first index a segment file name claims, or None if it is not a segment."""
    match = _SEGMENT_NAME.match(name)
    return int(match.group(1)) if match else None


def encode_segment_header(generation: int, first_index: int) -> bytes:
    """The 32-byte header of a new segment."""
    head = SEGMENT_HEADER.pack(SEGMENT_MAGIC, SEGMENT_VERSION, 0, generation, first_index, 0)
    return head[:-4] + _CHECK.pack(crc32(head[:-4]))


def decode_segment_header(data: bytes) -> tuple[int, int]:
    """``(generation, first_index)`` from a segment header; ``ValueError`` saying what is
    wrong if ``data`` is not a valid header."""
    if len(data) < SEGMENT_HEADER.size:
        raise ValueError(f"the segment header is short ({len(data)} of "
                         f"{SEGMENT_HEADER.size} bytes)")
    magic, version, _flags, generation, first_index, check = SEGMENT_HEADER.unpack_from(data)
    if magic != SEGMENT_MAGIC:
        raise ValueError("the file does not start with a kvraft WAL segment header")
    if crc32(data[:SEGMENT_HEADER.size - 4]) != check:
        raise ValueError("the segment header fails its checksum")
    if version != SEGMENT_VERSION:
        raise ValueError(f"segment format version {version} is not supported (this "
                         f"kvraft reads version {SEGMENT_VERSION}); run a matching kvraft")
    return generation, first_index


def encode_record(entry: Entry) -> bytes:
    """One framed record holding ``entry``."""
    payload = _packb((entry.term, entry.index, int(entry.type), entry.data))
    if len(payload) > RECORD_PAYLOAD_BYTES_MAX:
        raise ValueError(f"entry {entry.index} is {len(payload)} bytes encoded, over "
                         f"RECORD_PAYLOAD_BYTES_MAX ({RECORD_PAYLOAD_BYTES_MAX})")
    head = _LENGTH_CRC.pack(len(payload), crc32(payload))
    return head + _CHECK.pack(crc32(head)) + payload


class RecordError(ValueError):
    """A record that cannot be read; ``incomplete`` when it runs past the end of the
    data (a torn write), ``end`` is where the record claims to end when known."""

    def __init__(self, message: str, incomplete: bool = False, end: int | None = None):
        super().__init__(message)
        self.incomplete = incomplete
        self.end = end


def read_record(data: bytes | memoryview, pos: int) -> tuple[bytes | memoryview, int]:
    """The payload of the record at ``pos`` and the offset just after it.

    Raises ``RecordError`` for a short header, a header or payload checksum mismatch,
    or a payload running past the end of ``data``.
    """
    size = len(data)
    if size - pos < RECORD_HEADER.size:
        raise RecordError(f"a short record header ({size - pos} of {RECORD_HEADER.size} "
                          "bytes)", incomplete=True)
    length, payload_crc, header_crc = RECORD_HEADER.unpack_from(data, pos)
    if crc32(data[pos:pos + 8]) != header_crc:
        raise RecordError("a record header that fails its checksum")
    if length > RECORD_PAYLOAD_BYTES_MAX:
        raise RecordError(f"a record length of {length} bytes, over the maximum")
    start = pos + RECORD_HEADER.size
    end = start + length
    if end > size:
        raise RecordError(f"a short record ({size - start} of {length} payload bytes)",
                          incomplete=True)
    payload = data[start:end]
    if crc32(payload) != payload_crc:
        raise RecordError("a record that fails its checksum", end=end)
    return payload, end


_KINDS = {int(kind): kind for kind in EntryType}
TERM_MAX = (1 << 64) - 1


def decode_term_index(payload: bytes | memoryview) -> tuple[int, int]:
    """``(term, index)`` of a checksummed payload; ``ValueError`` saying what is wrong
    if it is not a log entry. (The slow, diagnosing path: see ``scan_records``.)"""
    try:
        term, index, kind, data = msgpack.unpackb(payload, raw=False)
    except Exception as e:
        raise ValueError(f"a record whose payload is not a log entry ({e})") from None
    if kind not in _KINDS:
        raise ValueError(f"a record with an unknown entry type {kind!r} (written by a newer "
                         "kvraft?)")
    if type(term) is not int or type(index) is not int or type(data) is not bytes \
            or not 0 <= term <= TERM_MAX:
        raise ValueError("a record whose payload is not a log entry (wrong field types)")
    return term, index


def scan_records(data: bytes | memoryview, pos: int, expected: int, previous_term: int,
                 offsets, terms) -> tuple[int, int, int]:
    """Walk the valid records of ``data`` from ``pos``: checksums good, indexes from
    ``expected`` on, terms not below ``previous_term``. Append each record's offset and
    term; stop at the end or at the first record that fails a check (the caller
    diagnoses it with ``read_record``/``decode_term_index``). Returns the stop offset,
    the next expected index and the last term.

    This is the hot loop of opening a log (one pass over every record), written
    without per-record function calls besides the checksum and the unpacking.
    """
    size = len(data)
    unpack_header = RECORD_HEADER.unpack_from
    header_bytes = RECORD_HEADER.size
    unpackb = msgpack.unpackb
    kinds = _KINDS
    add_offset, add_term = offsets.append, terms.append
    while size - pos >= header_bytes:
        length, payload_crc, header_crc = unpack_header(data, pos)
        start = pos + header_bytes
        end = start + length
        if end > size or crc32(data[pos:pos + 8]) != header_crc:
            break
        payload = data[start:end]
        if crc32(payload) != payload_crc:
            break
        try:
            term, index, kind, body = unpackb(payload)
        except Exception:
            break
        if index != expected or kind not in kinds or type(term) is not int \
                or type(body) is not bytes or not previous_term <= term <= TERM_MAX:
            break
        add_offset(pos)
        add_term(term)
        previous_term = term
        expected += 1
        pos = end
    return pos, expected, previous_term


def decode_entries(data: bytes | memoryview, expected: int) -> tuple[list[Entry], int]:
    """Entries from back-to-back records in ``data``, indexes from ``expected`` on.
    Stops at the end or at the first record that fails a check; returns the entries and
    the offset where it stopped (``len(data)`` when all were good)."""
    size = len(data)
    unpack_header = RECORD_HEADER.unpack_from
    header_bytes = RECORD_HEADER.size
    unpackb = msgpack.unpackb
    kinds = _KINDS
    out: list[Entry] = []
    add = out.append
    pos = 0
    while size - pos >= header_bytes:
        length, payload_crc, header_crc = unpack_header(data, pos)
        start = pos + header_bytes
        end = start + length
        if end > size or crc32(data[pos:pos + 8]) != header_crc:
            break
        payload = data[start:end]
        if crc32(payload) != payload_crc:
            break
        try:
            term, index, kind, body = unpackb(payload)
            add(Entry(term, index, kinds[kind], body))
        except Exception:
            break
        if index != expected:
            out.pop()
            break
        expected += 1
        pos = end
    return out, pos

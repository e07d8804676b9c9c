"""kv snapshots: consistent copy-on-write views, bounded chunks, exact round trips, and
restore refusing damaged input with a clear ValueError while keeping the old state."""

import gc
import threading

import msgpack
import pytest

from kvraft.machines.kv import KvStateMachine
from kvraft.machines.kv_snapshot import SNAPSHOT_VERSION, SnapshotError


def _filled(count=50, value_bytes=10):
    machine = KvStateMachine(snapshot_chunk_bytes=256)
    for i in range(count):
        machine.apply(i + 1, [b"SET", b"key:%d" % i, b"%0*d" % (value_bytes, i)])
    machine.apply(count + 1, [b"DEL", b"key:0"])
    machine.apply(count + 2, [b"INCR", b"counter"])
    return machine


def _body(machine):
    return b"".join(machine.snapshot().chunks())


def _state(machine):
    """Everything observable: keys in order with values and revisions, and counters."""
    keys = machine.query([b"KEYS", b"*"])
    return ([(k, machine.query([b"GET", k]), machine.revision(k)) for k in keys],
            machine.current_revision, machine.last_applied)


def test_round_trip_restores_everything_and_rewrites_identical_bytes():
    source = _filled()
    chunks = list(source.snapshot().chunks())
    target = KvStateMachine()
    target.apply(1, [b"SET", b"stale", b"gone"])
    target.restore(chunks)
    assert _state(target) == _state(source)
    assert target.query([b"EXISTS", b"stale"]) == 0  # replaced completely
    assert target.last_applied == source.last_applied  # from the header...
    target.set_last_applied(99)  # ...until the caller says otherwise
    assert target.last_applied == 99
    target.set_last_applied(source.last_applied)
    assert _body(target) == b"".join(chunks)


def test_empty_machine_round_trips():
    target = KvStateMachine()
    target.restore(KvStateMachine().snapshot().chunks())
    assert _state(target) == ([], 0, 0)


def test_chunks_are_bounded_by_snapshot_chunk_bytes():
    machine = _filled(count=200, value_bytes=100)
    chunks = list(machine.snapshot().chunks())
    assert len(chunks) > 20
    assert {len(chunk) for chunk in chunks[:-1]} == {256}
    assert 0 < len(chunks[-1]) <= 256
    bigger = KvStateMachine(snapshot_chunk_bytes=4096)
    bigger.restore(chunks)
    assert b"".join(chunks) == b"".join(bigger.snapshot().chunks())  # same bytes


def test_view_is_frozen_while_the_machine_keeps_applying():
    machine = _filled()
    expected = _state(machine)
    view = machine.snapshot()
    assert view.index == machine.last_applied and view.count == 50
    machine.apply(100, [b"SET", b"key:1", b"changed"])
    machine.apply(101, [b"DEL", b"key:2"])
    machine.apply(102, [b"SET", b"new", b"x"])
    machine.apply(103, [b"FLUSHALL"])
    machine.apply(104, [b"SET", b"after", b"flush"])
    restored = KvStateMachine()
    restored.restore(view.chunks())
    assert _state(restored) == expected
    assert machine.query([b"KEYS", b"*"]) == [b"after"]


def test_serializing_in_another_thread_while_applying_gives_the_snapshot_state():
    machine = _filled(count=2000, value_bytes=20)
    expected = _body(machine)
    view = machine.snapshot()
    out = []
    worker = threading.Thread(target=lambda: out.append(b"".join(view.chunks())))
    worker.start()
    for i in range(2000):
        machine.apply(3000 + i, [b"SET", b"key:%d" % i, b"new"])
        machine.apply(3000 + i, [b"DEL", b"key:%d" % (i // 2)])
    worker.join(timeout=30)
    assert not worker.is_alive()
    assert out == [expected]


def test_writes_fold_back_once_the_view_is_dropped():
    machine = _filled()
    view = machine.snapshot()
    machine.apply(100, [b"SET", b"key:1", b"changed"])
    assert machine._keys.frozen
    del view
    gc.collect()
    machine.apply(101, [b"GET", b"key:1"])
    assert not machine._keys.frozen
    assert machine.query([b"GET", b"key:1"]) == b"changed"


def test_two_live_views_each_keep_their_own_state():
    machine = _filled()
    first_bytes = _body(machine)
    first = machine.snapshot()
    machine.apply(100, [b"SET", b"key:1", b"changed"])
    second_bytes = _body(machine)
    second = machine.snapshot()
    machine.apply(101, [b"DEL", b"key:1"])
    assert b"".join(first.chunks()) == first_bytes
    assert b"".join(second.chunks()) == second_bytes
    assert first_bytes != second_bytes


# -- damaged input --------------------------------------------------------------------------

def _records(machine):
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(_body(machine))
    return list(unpacker)


def _encode(records):
    packer = msgpack.Packer(use_bin_type=True)
    return [packer.pack(record) for record in records]


def _with_header(**changes):
    records = _records(_filled(count=3))
    records[0].update(changes)
    return _encode(records)


def _with_first_batch(edit):
    records = _records(_filled(count=3))
    edit(records[1])
    return _encode(records)


BAD_SNAPSHOTS = {
    "empty": ([], "no header record"),
    "not msgpack": ([b"\xc1garbage"], "not valid msgpack"),
    "other format": (_encode([{"format": "other", "version": 1}]), "not a kv state-machine"),
    "not a map": (_encode([[1, 2]]), "not a kv state-machine"),
    "future version": (_with_header(version=SNAPSHOT_VERSION + 1),
                       f"format version {SNAPSHOT_VERSION + 1} is not supported"),
    "negative index": (_with_header(index=-1), "'index' must be a non-negative integer"),
    "count too high": (_with_header(count=99), "header says 99 keys"),
    "revision too low": (_with_header(revision=1), "mod revision is 0 or above"),
    "odd batch": (_with_first_batch(lambda batch: batch.pop()), "key/value pairs"),
    "str key": (_with_first_batch(lambda batch: batch.__setitem__(0, "k")),
                "not a byte string"),
    "short value": (_with_first_batch(lambda batch: batch.__setitem__(1, b"1234567")),
                    "lacks its 8-byte revision"),
    "zero revision": (_with_first_batch(lambda batch: batch.__setitem__(1, bytes(9))),
                      "mod revision is 0"),
    "duplicate key": (_with_first_batch(lambda batch: batch.__setitem__(2, batch[0])),
                      "distinct keys"),
    "non-bytes chunk": (["a string"], "chunks must be bytes"),
}


@pytest.mark.parametrize("name", sorted(BAD_SNAPSHOTS))
def test_damaged_snapshots_are_refused_and_the_state_is_kept(name):
    chunks, fragment = BAD_SNAPSHOTS[name]
    machine = _filled(count=5)
    before = _state(machine)
    with pytest.raises(ValueError, match=fragment) as info:
        machine.restore(chunks)
    assert isinstance(info.value, SnapshotError)
    assert _state(machine) == before


@pytest.mark.parametrize("cut", [1, 5, 20])
def test_truncated_snapshot_is_refused(cut):
    body = _body(_filled(count=5))
    with pytest.raises(ValueError, match="truncated|header says"):
        KvStateMachine().restore([body[:-cut]])


def test_oversized_record_is_refused_by_the_buffer_limit():
    body = _body(_filled(count=50, value_bytes=100))
    with pytest.raises(ValueError, match="exceeds 512 bytes"):
        KvStateMachine(snapshot_buffer_bytes_max=512).restore([body])


def test_restore_accepts_any_chunking():
    source = _filled(count=30)
    body = _body(source)
    target = KvStateMachine()
    target.restore(body[i:i + 7] for i in range(0, len(body), 7))
    assert _state(target) == _state(source)


def test_many_batches_round_trip_and_are_checked_across_batches(monkeypatch):
    from kvraft.machines import kv_snapshot

    monkeypatch.setattr(kv_snapshot, "BATCH_BYTES", 300)
    source = _filled(count=200, value_bytes=30)
    records = _records(source)
    assert len(records) > 20  # the header and many arrays
    target = KvStateMachine()
    target.restore(_encode(records))
    assert _state(target) == _state(source)
    records[-1][0] = records[1][0]  # a key of the first batch again, in the last one
    with pytest.raises(ValueError, match="distinct keys"):
        KvStateMachine().restore(_encode(records))

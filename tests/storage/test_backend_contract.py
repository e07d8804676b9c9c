"""One contract, every backend: memory, wal and sqlite must behave the same.

Each test runs once per backend (the ``harness`` fixture); reopen checks run on the file
backends only. Limits are small (storage_support.SMALL) so a few hundred entries roll WAL
segments and fall out of the entry cache: reads exercise the disk paths too.
"""

from __future__ import annotations

import random

import pytest
from storage_support import FILE_BACKENDS, Harness, entry_data, make_entries
from zope.interface.verify import verifyObject

from kvraft.interfaces import (
    ILogStore,
    ISnapshotStore,
    ISnapshotWriter,
    IStableStore,
    IStorage,
)
from kvraft.raft.types import ConfState, Entry, EntryType, HardState, SnapshotMetadata
from kvraft.storage import CompactedError, StorageError, UnavailableError
from kvraft.storage.logindex import limit_size


def check_log(log, expected: dict[int, Entry], first: int, last: int) -> None:
    """The log holds exactly ``expected[first..last]``, read in several ways."""
    assert (log.first_index(), log.last_index()) == (first, last)
    for index in range(first, last + 1):
        assert log.term(index) == expected[index].term, index
    assert log.entries(first, last + 1) == [expected[i] for i in range(first, last + 1)]
    if last >= first:
        mid = (first + last) // 2
        assert log.entries(mid, last + 1) == [expected[i] for i in range(mid, last + 1)]
        assert log.entries(first, mid + 1) == [expected[i] for i in range(first, mid + 1)]
    if hasattr(log, "check_invariants"):
        log.check_invariants()


def test_every_store_provides_its_interface(harness):
    s = harness.storage
    assert verifyObject(IStorage, s)
    assert verifyObject(ILogStore, s.log)
    assert verifyObject(IStableStore, s.stable)
    assert verifyObject(ISnapshotStore, s.snapshots)
    writer = s.snapshots.create(SnapshotMetadata(index=1, term=1))
    assert verifyObject(ISnapshotWriter, writer)
    writer.abort()


def test_a_new_storage_is_empty(harness):
    s = harness.storage
    assert (s.log.first_index(), s.log.last_index()) == (1, 0)
    assert s.log.term(0) == 0
    assert s.log.entries(1, 1) == []
    with pytest.raises(UnavailableError):
        s.log.term(1)
    with pytest.raises(UnavailableError):
        s.log.entries(1, 2)
    assert s.stable.hard_state() == HardState()
    assert s.stable.metadata() == {}
    assert s.snapshots.latest() is None
    assert s.snapshots.list() == []


def test_appended_entries_read_back_by_range_and_term(harness):
    log = harness.storage.log
    entries = make_entries(1, 100, term=1) + make_entries(101, 100, term=3)
    entries[5] = Entry(term=1, index=6, type=EntryType.ConfChange, data=b"\x81\xa1a\x01")
    entries[6] = Entry(term=1, index=7, data=b"")  # a leader's no-op
    for lo in range(0, 200, 37):  # several append calls, as the node does
        log.append(entries[lo:lo + 37])
    expected = {e.index: e for e in entries}
    check_log(log, expected, 1, 200)
    assert log.entries(6, 8) == entries[5:7]
    assert log.entries(6, 7)[0].type is EntryType.ConfChange
    log.sync()
    if harness.durable:
        check_log(harness.reopen().log, expected, 1, 200)


def test_entries_stop_at_max_bytes_but_return_at_least_one(harness):
    log = harness.storage.log
    entries = make_entries(1, 150, term=2)
    log.append(entries)
    rng = random.Random(7)
    for _ in range(60):
        lo = rng.randint(1, 150)
        hi = rng.randint(lo, 151)
        max_bytes = rng.choice([0, 1, 50, 200, 1000, 5000, 10**9])
        got = log.entries(lo, hi, max_bytes=max_bytes)
        assert got == limit_size(entries[lo - 1:hi - 1], max_bytes), (lo, hi, max_bytes)
        if hi > lo:
            assert len(got) >= 1
            assert len(got) == 1 or sum(e.size() for e in got) <= max_bytes


def test_reads_outside_the_log_raise_compacted_or_unavailable(harness):
    log = harness.storage.log
    log.append(make_entries(1, 30, term=1))
    log.compact(10)
    assert log.term(10) == 1  # the compaction point keeps its term
    with pytest.raises(CompactedError):
        log.term(9)
    with pytest.raises(CompactedError):
        log.entries(10, 12)
    with pytest.raises(UnavailableError):
        log.term(31)
    with pytest.raises(UnavailableError):
        log.entries(25, 32)
    with pytest.raises(ValueError, match="lo must not exceed hi"):
        log.entries(20, 19)


@pytest.mark.parametrize("bad, message", [
    ([Entry(1, 12)], "gap"),
    ([Entry(1, 5), Entry(1, 7)], "contiguous"),
    ([Entry(2, 5), Entry(1, 6)], "below the term"),
    ([Entry(0, 11)], "below the term"),
    ([Entry(1, 2)], "below the first index"),
])
def test_appends_that_break_the_log_are_refused(harness, bad, message):
    log = harness.storage.log
    log.append(make_entries(1, 10, term=1))
    log.compact(3)
    with pytest.raises(ValueError, match=message):
        log.append(bad)
    check_log(log, {e.index: e for e in make_entries(1, 10, term=1)}, 4, 10)


@pytest.mark.parametrize("cut", [2, 57, 100, 150, 181, 200])
def test_a_conflicting_suffix_is_replaced(harness, cut):
    """Raft 5.3: an append that conflicts discards the suffix from its first index."""
    log = harness.storage.log
    old = make_entries(1, 200, term=1)
    log.append(old)
    log.sync()
    new = make_entries(cut, 12, term=2)
    log.append(new)
    expected = {e.index: e for e in old[:cut - 1] + new}
    check_log(log, expected, 1, cut + 11)
    log.append(make_entries(cut + 12, 5, term=2))  # and the log goes on from there
    expected.update({e.index: e for e in make_entries(cut + 12, 5, term=2)})
    check_log(log, expected, 1, cut + 16)
    log.sync()
    if harness.durable:
        check_log(harness.reopen().log, expected, 1, cut + 16)


def test_compact_discards_a_prefix_and_keeps_its_term(harness):
    log = harness.storage.log
    entries = make_entries(1, 120, term=1) + make_entries(121, 80, term=2)
    log.append(entries)
    expected = {e.index: e for e in entries}
    log.compact(130)
    check_log(log, expected, 131, 200)
    assert log.term(130) == 2
    log.compact(100)  # already compacted further: nothing happens
    check_log(log, expected, 131, 200)
    with pytest.raises(ValueError, match="beyond the last index"):
        log.compact(201)
    log.append(make_entries(201, 10, term=2))
    expected.update({e.index: e for e in make_entries(201, 10, term=2)})
    log.compact(210)  # everything: an empty log that remembers where it stands
    assert (log.first_index(), log.last_index(), log.term(210)) == (211, 210, 2)
    log.append(make_entries(211, 3, term=4))
    expected.update({e.index: e for e in make_entries(211, 3, term=4)})
    check_log(log, expected, 211, 213)
    log.sync()
    if harness.durable:
        log = harness.reopen().log
        check_log(log, expected, 211, 213)
        assert log.term(210) == 2


def test_reset_restarts_the_log_after_an_installed_snapshot(harness):
    s = harness.storage
    s.log.append(make_entries(1, 50, term=1))
    s.log.sync()
    s.log.reset(30, 5)  # below the last index: the whole log still goes
    assert (s.log.first_index(), s.log.last_index(), s.log.term(30)) == (31, 30, 5)
    with pytest.raises(UnavailableError):
        s.log.term(31)
    with pytest.raises(ValueError, match="below the term"):
        s.log.append([Entry(term=4, index=31)])
    s.log.append(make_entries(31, 5, term=5))
    s.log.sync()
    expected = {e.index: e for e in make_entries(31, 5, term=5)}
    check_log(s.log, expected, 31, 35)
    s.log.reset(1000, 6)  # far ahead of the log
    assert (s.log.first_index(), s.log.last_index(), s.log.term(1000)) == (1001, 1000, 6)
    s.log.append(make_entries(1001, 3, term=6))
    s.log.sync()
    if harness.durable:
        s = harness.reopen()
        check_log(s.log, {e.index: e for e in make_entries(1001, 3, term=6)}, 1001, 1003)
        assert s.log.term(1000) == 6
        # The snapshot's entries are committed: a restart never reports less.
        assert s.stable.hard_state().commit >= 1000


def test_hard_state_round_trips(harness):
    s = harness.storage
    s.stable.save_hard_state(HardState(term=3, vote="n2", commit=0))
    s.log.append(make_entries(1, 20, term=3))
    s.log.sync()
    s.stable.save_hard_state(HardState(term=3, vote="n2", commit=17))  # commit only
    assert s.stable.hard_state() == HardState(term=3, vote="n2", commit=17)
    returned = s.stable.hard_state()
    returned.term = 99  # a copy: the store is not aliased
    assert s.stable.hard_state().term == 3
    if harness.durable:
        # A commit-only change is written lazily; close() writes it.
        assert harness.reopen().stable.hard_state() == HardState(term=3, vote="n2",
                                                                  commit=17)


def test_metadata_round_trips(harness):
    s = harness.storage
    meta = {"cluster": "prod", "voters": ("n1", "n2"), "addresses": {"n1": "h:1"},
            "blob": b"\x00\xff"}
    s.stable.save_metadata(meta)
    expected = {"cluster": "prod", "voters": ["n1", "n2"], "addresses": {"n1": "h:1"},
                "blob": b"\x00\xff"}  # msgpack: tuples come back as lists
    assert s.stable.metadata() == expected
    s.stable.metadata()["cluster"] = "changed"  # a copy
    assert s.stable.metadata() == expected
    with pytest.raises(TypeError, match="must be a dict"):
        s.stable.save_metadata(["not", "a", "dict"])
    if harness.durable:
        assert harness.reopen().stable.metadata() == expected


@pytest.mark.parametrize("backend", FILE_BACKENDS)
def test_reopen_preserves_everything_synced(backend, tmp_path):
    h = Harness(backend, str(tmp_path / "data"))
    s = h.storage
    entries = make_entries(1, 80, term=1) + make_entries(81, 90, term=2)
    s.log.append(entries)
    s.log.compact(40)
    s.stable.save_hard_state(HardState(term=2, vote="n3", commit=150))
    s.stable.save_metadata({"cluster": "c"})
    w = s.snapshots.create(SnapshotMetadata(40, 1, ConfState(voters=("n1", "n3"))))
    w.write(b"state")
    w.commit()
    s.log.sync()
    s = h.reopen()
    expected = {e.index: e for e in entries}
    check_log(s.log, expected, 41, 170)
    assert s.stable.hard_state() == HardState(term=2, vote="n3", commit=150)
    assert s.stable.metadata() == {"cluster": "c"}
    assert s.snapshots.latest() == SnapshotMetadata(40, 1, ConfState(voters=("n1", "n3")))
    assert b"".join(s.snapshots.open(40)) == b"state"
    s.log.append(make_entries(171, 5, term=2))  # and it keeps going
    s.log.sync()
    expected.update({e.index: e for e in make_entries(171, 5, term=2)})
    check_log(h.reopen().log, expected, 41, 175)
    h.close()


@pytest.mark.parametrize("backend", FILE_BACKENDS)
def test_a_data_dir_is_opened_by_one_storage_at_a_time(backend, tmp_path):
    h = Harness(backend, str(tmp_path / "data"))
    with pytest.raises(StorageError, match="in use by another"):
        Harness(backend, str(tmp_path / "data"))
    h.close()
    Harness(backend, str(tmp_path / "data")).close()  # released on close


@pytest.mark.parametrize("backend", FILE_BACKENDS)
def test_an_unusable_data_dir_is_an_operator_error_not_a_traceback(backend, tmp_path):
    from storage_support import OPENERS

    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(StorageError, match="could not use .* as data_dir"):
        OPENERS[backend](str(blocker / "data"), {})


def test_unknown_options_are_refused_with_the_known_ones(harness, tmp_path):
    from storage_support import OPENERS

    with pytest.raises(ValueError, match=f"not known to the '{harness.backend}' backend"):
        OPENERS[harness.backend](str(tmp_path / "other"), {"bogus_option": 1})
    with pytest.raises(ValueError, match="positive integer"):
        OPENERS[harness.backend](str(tmp_path / "other"), {"snapshot_chunk_bytes": -1})


# -- snapshot store ---------------------------------------------------------------------


def write_snapshot(store, index: int, term: int, body: bytes, chunk: int = 7,
                   conf: ConfState | None = None) -> SnapshotMetadata:
    writer = store.create(SnapshotMetadata(index, term, conf or ConfState(voters=("n1",))))
    for i in range(0, len(body), chunk):
        writer.write(body[i:i + chunk])
    return writer.commit()


def test_snapshots_round_trip_with_their_configuration(harness):
    store = harness.storage.snapshots
    conf = ConfState(voters=("n1", "n2"), learners=("n4",), voters_outgoing=("n1", "n3"),
                     learners_next=("n3",), auto_leave=True)
    body = bytes(range(256)) * 40
    meta = write_snapshot(store, 10, 2, body, conf=conf)
    assert meta == SnapshotMetadata(10, 2, conf)
    assert store.latest() == meta
    chunks = list(store.open(10))
    assert b"".join(chunks) == body
    assert len(chunks) > 1 or len(body) <= 1 << 20
    assert write_snapshot(store, 11, 2, b"") == SnapshotMetadata(11, 2, ConfState(("n1",)))
    assert b"".join(store.open(11)) == b""


def test_snapshots_are_listed_newest_first_and_retained(harness):
    store = harness.storage.snapshots
    for index, term in [(20, 1), (50, 2), (35, 1), (50, 3)]:
        write_snapshot(store, index, term, f"body {index} {term}".encode())
    assert [(m.index, m.term) for m in store.list()] == [(50, 3), (50, 2), (35, 1), (20, 1)]
    assert (store.latest().index, store.latest().term) == (50, 3)
    assert b"".join(store.open(50)) == b"body 50 3"  # the newest term at that index
    store.retain(2)
    assert [(m.index, m.term) for m in store.list()] == [(50, 3), (50, 2)]
    with pytest.raises(KeyError):
        store.open(35)
    store.retain(0)
    assert store.list() == [] and store.latest() is None
    if harness.durable:
        assert harness.reopen().snapshots.list() == []


def test_an_aborted_or_unfinished_snapshot_is_never_visible(harness):
    store = harness.storage.snapshots
    writer = store.create(SnapshotMetadata(5, 1))
    writer.write(b"partial")
    assert store.list() == []  # not yet committed
    writer.abort()
    writer.abort()  # idempotent
    with pytest.raises(ValueError):
        writer.write(b"more")
    assert store.list() == []
    committed = store.create(SnapshotMetadata(6, 1))
    committed.commit()
    with pytest.raises(ValueError):
        committed.write(b"late")
    assert [m.index for m in store.list()] == [6]
    if harness.durable:
        assert [m.index for m in harness.reopen().snapshots.list()] == [6]


# -- a randomized model check -------------------------------------------------------------


def test_random_operations_match_a_simple_model(harness):
    """Appends (with conflicts), compactions, resets, syncs and reopens, checked after
    every step against a dict model."""
    rng = random.Random(2024)
    model: dict[int, Entry] = {}
    first, last, term = 1, 0, 1
    s = harness.storage
    for step in range(250):
        op = rng.random()
        if op < 0.6 or last < first:
            start = rng.randint(max(first, last - 15), last + 1) if last >= first else first
            if start <= last:
                term += 1
            batch = [Entry(term, i, data=entry_data(i, term))
                     for i in range(start, start + rng.randint(1, 25))]
            s.log.append(batch)
            for i in range(start, last + 1):
                model.pop(i, None)
            model.update({e.index: e for e in batch})
            last = batch[-1].index
        elif op < 0.75:
            index = rng.randint(first - 1, last)
            s.log.compact(index)
            first = max(first, index + 1)
        elif op < 0.8:
            term += 1
            index = rng.randint(last - 5, last + 40)
            s.log.reset(index, term)
            model = {index: Entry(term, index)}
            first, last = index + 1, index
        elif op < 0.95:
            s.log.sync()
        elif harness.durable:
            s.log.sync()
            s = harness.reopen()
        check_log(s.log, model, first, last)
        if first > 1 and first - 1 in model:
            assert s.log.term(first - 1) == model[first - 1].term, step


def test_range_errors_are_the_cores_own_classes():
    # The core catches these by class: storage must raise exactly the core's.
    import kvraft.raft

    assert CompactedError is kvraft.raft.CompactedError
    assert UnavailableError is kvraft.raft.UnavailableError

"""What the sqlite backend adds to the shared contract: its transaction discipline,
row checksums and open-time checks."""

from __future__ import annotations

import os
import sqlite3

import pytest
from storage_support import make_entries

from kvraft.raft.types import HardState
from kvraft.storage import CorruptLogError
from kvraft.storage.sqlite import DB_NAME, open_storage

OPTIONS = {"cache_bytes_max": 300}


def crash(storage) -> None:
    """Drop a sqlite storage as a dying process would: no commit (SQLite rolls the open
    transaction back), then release the data_dir lock."""
    storage.log._db.conn.close()
    storage.log._db.in_transaction = False
    storage.log._db.conn = sqlite3.connect(":memory:")  # so release() has one to close
    storage._release()


def test_the_database_runs_in_wal_mode_with_full_sync(tmp_path):
    storage = open_storage(str(tmp_path / "data"), OPTIONS)
    conn = storage.log._db.conn
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    storage.close()
    assert os.path.exists(tmp_path / "data" / DB_NAME)


def test_appends_are_durable_only_once_synced(tmp_path):
    path = str(tmp_path / "data")
    storage = open_storage(path, OPTIONS)
    storage.log.append(make_entries(1, 10, term=1))
    storage.log.sync()
    storage.log.append(make_entries(11, 10, term=1))
    storage.log.append(make_entries(5, 3, term=2))  # a truncation, also unsynced
    crash(storage)
    storage = open_storage(path, OPTIONS)
    assert storage.log.last_index() == 10
    assert storage.log.entries(1, 11) == make_entries(1, 10, term=1)
    storage.close()


def test_a_vote_is_durable_at_once_and_takes_pending_appends_with_it(tmp_path):
    path = str(tmp_path / "data")
    storage = open_storage(path, OPTIONS)
    storage.log.append(make_entries(1, 5, term=2))
    storage.stable.save_hard_state(HardState(term=2, vote="n2", commit=0))
    storage.stable.save_hard_state(HardState(term=2, vote="n2", commit=3))  # lazily
    crash(storage)
    storage = open_storage(path, OPTIONS)
    assert storage.stable.hard_state() == HardState(term=2, vote="n2", commit=0)
    assert storage.log.last_index() == 5  # committed in the same transaction
    storage.close()


def test_a_row_that_fails_its_checksum_is_reported_on_read(tmp_path):
    path = str(tmp_path / "data")
    storage = open_storage(path, OPTIONS)
    storage.log.append(make_entries(1, 50, term=1))
    storage.close()
    with sqlite3.connect(os.path.join(path, DB_NAME)) as conn:
        conn.execute("UPDATE log SET data = ? WHERE idx = 3", (b"rotten",))
    storage = open_storage(path, OPTIONS)
    with pytest.raises(CorruptLogError, match="corrupt at entry 3"):
        storage.log.entries(1, 5)  # cold: read from the database
    storage.close()


def test_a_gap_in_the_log_table_is_refused_on_open(tmp_path):
    path = str(tmp_path / "data")
    storage = open_storage(path, OPTIONS)
    storage.log.append(make_entries(1, 20, term=1))
    storage.close()
    with sqlite3.connect(os.path.join(path, DB_NAME)) as conn:
        conn.execute("DELETE FROM log WHERE idx = 7")
    with pytest.raises(CorruptLogError, match="entry 7 is missing"):
        open_storage(path, OPTIONS)

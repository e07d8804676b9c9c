"""Configuration keys of snapshots, compaction and membership (kvraft.config)."""

import pytest

from kvraft.config import ConfigError, from_dict


def doc(**sections):
    base = {
        "node": {"id": "n1", "data_dir": "d"},
        "cluster": {"members": {"n1": "127.0.0.1:7001", "n2": "127.0.0.1:7002"}},
        "peer": {"listen": "127.0.0.1:7001"},
        "tls": {"ca": "ca.pem", "cert": "c.pem", "key": "k.pem"},
    }
    for name, table in sections.items():
        base.setdefault(name, {}).update(table)
    return base


def test_defaults():
    config = from_dict(doc())
    assert config.raft.snapshot_entries == 100_000
    assert config.raft.snapshot_bytes == 128 << 20
    assert config.raft.compaction_margin_entries == 10_000
    assert config.snapshots_retained == 2 and config.preferred_leader == ""
    assert config.fsync_in_thread is False
    assert config.fsync_aio is True
    assert config.raft.proposal_hold_ms == 10
    assert config.raft.proposal_gather_ms == 2.0


@pytest.mark.parametrize("value", [0, 0.5, 3, 1000])
def test_proposal_gather_ms_takes_fractions_from_0_to_its_limit(value):
    assert from_dict(doc(raft={"proposal_gather_ms": value})).raft.proposal_gather_ms == value


@pytest.mark.parametrize("value, message", [
    (-1, "must be from 0 to 1000"), (1000.5, "must be from 0 to 1000"),
    (float("nan"), "must be from 0 to 1000"), (True, "expected int or float"),
    ("2", "expected int or float")])
def test_proposal_gather_ms_outside_its_range_is_refused(value, message):
    with pytest.raises(ConfigError, match=f"raft.proposal_gather_ms: {message}"):
        from_dict(doc(raft={"proposal_gather_ms": value}))


def test_proposal_hold_may_be_zero_not_negative():
    assert from_dict(doc(raft={"proposal_hold_ms": 0})).raft.proposal_hold_ms == 0
    with pytest.raises(ConfigError, match="raft.proposal_hold_ms: must be 0 or more"):
        from_dict(doc(raft={"proposal_hold_ms": -1}))


def test_fsync_in_thread_is_the_node_s_not_the_backend_s():
    # tests/bench/test_node_submit.py runs its nodes both ways through this key.
    config = from_dict(doc(storage={"fsync_in_thread": True}))
    assert config.fsync_in_thread is True and config.storage_options == {}
    with pytest.raises(ConfigError, match="storage.fsync_in_thread: expected bool"):
        from_dict(doc(storage={"fsync_in_thread": "yes"}))


def test_fsync_aio_is_the_node_s_not_the_backend_s():
    config = from_dict(doc(storage={"fsync_aio": False}))
    assert config.fsync_aio is False and config.storage_options == {}
    with pytest.raises(ConfigError, match="storage.fsync_aio: expected bool"):
        from_dict(doc(storage={"fsync_aio": 1}))


def test_snapshots_retained_is_not_passed_to_the_storage_backend():
    config = from_dict(doc(storage={"snapshots_retained": 3, "segment_bytes_max": 1024}))
    assert config.snapshots_retained == 3
    assert config.storage_options == {"segment_bytes_max": 1024}


@pytest.mark.parametrize("sections, message", [
    ({"raft": {"snapshot_entries": 0}}, "raft.snapshot_entries: must be greater than 0"),
    ({"raft": {"compaction_margin_entries": -1}}, "raft.compaction_margin_entries"),
    ({"storage": {"snapshots_retained": 0}}, "storage.snapshots_retained"),
    ({"cluster": {"preferred_leader": "n 1"}}, "cluster.preferred_leader"),
    ({"cluster": {"join": True, "members": {"n1": "127.0.0.1:7001"}}},
     "a joining node (cluster.join = true) must list the current members"),
])
def test_bad_values_name_the_key(sections, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        from_dict(doc(**sections))


def test_a_joining_node_need_not_list_itself():
    config = from_dict(doc(node={"id": "n9"}, cluster={"join": True}))
    assert config.join and "n9" not in config.members

"""RaftConfig validation and the pure PRNG."""

import random

import pytest

from kvraft.raft import RaftConfig, SplitMix64


@pytest.mark.parametrize("kwargs, words", [
    (dict(id=""), "non-empty node id"),
    (dict(id="n1", voters=("n1", "n1")), "twice"),
    (dict(id="n1", voters=("n1",), learners=("n1",)), "both voters and learners"),
    (dict(id="n1", voters=("n1",), election_ticks=1, heartbeat_ticks=1), "greater than"),
    (dict(id="n1", voters=("n1",), heartbeat_ticks=0), "heartbeat_ticks"),
    (dict(id="n1", voters=("n1",), max_inflight_msgs=0), "max_inflight_msgs"),
    (dict(id="n1", voters=("n1",), max_msg_bytes=0), "max_msg_bytes"),
    (dict(id="n1", voters=("n1",), max_uncommitted_bytes=-1), "max_uncommitted_bytes"),
    (dict(id="n1", voters=("n1",), read_only_option="fast"), "read_only_option"),
    (dict(id="n1", voters=("n1",), read_only_option="lease", check_quorum=False),
     "check_quorum"),
    (dict(id="n1", voters=("n1",), rng=object()), "randrange"),
])
def test_config_rejects_bad_values_with_a_clear_message(kwargs, words):
    with pytest.raises(ValueError, match=words):
        RaftConfig(**kwargs)


def test_config_defaults_and_rng():
    c = RaftConfig(id="n1", voters=["n1", "n2"])
    assert c.voters == ("n1", "n2") and c.max_msg_bytes == 1 << 20
    assert isinstance(c.make_rng(), SplitMix64)
    r = random.Random(3)
    assert RaftConfig(id="n1", voters=("n1",), rng=r).make_rng() is r


def test_config_splitmix_is_deterministic_and_spread():
    a = [SplitMix64(7).randrange(10, 20) for _ in range(1)]
    g1, g2 = SplitMix64(7), SplitMix64(7)
    s1 = [g1.randrange(10, 20) for _ in range(200)]
    assert s1 == [g2.randrange(10, 20) for _ in range(200)]
    assert a[0] == s1[0]
    assert set(s1) == set(range(10, 20)), "every timeout in range shows up"
    with pytest.raises(ValueError):
        g1.randrange(5, 5)

"""Fixtures that start real `twistd kvraft` processes on loopback."""

import shutil

import pytest

from kvraft.devcluster import LocalCluster


@pytest.fixture
def cluster(tmp_path):
    """A started 3-node cluster with mutual TLS; stopped (and logs kept on failure)."""
    c = LocalCluster(tmp_path / "cluster", size=3,
                     raft={"election_timeout_ms": 600, "heartbeat_interval_ms": 100})
    c.prepare()
    c.start_all()
    try:
        yield c
    finally:
        c.close()


@pytest.fixture(scope="session")
def redis_tools():
    """Debian's redis-tools (installed by .ci/run); tests that need them are skipped if absent."""
    missing = [t for t in ("redis-cli", "redis-benchmark") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (apt-get install redis-tools)")

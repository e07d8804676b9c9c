"""The dashboard in headless Chromium against a real 3-node cluster: it loads, shows
three members and one leader, and follows a leader change.

Needs Debian's chromium (``apt-get install -y chromium``); skipped without it.
"""

from __future__ import annotations

import pytest
from cdp import Chromium, find_chromium

from kvraft.devcluster import LocalCluster

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(find_chromium() is None,
                       reason="chromium not installed (apt-get install -y chromium)"),
]

MEMBERS = "document.querySelectorAll('#topology [data-member]').length"
LEADERS = "Array.from(document.querySelectorAll('#topology [data-role=leader]'))" \
          ".map(e => e.dataset.member)"
ROWS = "document.querySelectorAll('#member-rows tr').length"


@pytest.fixture
def cluster(tmp_path):
    c = LocalCluster(tmp_path / "cluster", size=3,
                     raft={"election_timeout_ms": 1000, "heartbeat_interval_ms": 100})
    c.prepare()
    c.start_all()
    try:
        yield c
    finally:
        c.close()


def test_dashboard_shows_the_cluster_and_follows_a_leader_change(cluster, tmp_path):
    leader = cluster.wait_for_leader()
    watched = next(n for n in cluster.nodes if n != leader)
    url = f"http://{cluster.host}:{cluster.nodes[watched].http_port}/"
    with Chromium(tmp_path / "profile") as browser:
        page = browser.new_page()
        page.navigate(url)
        page.wait_for(f"{MEMBERS} === 3 && {LEADERS}.length === 1")
        assert page.evaluate(LEADERS) == [leader]
        assert page.evaluate(ROWS) == 3
        assert page.evaluate("document.getElementById('self-id').textContent") == watched
        assert page.evaluate("document.getElementById('leader').textContent") == leader
        assert page.evaluate("document.getElementById('freshness').textContent") == "live"
        updates = page.evaluate("Number(document.body.dataset.updates)")

        cluster.stop(leader)  # SIGTERM: it hands leadership to a follower first
        new_leader = page.wait_for(
            f"(l => l.length === 1 && l[0] !== '{leader}' ? l[0] : null)({LEADERS})")
        assert new_leader != leader and new_leader in cluster.nodes
        assert page.evaluate("document.body.dataset.leader") == new_leader
        assert page.evaluate(MEMBERS) == 3  # the stopped node is still a member
        assert page.evaluate("Number(document.body.dataset.updates)") > updates
        page.wait_for("document.querySelectorAll('#events [data-kind=leader]').length >= 2")
        png = page.screenshot()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000

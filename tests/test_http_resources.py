"""The HTTP listener over a real HTTP channel (StringTransport, fake clock): /health
(etcd-style, linearizable by default, ?serializable=1 local only), /status, /metrics and
the dashboard's static files."""

from __future__ import annotations

import json

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_metrics_cluster import OpsCluster
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.web.resource import getChildForRequest
from twisted.web.test.requesthelper import DummyRequest

from kvraft import http
from kvraft.raft import ConfChange, ConfChangeSingle, ConfChangeType


class Response:
    def __init__(self, transport: StringTransport):
        self.transport = transport

    @property
    def done(self) -> bool:
        return self.transport.disconnecting

    def parse(self) -> tuple[int, dict[str, str], bytes]:
        head, _, body = self.transport.value().partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return status, headers, body


def request(site, path: str, headers: dict[str, str] | None = None) -> Response:
    """Send one HTTP/1.0 GET on a fresh channel (the server closes when it answered)."""
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    channel.makeConnection(transport)
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    channel.dataReceived(f"GET {path} HTTP/1.0\r\nHost: test\r\n{extra}\r\n".encode())
    return Response(transport)


class Sites:
    def __init__(self, ops: OpsCluster):
        self.ops = ops
        self.sites = {n: http.make_site(ops.nodes[n], ops.trackers[n], ops.registries[n],
                                        ops.transports[n], clock=ops.clock) for n in ops.ids}

    def get(self, node: str, path: str, wait_s: float = 5.0, **headers):
        response = request(self.sites[node], path, headers)
        self.ops.settle()
        if not response.done:
            self.ops.run_until(lambda: response.done, wait_s)
        return response.parse()

    def json(self, node: str, path: str, wait_s: float = 5.0):
        status, headers, body = self.get(node, path, wait_s)
        assert headers["content-type"] == "application/json"
        return status, json.loads(body)


@pytest.fixture
def ops(tmp_path):
    cluster = OpsCluster(tmp_path)
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
def web(ops):
    return Sites(ops)


# -- /health -----------------------------------------------------------------------------------


def test_health_is_unhealthy_without_a_leader(web):
    for path in ("/health", "/health?serializable=1"):
        status, body = web.json("n1", path)
        assert status == 503
        assert body["health"] == "false" and body["reason"] == "no leader"


def test_health_is_healthy_with_a_leader_on_every_node(ops, web):
    leader = ops.wait_leader()
    ops.run(0.3)
    for node in ops.ids:
        status, body = web.json(node, "/health")
        assert (status, body["health"], body["reason"]) == (200, "true", ""), body
        assert body["leader"] == leader and body["serializable"] is False
        status, body = web.json(node, "/health?serializable=true")
        assert status == 200 and body["serializable"] is True


def test_linearizable_health_fails_without_quorum_while_serializable_passes(ops, web):
    leader = ops.wait_leader()
    ops.run(0.3)
    ops.isolate(leader)
    # Within the election timeout the isolated leader still believes it leads: a local
    # check cannot tell, a linearizable read can (no quorum confirms it).
    status, body = web.json(leader, "/health?serializable=1", wait_s=0.1)
    assert status == 200 and body["health"] == "true"
    status, body = web.json(leader, "/health", wait_s=http.health_timeout_s + 1)
    assert status == 503
    assert "linearizable read" in body["reason"]


def test_health_reports_a_stalled_apply(ops, web):
    leader = ops.wait_leader()
    ops.run(0.3)
    tracker = ops.trackers[leader]
    machine = ops.nodes[leader].machine
    # The state machine stops applying (a wedged apply loop): commit moves on, applied
    # does not.
    machine.set_last_applied = lambda index: None
    original_apply, original_batch = machine.apply, machine.apply_batch
    machine.apply = lambda index, command: None
    machine.apply_batch = lambda index, commands: [None] * len(commands)
    ops.write(leader, b"SET", b"k", b"v")
    ops.run(http.apply_stall_s_max + 1)
    assert tracker.apply_stalled_s() > http.apply_stall_s_max
    status, body = web.json(leader, "/health?serializable=1")
    assert status == 503 and body["reason"].startswith("apply stalled"), body
    machine.apply, machine.apply_batch = original_apply, original_batch


# -- /status -----------------------------------------------------------------------------------


def test_status_of_the_leader_shows_every_members_progress(ops, web):
    leader = ops.wait_leader()
    for i in range(3):
        ops.write(leader, b"SET", f"k{i}".encode(), b"v")
    ops.run(2.0)
    status, doc = web.json(leader, "/status")
    assert status == 200
    node = doc["node"]
    assert node["id"] == leader and node["role"] == "leader" and node["leader"] == leader
    assert node["commit_index"] == node["applied_index"] == node["last_index"] >= 2
    assert node["keys"] == 3 and node["apply_lag"] == 0 and node["cluster"] == "test"
    members = {m["id"]: m for m in doc["members"]}
    assert set(members) == set(ops.ids)
    assert members[leader]["role"] == "leader" and members[leader]["self"]
    for peer in ops.ids:
        m = members[peer]
        assert m["voter"] and m["match"] == node["last_index"] and m["lag"] == 0
        assert m["next"] == node["last_index"] + 1 and m["term"] == node["term"]
        if peer != leader:
            assert m["role"] == "follower" and m["state"] == "replicate"
            assert m["connected_to"] and m["connected_from"]
            assert m["last_contact_s"] is not None and m["last_contact_s"] <= 0.5
            assert m["frames_sent"] > 0 and m["address"].startswith("127.0.0.1:")
    assert doc["rates"]["commit_per_s"] > 0
    assert [e["kind"] for e in doc["events"]].count("leader") == 1
    assert doc["history"] and len(doc["history"][0]) == 3


def test_status_of_a_follower_does_not_guess_what_only_the_leader_knows(ops, web):
    leader = ops.wait_leader()
    ops.run(0.5)
    follower = next(n for n in ops.ids if n != leader)
    _, doc = web.json(follower, "/status")
    members = {m["id"]: m for m in doc["members"]}
    assert doc["node"]["role"] == "follower" and doc["node"]["leader"] == leader
    assert members[leader]["role"] == "leader" and members[leader]["term"] == doc["node"]["term"]
    other = next(n for n in ops.ids if n not in (leader, follower))
    assert members[other]["role"] == "follower"
    assert members[other]["match"] is None and members[other]["lag"] is None
    assert members[other]["term"] is None
    assert members[follower]["match"] == doc["node"]["last_index"]


def test_status_records_leader_changes_and_membership_changes(ops, web):
    leader = ops.wait_leader()
    ops.run(0.3)
    ops.nodes[leader].core.propose_conf_change(ConfChange(changes=(
        ConfChangeSingle(ConfChangeType.AddLearner, "n4"),)))
    ops.run(1.0)
    _, doc = web.json(leader, "/status")
    membership = [e for e in doc["events"] if e["kind"] == "membership"]
    assert membership and membership[-1]["learners"] == ["n4"], doc["events"]
    assert any(m["id"] == "n4" and m["role"] == "learner" and not m["voter"]
               for m in doc["members"])
    follower = next(n for n in ops.ids if n != leader)
    ops.isolate(leader)
    ops.run_until(lambda: (ops.nodes[follower].core.status()["leader_id"] or leader) != leader)
    ops.run(0.5)
    _, doc = web.json(follower, "/status")
    kinds = [e["kind"] for e in doc["events"]]
    assert kinds.count("leader") == 2 and "leader-lost" in kinds, doc["events"]
    assert doc["events"][-1]["term"] == doc["node"]["term"]


def test_status_pretty_is_indented(ops, web):
    _, _, body = web.get("n1", "/status?pretty=1")
    assert body.startswith(b"{\n")
    _, _, body = web.get("n1", "/status")
    assert b"\n" not in body.strip()


# -- /metrics ----------------------------------------------------------------------------------


def test_metrics_endpoint_serves_prometheus_text_and_openmetrics(ops, web):
    ops.wait_leader()
    status, headers, body = web.get("n1", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    names = {f.name for f in text_string_to_metric_families(body.decode())}
    assert {"kvraft_term", "kvraft_commit_index", "kvraft_fsync_seconds"} <= names
    status, headers, body = web.get(
        "n1", "/metrics", Accept="application/openmetrics-text; version=1.0.0")
    assert headers["content-type"].startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")


# -- the dashboard's files -----------------------------------------------------------------


def static_get(site, name: bytes):
    """A static file through the site's resource tree. (Files stream from a pull
    producer that the real channel pumps with the global reactor's cooperator;
    DummyRequest pumps it in place.)"""
    request = DummyRequest([name])
    child = getChildForRequest(site.resource, request)
    result = child.render(request)
    if isinstance(result, bytes):
        request.write(result)
    headers = {k.decode().lower(): v[-1].decode()
               for k, v in request.responseHeaders.getAllRawHeaders()}
    return request.responseCode or 200, headers, b"".join(request.written)


def test_dashboard_is_served_with_a_strict_content_security_policy(web):
    site = web.sites["n1"]
    status, headers, body = static_get(site, b"index.html")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b'<script src="dashboard.js">' in body
    csp = headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    assert headers["x-content-type-options"] == "nosniff"
    for name, kind in ((b"dashboard.js", "javascript"), (b"dashboard.css", "text/css")):
        status, headers, body = static_get(site, name)
        assert status == 200 and kind in headers["content-type"] and body
    assert static_get(site, b"nothing-here")[0] == 404
    status, headers, body = static_get(site, b"")  # "/" is the index
    assert status == 200 and b'<script src="dashboard.js">' in body
    assert "content-security-policy" in headers


def test_dashboard_files_use_no_external_resources():
    for path in http.STATIC_DIR.iterdir():
        text = path.read_text()
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "")
        assert "https://" not in text and "//cdn" not in text

"""The HTTP listener (``http.listen``): health, status, Prometheus metrics, the dashboard.

* ``GET /health`` — etcd-style: ``{"health": "true"|"false", "reason": ...}``, 200 or
  503. Healthy when this node sees a leader, applies what is committed (apply has not
  been stalled for ``apply_stall_s_max``) and, by default, a linearizable read through
  the leader (ReadIndex: a quorum confirms the leader) answers within
  ``health_timeout_s``. ``?serializable=1`` skips the read: a local-only check that
  stays cheap when probed often and does not depend on the other members.
* ``GET /status`` — JSON (``kvraft.web.status``): this node and its view of every
  member; ``?pretty=1`` indents it.
* ``GET /metrics`` — Prometheus text format (``kvraft.web.collector``), or OpenMetrics
  when the scraper asks for it. Rendered on the reactor thread: no extra thread.
* ``GET /`` — the live dashboard: static files from ``kvraft/static/`` (no build step,
  no CDN) that poll ``/status``.

The listener has no authentication: bind it to an address only operators and
Prometheus reach (it shows topology and counters, never keys or values).
"""

from __future__ import annotations

import json
from pathlib import Path

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import pages, resource, server, static

log = Logger(namespace="kvraft.http")

health_timeout_s = 2.0
"""How long the default (linearizable) health check waits for its read."""
apply_stall_s_max = 10.0
"""A node whose apply has not moved for this long while entries wait is unhealthy."""
STATIC_DIR = Path(__file__).parent / "static"

_CSP = (b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")


def _flag(request, name: bytes) -> bool:
    values = request.args.get(name) or []
    return bool(values) and values[-1].lower() not in (b"0", b"false", b"no", b"")


def _json(request, status: int, body: dict, pretty: bool = False) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(body, indent=1 if pretty else None).encode() + b"\n"


class HealthResource(resource.Resource):
    """``GET /health[?serializable=1]``: see the module docstring."""

    isLeaf = True

    def __init__(self, node, tracker=None, clock=None, timeout_s: float = health_timeout_s):
        super().__init__()
        if clock is None:
            from twisted.internet import reactor as clock
        self.node = node
        self.tracker = tracker
        self.clock = clock
        self.timeout_s = timeout_s

    def _local(self) -> tuple[dict, str | None]:
        info = self.node.info()
        body = {
            "health": "false",
            "reason": "",
            "node": info.get("raft_node_id"),
            "role": info.get("raft_role"),
            "term": info.get("raft_term"),
            "leader": info.get("raft_leader_id") or None,
            "commit_index": info.get("raft_commit_index"),
            "applied_index": info.get("raft_applied_index"),
        }
        if not body["leader"]:
            return body, "no leader"
        if self.tracker is not None and self.tracker.running:
            stalled = self.tracker.apply_stalled_s()
            if stalled > apply_stall_s_max:
                return body, (f"apply stalled for {stalled:.0f} s at index "
                              f"{body['applied_index']} (commit {body['commit_index']})")
        return body, None

    def render_GET(self, request):
        body, problem = self._local()
        serializable = _flag(request, b"serializable")
        body["serializable"] = serializable
        if problem is not None or serializable:
            return self._answer(request, body, problem)
        read = self.node.read([b"DBSIZE"], True)
        timer = self.clock.callLater(self.timeout_s, read.cancel)
        finished = request.notifyFinish()
        gone = []
        finished.addErrback(lambda _: gone.append(True))

        def done(result):
            if timer.active():
                timer.cancel()
            problem = None
            if isinstance(result, Failure):
                if result.check(defer.CancelledError):
                    problem = (f"a linearizable read did not complete within "
                               f"{self.timeout_s:g} s (no quorum?)")
                else:
                    problem = f"a linearizable read failed: {result.getErrorMessage()}"
            if not gone:
                request.write(self._answer(request, body, problem))
                request.finish()

        read.addBoth(done)
        return server.NOT_DONE_YET

    @staticmethod
    def _answer(request, body: dict, problem: str | None) -> bytes:
        body["health"] = "false" if problem else "true"
        body["reason"] = problem or ""
        return _json(request, 503 if problem else 200, body)


class StatusResource(resource.Resource):
    """``GET /status``: ``kvraft.web.status.build_status`` as JSON."""

    isLeaf = True

    def __init__(self, node, tracker=None, transport=None):
        super().__init__()
        self.node = node
        self.tracker = tracker
        self.transport = transport

    def render_GET(self, request):
        from kvraft.web.status import build_status
        body = build_status(self.node, self.tracker, self.transport)
        return _json(request, 200, body, pretty=_flag(request, b"pretty"))


class MetricsResource(resource.Resource):
    """``GET /metrics``: the node's ``CollectorRegistry`` in the format the scraper
    accepts (Prometheus text, or OpenMetrics)."""

    isLeaf = True

    def __init__(self, registry):
        super().__init__()
        self.registry = registry

    def render_GET(self, request):
        from prometheus_client.exposition import choose_encoder
        accept = (request.getHeader(b"accept") or b"").decode("latin-1")
        encoder, content_type = choose_encoder(accept)
        request.setHeader(b"content-type", content_type.encode())
        request.setHeader(b"cache-control", b"no-store")
        return encoder(self.registry)


class _Static(static.File):
    """The dashboard's files: no directory listings, strict CSP, revalidated each load
    (so an upgraded node serves its new dashboard at once)."""

    def directoryListing(self):
        return pages.forbidden("No directory listings here.")

    def render(self, request):
        request.setHeader(b"content-security-policy", _CSP)
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"referrer-policy", b"no-referrer")
        request.setHeader(b"cache-control", b"no-cache")
        return super().render(request)


class _QuietSite(server.Site):
    """A Site without access log lines: the dashboard polls every second and Prometheus
    every few, which would bury the node's own log."""

    noisy = False

    def log(self, request) -> None:
        """No access log (see the class docstring)."""


def make_site(node, tracker=None, registry=None, transport=None, clock=None) -> server.Site:
    """The twisted.web site served on ``http.listen``; ``registry`` (a prometheus
    ``CollectorRegistry``) enables ``/metrics``, ``tracker`` (a
    ``kvraft.web.tracker.ClusterTracker``) the history, rates and apply-stall parts."""
    root = _Static(str(STATIC_DIR))
    root.putChild(b"health", HealthResource(node, tracker, clock))
    root.putChild(b"status", StatusResource(node, tracker, transport))
    if registry is not None:
        root.putChild(b"metrics", MetricsResource(registry))
    site = _QuietSite(root) if clock is None else _QuietSite(root, reactor=clock)
    site.displayTracebacks = False
    return site

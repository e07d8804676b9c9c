"""The HTTP listener: ``/health`` now; metrics, status and the dashboard hang off it later."""

from __future__ import annotations

import json

from twisted.web import resource, server


class HealthResource(resource.Resource):
    """``GET /health``: 200 with a small JSON body when the node sees a leader, else 503."""

    isLeaf = True

    def __init__(self, node):
        super().__init__()
        self.node = node

    def render_GET(self, request):
        info = self.node.info()
        healthy = bool(info.get("raft_leader_id"))
        body = {
            "health": "true" if healthy else "false",
            "node": info.get("raft_node_id"),
            "role": info.get("raft_role"),
            "term": info.get("raft_term"),
            "leader": info.get("raft_leader_id") or None,
        }
        if not healthy:
            body["reason"] = "no leader"
        request.setResponseCode(200 if healthy else 503)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(body).encode() + b"\n"


def make_site(node) -> server.Site:
    """The twisted.web site served on ``http.listen``."""
    root = resource.Resource()
    root.putChild(b"health", HealthResource(node))
    site = server.Site(root)
    site.displayTracebacks = False
    return site

"""The ``/status`` document: this node, and its view of every member.

A leader knows every follower's replication progress (match and next index, lag,
replication state); a follower knows the leader and its own indices, and for the other
members only whether their links are up and when they last sent something. Unknown
fields are ``null``, never guessed. The dashboard draws this document.
"""

from __future__ import annotations

from typing import Any

import kvraft

STATUS_VERSION = 1
"""Bumped when a field changes meaning; fields are only ever added otherwise."""


def _role_name(role: Any) -> str:
    return getattr(role, "value", None) or str(role or "follower")


def build_status(node, tracker=None, transport=None) -> dict[str, Any]:
    """The JSON-ready status of ``node`` (a ``RaftNodeService``)."""
    core = getattr(node, "core", None)
    status = core.status() if core is not None else {}
    info = node.info()
    role = _role_name(status.get("role"))
    leader = status.get("leader_id") or ""
    term = status.get("term", 0)
    now = tracker.clock.seconds() if tracker is not None else None
    self_doc = {
        "id": node.node_id,
        "cluster": getattr(getattr(node, "config", None), "cluster_name", None),
        "version": kvraft.__version__,
        "role": role,
        "term": term,
        "vote": status.get("vote") or None,
        "leader": leader or None,
        "commit_index": status.get("commit_index", 0),
        "applied_index": info.get("raft_applied_index", 0),
        "last_index": status.get("last_index", 0),
        "first_index": status.get("first_index", 0),
        "apply_lag": max(0, status.get("commit_index", 0) - info.get("raft_applied_index", 0)),
        "lead_transferee": status.get("lead_transferee") or None,
        "keys": info.get("keys"),
        "uptime_s": round(now - tracker.started_s, 3) if tracker is not None else None,
    }
    doc: dict[str, Any] = {
        "version": STATUS_VERSION,
        "time": now,
        "node": self_doc,
        "members": _members(node, status, tracker, transport),
    }
    if tracker is not None:
        doc["rates"] = tracker.rates()
        doc["history"] = [list(point) for point in tracker.history]
        doc["events"] = list(tracker.events)
        doc["apply_stalled_s"] = round(tracker.apply_stalled_s(), 3)
    if transport is not None:
        doc["transport"] = transport.counters.snapshot()
    return doc


def _address_text(address) -> str:
    if isinstance(address, tuple | list) and len(address) == 2:
        host, port = address
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address)


def _addresses(node, transport) -> dict[str, str]:
    """Member id -> peer address: the configuration, then what membership changes
    recorded, then whom the transport dials (the most recent knowledge wins)."""
    out = {}
    config = getattr(node, "config", None)
    for member, address in (getattr(config, "members", None) or {}).items():
        out[member] = _address_text(address)
    storage = getattr(node, "storage", None)
    stable = getattr(storage, "stable", None)
    if stable is not None:
        recorded = stable.metadata().get("addresses") or {}
        out.update({k: _address_text(v) for k, v in recorded.items()})
    if transport is not None:
        out.update({k: _address_text(v) for k, v in transport.peers.items()})
    return out


def _members(node, status: dict, tracker, transport) -> list[dict[str, Any]]:
    conf = status.get("conf_state")
    voters = set(getattr(conf, "voters", ()) or ()) | set(getattr(conf, "voters_outgoing", ())
                                                          or ())
    learners = set(getattr(conf, "learners", ()) or ()) | set(
        getattr(conf, "learners_next", ()) or ())
    names = list(conf.members()) if conf is not None else [node.node_id]
    leader = status.get("leader_id") or ""
    term = status.get("term", 0)
    last_index = status.get("last_index", 0)
    progress = status.get("progress") or {}
    addresses = _addresses(node, transport)
    connected_from = transport.connected_from() if transport is not None else set()
    counters = transport.counters.peers if transport is not None else {}
    members = []
    for member in sorted(names):
        is_self = member == node.node_id
        if member == leader:
            role = "leader"
        elif is_self:
            role = _role_name(status.get("role"))
        elif member in learners and member not in voters:
            role = "learner"
        else:
            role = "follower"
        doc: dict[str, Any] = {
            "id": member,
            "self": is_self,
            "voter": member in voters,
            "role": role,
            # Our term is the leader's when we follow it; others' terms we do not know.
            "term": term if is_self or (member == leader and leader) else None,
            "address": addresses.get(member),
            "match": None, "next": None, "lag": None, "state": None, "inflight": None,
            "recent_active": None,
        }
        pr = progress.get(member)
        if pr is not None:
            doc.update(match=pr["match"], next=pr["next"], lag=max(0, last_index - pr["match"]),
                       state=pr["state"], inflight=pr["inflight"],
                       recent_active=pr["recent_active"] or is_self)
            if pr["recent_active"]:
                # It answered us this term: a higher term would have deposed us, a lower
                # one is not counted as activity.
                doc["term"] = term
        elif is_self:
            doc["match"] = last_index  # what this node holds; its lag only the leader knows
        if not is_self:
            link = counters.get(member)
            doc["connected_to"] = transport.is_connected(member) if transport else None
            doc["connected_from"] = member in connected_from if transport else None
            doc["last_contact_s"] = (round(tracker.last_contact_s(member), 3)
                                     if tracker is not None
                                     and tracker.last_contact_s(member) is not None else None)
            doc["frames_sent"] = link.frames_sent if link else 0
            doc["frames_received"] = link.frames_received if link else 0
            doc["frames_dropped"] = link.frames_dropped if link else 0
        members.append(doc)
    return members

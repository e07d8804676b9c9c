"""The root of a node's service tree: how the process starts logging and how it stops.

Stopping (SIGTERM from systemd, Ctrl-C, ``reactor.stop()``): twistd stops the
application's services. A MultiService stops all its children at once, so a leader
would otherwise stop ticking mid-term and the cluster would wait a full election
timeout for a new leader. ``NodeRoot.stopService`` first hands leadership to the most
up-to-date active voter (Raft thesis 3.10, ``MsgTransferLeader``) and waits until a new
leader is seen or ``handoff_timeout_s`` passes; then every child stops: the node fails
what waits, lets its in-flight write finish, syncs and closes the log.
"""

from __future__ import annotations

from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.logger import Logger

log = Logger(namespace="kvraft.lifecycle")


def transfer_target(status: dict, self_id: str) -> str | None:
    """The voter a leader should hand over to: recently active, the highest match index
    (the least to catch up), ties broken by id. None when nobody qualifies."""
    candidates = [(pr["match"], peer) for peer, pr in (status.get("progress") or {}).items()
                  if peer != self_id and not pr.get("is_learner") and pr.get("recent_active")]
    if not candidates:
        return None
    best = max(match for match, _ in candidates)
    return min(peer for match, peer in candidates if match == best)


def hand_off_leadership(node, clock, timeout_s: float) -> defer.Deferred:
    """If ``node`` (a running ``RaftNodeService``) leads, ask it to transfer leadership;
    the Deferred fires (with the new leader's id, or None) once another leader is seen,
    or after ``timeout_s``. Never fails."""
    from kvraft.raft import Message, MsgType, Role
    core = getattr(node, "core", None)
    if core is None or not node.running:
        return defer.succeed(None)
    status = core.status()
    if status.get("role") != Role.Leader:
        return defer.succeed(None)
    target = transfer_target(status, node.node_id)
    if target is None:
        log.info("stopping as leader of term {term}: no active voter to hand over to",
                 term=status.get("term"))
        return defer.succeed(None)
    done = defer.Deferred()
    seen: list[str] = []

    def finish(result):
        if timer.active():
            timer.cancel()
        if watch in node.listeners:
            node.listeners.remove(watch)
        if not done.called:
            done.callback(result)

    def watch(kind: str, details: dict) -> None:
        leader = details.get("leader_id") or ""
        if kind == "soft_state" and leader and leader != node.node_id and not seen:
            seen.append(leader)
            log.info("stopping: {leader} leads now", leader=leader)
            # Not now: the node calls us in the middle of handling a Ready, and stopping
            # it there would close its log under its feet.
            clock.callLater(0, finish, leader)

    def give_up():
        log.warn("stopping: {target} did not take over within {timeout} s; stopping anyway "
                 "(the others elect a leader after their election timeout)", target=target,
                 timeout=timeout_s)
        finish(None)

    timer = clock.callLater(timeout_s, give_up)
    node.listeners.append(watch)
    log.info("stopping as leader of term {term}: handing leadership to {target}",
             term=status.get("term"), target=target)
    node.receive(Message(type=MsgType.MsgTransferLeader, frm=target))
    return done


class NodeRoot(MultiService):
    """The ``kvraft`` MultiService of ``twistd kvraft``.

    ``node``, ``clock`` and ``handoff_timeout_s`` drive the stop described in the module
    docstring. When twistd adopts it (``setServiceParent(application)``) and
    ``twistd_options`` are known, it installs the node's log observer
    (``kvraft.logs.install``) with ``log_format``, and once its children have started (the
    node's state is loaded) it tunes the garbage collector (``kvraft.runtime.tune_gc``)."""

    def __init__(self, clock=None, handoff_timeout_s: float = 2.0, log_format: str = "text",
                 twistd_options: dict | None = None):
        super().__init__()
        self.setName("kvraft")
        self.node = None
        self.clock = clock
        self.handoff_timeout_s = handoff_timeout_s
        self.log_format = log_format
        self.twistd_options = twistd_options

    def setServiceParent(self, parent):
        if self.twistd_options is not None:
            from kvraft import logs
            logs.install(parent, self.twistd_options, self.log_format)
        return super().setServiceParent(parent)

    def startService(self):
        super().startService()
        if self.twistd_options is not None:  # a node process, not a test's reactor
            from kvraft import runtime
            runtime.tune_gc()
            log.info("garbage collector: startup state frozen, thresholds {thresholds}",
                     thresholds=runtime.GC_THRESHOLDS)

    def stopService(self):
        if self.node is None or self.clock is None:
            return super().stopService()
        d = hand_off_leadership(self.node, self.clock, self.handoff_timeout_s)
        d.addErrback(lambda f: log.failure("leadership handoff failed", f))
        d.addBoth(lambda _: MultiService.stopService(self))
        return d

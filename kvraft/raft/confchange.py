"""Membership changes: simple changes and joint consensus (Raft thesis 4.3).

Pure set math over ``ConfState`` (etcd confchange/confchange.go, written for ConfState):

* one change and ``joint=False``: a *simple* change; at most one voter may differ;
* several changes, or ``joint=True``: *enter* a joint configuration: the old voters
  become ``voters_outgoing`` and decisions need a majority of both halves until the
  joint state is *left*; ``auto_leave`` (set unless ``joint=True`` asked for explicit
  control) makes the leader propose the leave itself once the entry is applied;
* no changes: *leave* the joint configuration.

A voter that is made a learner during a joint change keeps voting in the outgoing half
and becomes a learner on leaving (``learners_next``).

Conf change entries carry ``encode_conf_change(cc)`` (msgpack) as ``Entry.data`` with
``EntryType.ConfChange``; the driver decodes committed ones and calls
``RaftCore.apply_conf_change``.
"""

from __future__ import annotations

import msgpack

from kvraft.raft.errors import ConfChangeError
from kvraft.raft.types import ConfChange, ConfChangeSingle, ConfChangeType, ConfState

KIND_SIMPLE = "simple"
KIND_ENTER_JOINT = "enter-joint"
KIND_LEAVE_JOINT = "leave-joint"


def encode_conf_change(cc: ConfChange) -> bytes:
    """The entry payload of a ConfChange (msgpack, stable field names)."""
    return msgpack.packb({
        "changes": [[int(c.type), c.node_id, c.context] for c in cc.changes],
        "joint": cc.joint,
        "context": cc.context,
    }, use_bin_type=True)


def decode_conf_change(data: bytes) -> ConfChange:
    """Inverse of ``encode_conf_change``; ConfChangeError on a malformed payload."""
    try:
        raw = msgpack.unpackb(data, raw=False)
        changes = tuple(
            ConfChangeSingle(type=ConfChangeType(t), node_id=str(node), context=bytes(ctx))
            for t, node, ctx in raw["changes"])
        return ConfChange(changes=changes, joint=bool(raw["joint"]),
                          context=bytes(raw["context"]))
    except (ValueError, TypeError, KeyError, msgpack.UnpackException) as e:
        raise ConfChangeError(f"malformed conf change entry ({e}); was it written by "
                              "encode_conf_change?") from e


def conf_change_kind(cc: ConfChange) -> str:
    """``KIND_SIMPLE``, ``KIND_ENTER_JOINT`` or ``KIND_LEAVE_JOINT``."""
    if not cc.changes:
        return KIND_LEAVE_JOINT
    if cc.joint or len(cc.changes) > 1:
        return KIND_ENTER_JOINT
    return KIND_SIMPLE


class _Config:
    """Mutable sets for computing a new configuration."""

    def __init__(self, cs: ConfState):
        self.incoming = set(cs.voters)
        self.outgoing = set(cs.voters_outgoing)
        self.learners = set(cs.learners)
        self.learners_next = set(cs.learners_next)
        self.auto_leave = cs.auto_leave

    def to_conf_state(self) -> ConfState:
        """The sets as a ConfState with sorted tuples."""
        return ConfState(voters=tuple(sorted(self.incoming)),
                         learners=tuple(sorted(self.learners)),
                         voters_outgoing=tuple(sorted(self.outgoing)),
                         learners_next=tuple(sorted(self.learners_next)),
                         auto_leave=self.auto_leave)

    def apply(self, changes: tuple[ConfChangeSingle, ...]) -> None:
        """Apply single changes to the incoming half (and learners)."""
        for c in changes:
            if not c.node_id:
                raise ConfChangeError("a conf change names an empty node id")
            if c.type == ConfChangeType.AddVoter:
                self._make_voter(c.node_id)
            elif c.type == ConfChangeType.AddLearner:
                self._make_learner(c.node_id)
            elif c.type == ConfChangeType.RemoveNode:
                self._remove(c.node_id)
            else:
                raise ConfChangeError(f"unknown conf change type {c.type!r}")
        if not self.incoming:
            raise ConfChangeError("the change removes every voter; keep at least one")

    def _make_voter(self, node: str) -> None:
        self.learners.discard(node)
        self.learners_next.discard(node)
        self.incoming.add(node)

    def _make_learner(self, node: str) -> None:
        if node in self.learners:
            return
        self.incoming.discard(node)
        self.learners_next.discard(node)
        if node in self.outgoing:
            # Still a voter of the outgoing half: it becomes a learner on leaving.
            self.learners_next.add(node)
        else:
            self.learners.add(node)

    def _remove(self, node: str) -> None:
        self.incoming.discard(node)
        self.learners.discard(node)
        self.learners_next.discard(node)

    def check(self) -> None:
        """ConfChangeError unless the configuration is well formed."""
        voters = self.incoming | self.outgoing
        if self.learners & voters:
            raise ConfChangeError(f"nodes {sorted(self.learners & voters)} would be both "
                                  "voter and learner")
        if not self.learners_next <= self.outgoing:
            raise ConfChangeError("learners_next must be outgoing voters")
        if not self.outgoing and (self.learners_next or self.auto_leave):
            raise ConfChangeError("learners_next/auto_leave set outside a joint config")


def apply_conf_change(cs: ConfState, cc: ConfChange) -> ConfState:
    """The configuration after ``cc``; ConfChangeError if ``cc`` does not apply to ``cs``."""
    cfg = _Config(cs)
    kind = conf_change_kind(cc)
    if kind == KIND_LEAVE_JOINT:
        if not cfg.outgoing:
            raise ConfChangeError("cannot leave a joint configuration: not in one")
        cfg.learners |= cfg.learners_next
        cfg.learners_next = set()
        cfg.outgoing = set()
        cfg.auto_leave = False
    elif kind == KIND_ENTER_JOINT:
        if cfg.outgoing:
            raise ConfChangeError("already in a joint configuration: leave it first")
        if not cfg.incoming:
            raise ConfChangeError("cannot make a zero-voter configuration joint")
        cfg.outgoing = set(cfg.incoming)
        cfg.apply(cc.changes)
        cfg.auto_leave = not cc.joint
    else:
        if cfg.outgoing:
            raise ConfChangeError("a simple change cannot apply in a joint configuration; "
                                  "leave the joint configuration first")
        before = set(cfg.incoming)
        cfg.apply(cc.changes)
        if len(before ^ cfg.incoming) > 1:
            raise ConfChangeError("more than one voter changed without a joint change")
    cfg.check()
    return cfg.to_conf_state()

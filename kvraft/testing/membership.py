"""Membership changes in the simulator: new nodes join as learners, learners are promoted,
voters (the leader included) are removed; mixed into SimCluster.

How it is driven, as the real node does it (kvraft.membership, kvraft.bootstrap):

* A joining node starts with an empty disk and a placeholder configuration, the
  cluster's current voters without itself (``RaftConfig.voters``), so it never
  campaigns; the leader's snapshot brings it the real configuration.
* Every node that applies a change adding a member compacts its log at once (the real
  node forces a snapshot then), so the new member always starts from a snapshot that
  includes it and never replays configuration changes onto its placeholder.
* Committed ``EntryType.ConfChange`` entries are decoded and handed to
  ``core.apply_conf_change``; a change the core refuses (ConfChangeError) is refused
  alike everywhere and skipped.
* A joint configuration entered with ``joint=True`` is left by the leader's driver
  (proposing the empty ConfChange, as ``Membership.maybe_leave_joint``); one entered by
  several changes at once is left by the core itself (auto-leave).
* A node removed from the configuration is stopped for good ("retired") a little while
  after the change that removed it is applied somewhere (so it is committed).

The cluster-wide configuration ``conf`` is the newest one applied by any node (applied
means committed, so all nodes go through the same sequence); clients talk to its
members. The safety monitor gets, with each new commit index, the configuration of the
leader that committed it, so "committed entries are durable on a quorum" counts the
right voters (both halves of a joint configuration).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvraft.raft import (
    ConfChange,
    ConfChangeError,
    ConfState,
    Entry,
    ProposalDropped,
    Role,
    decode_conf_change,
)

if TYPE_CHECKING:
    from kvraft.testing.cluster import SimNode

__all__ = ["ClusterMembership"]

RETIRE_STEPS_MAX = 300
"""A removed node keeps running up to this many steps before it is stopped for good (so
a removed node that has not heard of its removal still gets to disturb the others)."""


class ClusterMembership:
    """Mixed into SimCluster; uses its ``nodes``, ``names``, ``rng``, ``monitor``,
    ``network``, ``clients``, ``schedule``, ``note``, ``stats``, ``restart``, ``_stop``
    and ``_after_input``."""

    # -- observation ---------------------------------------------------------------------

    def members(self) -> list[str]:
        """The members (voters of either half, learners) of the newest configuration
        applied anywhere, that are not retired: where clients go."""
        return [n for n in self.conf.members() if not self.nodes[n].retired]

    def active(self) -> list[str]:
        """Every node not retired (members, and joiners not yet added)."""
        return [n for n in self.names if not self.nodes[n].retired]

    # -- operations ----------------------------------------------------------------------

    def add_node(self) -> str:
        """Start a new, empty node that may then be added as a learner; returns its name.
        Its placeholder configuration is the current voters (without itself)."""
        number = len(self.names) + 1
        while f"n{number}" in self.nodes:
            number += 1
        name = f"n{number}"
        self._create_node(name, ConfState(), join_voters=tuple(self.conf.voters))
        self.names = self.names + (name,)
        self.network.add_node(name)
        self.joiners.append(name)
        self.note("join", f"{name} placeholder voters {self.conf.voters}")
        self.restart(name)
        return name

    def propose_conf_change(self, name: str, cc: ConfChange) -> bool:
        """Propose ``cc`` at ``name``; False if the core dropped it (no leader, a change
        pending, ...)."""
        node = self.nodes[name]
        if not node.alive:
            return False
        try:
            node.core.propose_conf_change(cc)
        except ProposalDropped as dropped:
            self.note("conf-drop", f"{name}: {dropped.reason}")
            return False
        finally:
            self._after_input(node)
        self.note("conf-prop", f"{name}: {_describe_change(cc)}")
        return True

    def retire(self, name: str) -> None:
        """Stop ``name`` for good (it was removed from the cluster)."""
        node = self.nodes[name]
        if node.retired:
            return
        self._stop(node)
        node.retired = True
        if name in self.joiners:
            self.joiners.remove(name)
        self.stats["retired"] += 1
        self.note("retire", name)

    # -- the driver's side ---------------------------------------------------------------

    def _note_leader_commit(self, node: SimNode) -> None:
        """A leader's commit index moved past every commit seen: record it with the
        configuration its quorum was counted in, and check it is durable there."""
        core = node.core
        if core.role != Role.Leader:
            return
        commit = core.log.committed
        if commit > self.monitor.commit_index:
            self.monitor.note_commit(node.id, commit, node.storage.live.term(commit),
                                     core.tracker.conf_state())
            self._check_durable(None)

    def _apply_conf_entry(self, node: SimNode, entry: Entry) -> None:
        """Apply a committed configuration change at ``node``."""
        node.kv.last_applied = entry.index
        try:
            cc = decode_conf_change(entry.data)
        except ConfChangeError as e:
            self.note("conf-bad", f"{node.id} at {entry.index}: {e}")
            return
        before = node.conf
        self._note_leader_commit(node)
        try:
            cs = node.core.apply_conf_change(cc)
        except ConfChangeError as e:
            # Every node refuses the same change alike: skip it.
            self.note("conf-refused", f"{node.id} at {entry.index}: {e}")
            return
        self._note_leader_commit(node)
        node.conf = cs
        if set(cs.members()) - set(before.members()):
            node.compact_due = True  # a new member must start from a snapshot
        if entry.index > self.conf_index:
            self._new_cluster_conf(entry.index, cs)

    def _new_cluster_conf(self, index: int, cs: ConfState) -> None:
        old = self.conf
        self.conf, self.conf_index = cs, index
        self.stats["conf_changes"] += 1
        self.note("conf", f"at {index}: voters {cs.voters} outgoing {cs.voters_outgoing} "
                  f"learners {cs.learners} next {cs.learners_next}")
        members = set(cs.members())
        for name in members:
            if name in self.joiners:
                self.joiners.remove(name)
        for name in sorted(set(old.members()) - members):
            self.schedule(self.rng.randint(0, RETIRE_STEPS_MAX), "call",
                          lambda name=name: self.retire(name))
        targets = tuple(self.members()) or tuple(self.active())
        for client in self.clients.values():
            client.nodes = targets

    def _maybe_leave_joint(self, node: SimNode) -> None:
        """Leader: leave a joint configuration entered with ``joint=True`` once it is in
        effect (the core leaves an auto-leave one itself)."""
        core = node.core
        tracker = core.tracker
        if (core.role != Role.Leader or not tracker.is_joint() or tracker.auto_leave
                or core.log.applied < core.pending_conf_index):
            return
        self.propose_conf_change(node.id, ConfChange(changes=()))


def _describe_change(cc: ConfChange) -> str:
    if not cc.changes:
        return "leave joint"
    parts = [f"{c.type.name} {c.node_id}" for c in cc.changes]
    return ", ".join(parts) + (" (joint)" if cc.joint else "")

"""What a node starts from: bootstrap a new node, restore the newest snapshot, and the
configuration its core starts with (kvraft.node calls ``load_state`` once, at start).

* A node without state that bootstraps a cluster (``cluster.join = false``) writes the
  empty bootstrap snapshot holding ``cluster.members`` as voters (kvraft.snapshotter)
  and saves its metadata (cluster name, addresses); from then on it ignores
  ``cluster.members`` except as dial addresses it already knows.
* A node without state that joins starts with a placeholder configuration without
  itself (the cluster's members as listed in its config), so it never campaigns; the
  leader's snapshot, sent once an operator added it, brings the real configuration.
* A node with state restores its newest usable snapshot: the core starts from that
  snapshot's configuration and replays the configuration changes of the log after it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvraft.raft import ConfState

if TYPE_CHECKING:
    from kvraft.node import RaftNodeService


def load_state(node: RaftNodeService) -> ConfState:
    """Prepare ``node``'s storage, machine and membership; the core's configuration."""
    stable, config = node.storage.stable, node.config
    meta = stable.metadata()
    if not meta:
        addresses = {k: str(v) for k, v in config.members.items()}
        meta = {"cluster": config.cluster_name, "addresses": addresses}
        if config.join:
            meta["join"] = True
        else:
            voters = tuple(sorted(config.members))
            node.snapshotter.bootstrap(ConfState(voters=voters), addresses)
            meta["voters"] = list(voters)
        stable.save_metadata(meta)  # last: its presence means "bootstrapped"
    snapshot, header = node.snapshotter.load()
    node.membership.load(meta, header.get("addresses", {}))
    if snapshot is not None:
        return snapshot.conf_state
    if meta.get("voters"):  # bootstrapped before bootstrap snapshots existed
        return ConfState(voters=tuple(meta["voters"]),
                         learners=tuple(meta.get("learners", ())))
    node.membership.joining = True
    return ConfState(voters=tuple(sorted(set(config.members) - {node.node_id})))

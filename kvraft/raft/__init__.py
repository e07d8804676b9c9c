"""kvraft.raft: the pure Raft core (no I/O, no clocks, no global randomness).

The driving contract is written here once the core lands (see RaftCore).
"""

from kvraft.raft.types import (  # noqa: F401
    NONE,
    ConfChange,
    ConfChangeSingle,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MsgType,
    NodeId,
    ProposalDropped,
    ReadState,
    Ready,
    Role,
    Snapshot,
    SnapshotMetadata,
    SoftState,
)

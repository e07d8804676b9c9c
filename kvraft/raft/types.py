"""Value types shared by the pure Raft core, its drivers, storage and the wire codec.

Everything here is plain data: no I/O, no clocks, no randomness. The classes use
``__slots__`` because the leader creates many of them per second on the hot path.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

NodeId = str
"""Node ids are short strings (``"n1"``); they are also the certificate SAN ``DNS:<id>``."""

NONE: NodeId = ""
"""The empty id: "no leader", "no vote"."""


class MsgType(enum.IntEnum):
    """Raft message kinds. Numbers are part of the wire format: append, never renumber."""

    # Local messages: never sent over the network.
    MsgHup = 0  # start an election (pre-vote first when enabled)
    MsgBeat = 1  # leader: broadcast heartbeats
    MsgProp = 2  # a proposal; followers forward it to the leader
    MsgCheckQuorum = 3  # leader: step down unless a quorum was recently active
    MsgUnreachable = 4  # driver: a peer could not be reached
    MsgSnapStatus = 5  # driver: a snapshot send finished (reject=True means failed)
    # Network messages.
    MsgApp = 10
    MsgAppResp = 11
    MsgVote = 12
    MsgVoteResp = 13
    MsgPreVote = 14
    MsgPreVoteResp = 15
    MsgSnap = 16
    MsgHeartbeat = 17
    MsgHeartbeatResp = 18
    MsgTransferLeader = 19
    MsgTimeoutNow = 20
    MsgReadIndex = 21
    MsgReadIndexResp = 22
    MsgForgetLeader = 23
    # Driver-to-driver messages: they travel between nodes but never enter the core
    # (the node streams snapshot bodies with them; see DRIVER_MESSAGES).
    MsgSnapChunk = 24
    MsgSnapChunkResp = 25


LOCAL_MESSAGES = frozenset({
    MsgType.MsgHup, MsgType.MsgBeat, MsgType.MsgCheckQuorum,
    MsgType.MsgUnreachable, MsgType.MsgSnapStatus,
})
"""Kinds a driver must never put on the wire (nor accept from it)."""

DRIVER_MESSAGES = frozenset({MsgType.MsgSnapChunk, MsgType.MsgSnapChunkResp})
"""Kinds a driver sends to another node's driver; never stepped into a core."""

RESPONSE_MESSAGES = frozenset({
    MsgType.MsgAppResp, MsgType.MsgVoteResp, MsgType.MsgPreVoteResp,
    MsgType.MsgHeartbeatResp, MsgType.MsgReadIndexResp,
})


class EntryType(enum.IntEnum):
    """What an entry's ``data`` holds. Numbers are part of the on-disk format."""

    Normal = 0  # state-machine commands (a msgpack batch) or b"" (a leader's no-op)
    ConfChange = 1  # a msgpack-encoded ConfChange


class Role(enum.Enum):
    """A node's role. ``PreCandidate`` is a follower running a pre-vote."""

    Follower = "follower"
    PreCandidate = "pre-candidate"
    Candidate = "candidate"
    Leader = "leader"


class ConfChangeType(enum.IntEnum):
    """Single membership operations; a ConfChange carries one or more of them."""

    AddVoter = 0
    AddLearner = 1
    RemoveNode = 2


class ProposalDropped(Exception):  # noqa: N818 (a public name others use)
    """A proposal was not accepted; the message says why and what to do.

    ``reason`` is a stable machine-readable word: ``"no-leader"``, ``"transferring"``,
    ``"too-large"``, ``"queue-full"``, ``"conf-change-pending"``, ``"not-member"``.
    """

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(slots=True)
class Entry:
    """One log entry. ``index`` starts at 1; index 0 / term 0 is the empty log's sentinel."""

    term: int
    index: int
    type: EntryType = EntryType.Normal
    data: bytes = b""

    def size(self) -> int:
        """Bytes this entry counts toward ``max_msg_bytes`` and size limits."""
        return len(self.data) + 16


@dataclass(slots=True)
class HardState:
    """What must be durable before a node answers a vote or an append (Raft Figure 2)."""

    term: int = 0
    vote: NodeId = NONE
    commit: int = 0

    def is_empty(self) -> bool:
        """True for a node that never saw a term (nothing saved yet)."""
        return self.term == 0 and self.vote == NONE and self.commit == 0


@dataclass(slots=True)
class SoftState:
    """Volatile state a driver may want to observe; never persisted."""

    leader_id: NodeId = NONE
    role: Role = Role.Follower


@dataclass(slots=True)
class ConfState:
    """The cluster configuration. Joint consensus while ``voters_outgoing`` is non-empty."""

    voters: tuple[NodeId, ...] = ()
    learners: tuple[NodeId, ...] = ()
    voters_outgoing: tuple[NodeId, ...] = ()  # the old config during a joint change
    learners_next: tuple[NodeId, ...] = ()  # voters that become learners on leaving joint
    auto_leave: bool = False

    def is_joint(self) -> bool:
        """True during a joint-consensus change (decisions need both halves)."""
        return bool(self.voters_outgoing)

    def members(self) -> tuple[NodeId, ...]:
        """Every node that receives the log, in a stable order."""
        seen: dict[NodeId, None] = {}
        for group in (self.voters, self.voters_outgoing, self.learners, self.learners_next):
            for node in group:
                seen[node] = None
        return tuple(seen)


@dataclass(slots=True)
class ConfChangeSingle:
    """One membership operation on one node."""

    type: ConfChangeType
    node_id: NodeId
    context: bytes = b""  # e.g. the new node's address; opaque to the core


@dataclass(slots=True)
class ConfChange:
    """A membership change. One change: simple; several (or ``joint=True``): joint consensus."""

    changes: tuple[ConfChangeSingle, ...]
    joint: bool = False
    context: bytes = b""


@dataclass(slots=True)
class SnapshotMetadata:
    """Where a snapshot ends in the log (index/term) and the configuration there."""

    index: int = 0
    term: int = 0
    conf_state: ConfState = field(default_factory=ConfState)


@dataclass(slots=True)
class Snapshot:
    """A point-in-time image of the state machine. ``data`` is opaque to the core."""

    metadata: SnapshotMetadata = field(default_factory=SnapshotMetadata)
    data: bytes = b""

    def is_empty(self) -> bool:
        """True for "no snapshot" (index 0)."""
        return self.metadata.index == 0


@dataclass(slots=True)
class Message:
    """A Raft message. ``frm`` because ``from`` is a keyword; the wire uses ``"from"``.

    Field use by kind (as in etcd-io/raft):
    * MsgApp: ``index``/``log_term`` locate the entry before ``entries``; ``commit``.
    * MsgAppResp: ``index`` is the last matching index; on ``reject``, ``reject_hint``
      and ``log_term`` carry the fast-backtracking hint (follower's last index, and the
      term of its entry at ``reject_hint``).
    * MsgVote / MsgPreVote: ``index``/``log_term`` describe the candidate's last entry;
      ``context`` is ``b"transfer"`` for a leadership-transfer election.
    * MsgHeartbeat: ``commit``; ``context`` carries a ReadIndex round id.
    * MsgReadIndex / MsgReadIndexResp: ``context`` is the request id; the response's
      ``index`` is the read index.
    * MsgSnap (core to driver): ``snapshot`` holds the metadata only; the driver streams
      the body itself as MsgSnapChunks and steps a data-less MsgSnap into the receiver's
      core once the whole body is verified and durable.
    * MsgSnapChunk (driver to driver): ``snapshot`` carries the metadata of the snapshot
      being sent and, as ``data``, one chunk of its body; ``index`` is the chunk's byte
      offset in the body; ``context`` is empty except on the last chunk, where it is
      the CRC32 of the whole body (4 bytes, big-endian).
    * MsgSnapChunkResp (driver to driver): ``snapshot`` names the snapshot (metadata,
      no data); ``index`` is how many body bytes the receiver holds; ``reject`` means it
      gave up on this stream; ``context`` is ``b"installed"`` once the receiver has the
      verified snapshot durable and handed to its core (or found it needs none).
    """

    type: MsgType
    to: NodeId = NONE
    frm: NodeId = NONE
    term: int = 0
    log_term: int = 0
    index: int = 0
    entries: list[Entry] = field(default_factory=list)
    commit: int = 0
    snapshot: Snapshot | None = None
    reject: bool = False
    reject_hint: int = 0
    context: bytes = b""


@dataclass(slots=True)
class ReadState:
    """A ReadIndex answer: once ``applied >= index``, a read tagged ``request_ctx`` is safe."""

    index: int
    request_ctx: bytes


@dataclass(slots=True)
class Ready:
    """Everything the driver must do, in the order written in ``kvraft.raft``'s docstring.

    ``messages`` may be sent at once, even before ``entries`` are durable: a leader's
    MsgApp and MsgHeartbeat, a candidate's MsgVote (its own vote for itself is counted
    only once durable). ``messages_after_persist`` must not leave the node before
    ``entries``, ``hard_state`` and ``snapshot`` of this Ready are durable: vote
    responses, append acknowledgements, and anything else that speaks for durable state.
    """

    soft_state: SoftState | None = None
    hard_state: HardState | None = None
    read_states: list[ReadState] = field(default_factory=list)
    entries: list[Entry] = field(default_factory=list)
    snapshot: Snapshot | None = None
    committed_entries: list[Entry] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    messages_after_persist: list[Message] = field(default_factory=list)
    must_sync: bool = False

"""kvraft.raft: the pure Raft core (no I/O, no clocks, no global randomness).

``RaftCore`` is one Raft peer as a deterministic state machine, driven like etcd-io/raft's
RawNode. Time is ``tick()``; randomness comes from ``RaftConfig.rng`` (anything with
``randrange``) or a SplitMix64 seeded with ``RaftConfig.seed``. Inputs: ``tick()``,
``step(msg)``, ``propose(data)``, ``propose_conf_change(cc)``, ``read_index(ctx)``,
``transfer_leadership(to)``, ``campaign()``, ``report_unreachable(id)``,
``report_snapshot(id, ok)``. Output: ``Ready`` (and, between Readies,
``take_messages()``, ``take_read_states()``, ``take_committed_entries()``).

The driving contract
--------------------
::

    while core.has_ready():
        rd = core.ready()
        ...
        core.advance(rd)

For each Ready, in this order:

1. Send ``rd.messages``. They may leave before anything below is durable (a leader's
   MsgApp and MsgHeartbeat, a candidate's MsgVote, forwarded proposals).
2. Persist: install ``rd.snapshot`` if set (``apply_snapshot``); append ``rd.entries``
   (``append``, which truncates a conflicting suffix); save ``rd.hard_state`` if set;
   fsync if ``rd.must_sync``.
3. Only then send ``rd.messages_after_persist``: vote responses (MsgVoteResp,
   MsgPreVoteResp) and append acknowledgements (MsgAppResp), which speak for the state
   written in step 2. (MsgHeartbeatResp and MsgReadIndexResp are always in
   ``messages``: they promise nothing durable.)
4. Apply ``rd.committed_entries`` in order (a ConfChange entry: decode it with
   ``decode_conf_change`` and call ``core.apply_conf_change``); a read in
   ``rd.read_states`` may be served once the applied index reaches its ``index``.
5. Call ``core.advance(rd)``. Only then does the node count its OWN vote (a candidate)
   and its OWN entries (a leader) toward a quorum: a node never counts, nor
   acknowledges, state that is not durable.

``has_ready()`` is False and ``ready()`` raises while a Ready is outstanding (between
``ready()`` and ``advance()``), so the driver may persist in a writer thread and keep
calling ``step``/``tick``/``propose`` meanwhile: everything proposed during the write goes
into the next Ready (group commit). Committed entries may include entries of the same
Ready's ``entries`` (a quorum of followers can commit what the leader is still writing):
apply those only after step 2.

While a Ready is outstanding, ``take_messages()`` hands out what the next Ready would
put in ``messages`` (heartbeats and their answers, new MsgApps, ReadIndex traffic,
vote requests), ``take_read_states()`` the ReadIndex answers, and
``take_committed_entries()`` the committed entries that are durable here: they may be
sent, served and applied at once, so nothing that needs no durability of the
outstanding Ready waits behind its fsync. None ever yields what belongs in
``messages_after_persist`` nor an entry of the outstanding write; call
``take_committed_entries`` only after applying the outstanding Ready's committed
entries that were durable when it was handed out (see ``kvraft.raft.early``).

The storage read contract
-------------------------
The core reads storage through exactly these methods (``MemoryStorage`` implements
them; a driver wraps its real stores in an adapter offering the same):

* ``initial_state() -> (HardState, ConfState)``: at construction only. An empty
  ConfState (no voters) means "new node": ``RaftConfig.voters``/``learners`` are used.
* ``first_index() -> int``, ``last_index() -> int``.
* ``term(index) -> int``, for ``first_index() - 1 <= index <= last_index()``; raises
  ``CompactedError`` below and ``UnavailableError`` above.
* ``entries(lo, hi, max_bytes) -> list[Entry]``: ``[lo, hi)``, cut at ``max_bytes``
  (sum of ``Entry.size()``) but at least one entry; same errors as ``term``.
* ``snapshot() -> Snapshot``: the newest snapshot, only when a follower needs compacted
  entries; may raise ``SnapshotTemporarilyUnavailableError``.

Storage must reflect every ``append`` at once (before fsync). The core never writes to
storage: the driver does, as above.
"""

from kvraft.raft.confchange import (
    apply_conf_change,
    conf_change_kind,
    decode_conf_change,
    encode_conf_change,
)
from kvraft.raft.config import RaftConfig, SplitMix64
from kvraft.raft.core import AFTER_PERSIST_TYPES, TRANSFER_CONTEXT, RaftCore
from kvraft.raft.describe import (
    describe_conf_state,
    describe_entry,
    describe_hard_state,
    describe_message,
    describe_ready,
)
from kvraft.raft.errors import (
    CompactedError,
    ConfChangeError,
    LogLostError,
    SnapshotOutOfDateError,
    SnapshotTemporarilyUnavailableError,
    StorageError,
    UnavailableError,
)
from kvraft.raft.progress import ProgressState
from kvraft.raft.storage import MemoryStorage
from kvraft.raft.types import (
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

__all__ = [
    "AFTER_PERSIST_TYPES", "NONE", "TRANSFER_CONTEXT", "CompactedError", "ConfChange",
    "ConfChangeError",
    "ConfChangeSingle", "ConfChangeType", "ConfState", "Entry", "EntryType", "HardState",
    "MemoryStorage", "Message", "MsgType", "NodeId", "ProgressState", "ProposalDropped",
    "RaftConfig", "RaftCore", "ReadState", "Ready", "Role", "Snapshot", "SnapshotMetadata",
    "SnapshotOutOfDateError", "SnapshotTemporarilyUnavailableError", "SoftState", "SplitMix64",
    "StorageError", "UnavailableError", "LogLostError", "apply_conf_change", "conf_change_kind",
    "decode_conf_change", "describe_conf_state", "describe_entry", "describe_hard_state",
    "describe_message", "describe_ready", "encode_conf_change",
]

"""Stable, human-readable text for messages, entries and Readys (logs, traces, tests).

The format follows etcd-io/raft's DescribeMessage, e.g.
``n1->n2 MsgApp Term:2 Log:1/5 Commit:5 Entries:[2/6 EntryNormal "x"]``. It is part of
the test fixtures (tests/raft/testdata): change it only together with them.
"""

from __future__ import annotations

from kvraft.raft.confchange import decode_conf_change
from kvraft.raft.errors import ConfChangeError
from kvraft.raft.types import (
    NONE,
    ConfChange,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    Ready,
    Snapshot,
)

payload_bytes_shown_max = 64
"""Longer payloads are cut in descriptions (with the remaining length shown)."""


def quote(data: bytes) -> str:
    """``data`` as a double-quoted string: printable ASCII as is, the rest as \\xNN."""
    shown = data[:payload_bytes_shown_max]
    parts = ['"']
    for b in shown:
        if b == 0x22:
            parts.append('\\"')
        elif b == 0x5C:
            parts.append("\\\\")
        elif 0x20 <= b < 0x7F:
            parts.append(chr(b))
        else:
            parts.append(f"\\x{b:02x}")
    parts.append('"')
    if len(data) > len(shown):
        parts.append(f"...+{len(data) - len(shown)}B")
    return "".join(parts)


def _node(node: str) -> str:
    return node if node != NONE else "None"


def describe_conf_change(cc: ConfChange) -> str:
    """E.g. ``AddVoter(n4) RemoveNode(n1) joint`` or ``LeaveJoint``."""
    if not cc.changes:
        return "LeaveJoint"
    text = " ".join(f"{c.type.name}({c.node_id})" for c in cc.changes)
    return text + (" joint" if cc.joint else "")


def describe_conf_state(cs: ConfState) -> str:
    """E.g. ``Voters:[n1 n2] VotersOutgoing:[n1] Learners:[] LearnersNext:[] AutoLeave:false``."""
    def ids(group: tuple[str, ...]) -> str:
        return "[" + " ".join(group) + "]"

    text = f"Voters:{ids(cs.voters)}"
    if cs.voters_outgoing:
        text += f" VotersOutgoing:{ids(cs.voters_outgoing)}"
    text += f" Learners:{ids(cs.learners)}"
    if cs.learners_next:
        text += f" LearnersNext:{ids(cs.learners_next)}"
    if cs.auto_leave:
        text += " AutoLeave:true"
    return text


def describe_entry(e: Entry) -> str:
    """E.g. ``2/6 EntryNormal "x"`` (term/index type payload)."""
    if e.type == EntryType.ConfChange:
        try:
            body = describe_conf_change(decode_conf_change(e.data))
        except ConfChangeError:
            body = quote(e.data)
        return f"{e.term}/{e.index} EntryConfChange {body}"
    return f"{e.term}/{e.index} EntryNormal {quote(e.data)}"


def describe_snapshot(s: Snapshot) -> str:
    """E.g. ``Index:5 Term:2 ConfState:Voters:[n1 n2 n3] Learners:[]``."""
    m = s.metadata
    return f"Index:{m.index} Term:{m.term} ConfState:{describe_conf_state(m.conf_state)}"


def describe_hard_state(hs: HardState) -> str:
    """E.g. ``Term:2 Vote:n1 Commit:5``."""
    return f"Term:{hs.term} Vote:{_node(hs.vote)} Commit:{hs.commit}"


def describe_message(m: Message) -> str:
    """One line describing ``m``; stable across releases (tests compare it)."""
    text = (f"{_node(m.frm)}->{_node(m.to)} {m.type.name} Term:{m.term} "
            f"Log:{m.log_term}/{m.index}")
    if m.reject:
        text += f" Rejected (Hint: {m.reject_hint})"
    if m.commit:
        text += f" Commit:{m.commit}"
    if m.entries:
        text += " Entries:[" + ", ".join(describe_entry(e) for e in m.entries) + "]"
    if m.context:
        text += f" Context:{quote(m.context)}"
    if m.snapshot is not None and not m.snapshot.is_empty():
        text += f" Snapshot: {describe_snapshot(m.snapshot)}"
    return text


def describe_ready(rd: Ready) -> str:
    """Several lines describing ``rd`` (``<empty Ready>`` if it holds nothing)."""
    lines: list[str] = []
    if rd.soft_state is not None:
        lines.append(f"Lead:{_node(rd.soft_state.leader_id)} "
                     f"State:{rd.soft_state.role.value}")
    if rd.hard_state is not None:
        lines.append("HardState " + describe_hard_state(rd.hard_state))
    if rd.read_states:
        lines.append("ReadStates:")
        lines.extend(f"  Index:{r.index} RequestCtx:{quote(r.request_ctx)}"
                     for r in rd.read_states)
    if rd.entries:
        lines.append("Entries:")
        lines.extend("  " + describe_entry(e) for e in rd.entries)
    if rd.snapshot is not None and not rd.snapshot.is_empty():
        lines.append("Snapshot " + describe_snapshot(rd.snapshot))
    if rd.committed_entries:
        lines.append("CommittedEntries:")
        lines.extend("  " + describe_entry(e) for e in rd.committed_entries)
    if rd.messages:
        lines.append("Messages:")
        lines.extend("  " + describe_message(m) for m in rd.messages)
    if rd.messages_after_persist:
        lines.append("MessagesAfterPersist:")
        lines.extend("  " + describe_message(m) for m in rd.messages_after_persist)
    if rd.must_sync:
        lines.append("MustSync")
    return "\n".join(lines) if lines else "<empty Ready>"

"""describe_message / describe_ready give stable text (the script tests rely on it)."""

from kvraft.raft import (
    ConfChange,
    ConfChangeSingle,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MsgType,
    ReadState,
    Ready,
    Role,
    Snapshot,
    SnapshotMetadata,
    SoftState,
    describe_entry,
    describe_message,
    describe_ready,
    encode_conf_change,
)
from kvraft.raft.describe import quote


def test_describe_message_matches_the_documented_example():
    m = Message(type=MsgType.MsgApp, frm="n1", to="n2", term=2, log_term=1, index=5,
                commit=5, entries=[Entry(term=2, index=6, data=b"x")])
    assert describe_message(m) == \
        'n1->n2 MsgApp Term:2 Log:1/5 Commit:5 Entries:[2/6 EntryNormal "x"]'


def test_describe_message_rejections_contexts_and_snapshots():
    rej = Message(type=MsgType.MsgAppResp, frm="n2", to="n1", term=3, index=7, log_term=2,
                  reject=True, reject_hint=4)
    assert describe_message(rej) == "n2->n1 MsgAppResp Term:3 Log:2/7 Rejected (Hint: 4)"
    hb = Message(type=MsgType.MsgHeartbeat, frm="n1", to="n3", term=1,
                 context=b"\x00\x01")
    assert describe_message(hb) == 'n1->n3 MsgHeartbeat Term:1 Log:0/0 Context:"\\x00\\x01"'
    snap = Message(type=MsgType.MsgSnap, frm="n1", to="n3", term=1, snapshot=Snapshot(
        SnapshotMetadata(index=9, term=1, conf_state=ConfState(voters=("n1", "n3")))))
    assert describe_message(snap).endswith(
        "Snapshot: Index:9 Term:1 ConfState:Voters:[n1 n3] Learners:[]")


def test_describe_entries_quote_and_cut_payloads_and_decode_conf_changes():
    assert quote(b'a"b\\c\n') == '"a\\"b\\\\c\\x0a"'
    assert quote(b"y" * 70).endswith('"...+6B')
    cc = ConfChange(changes=(ConfChangeSingle(ConfChangeType.AddVoter, "n4"),
                             ConfChangeSingle(ConfChangeType.RemoveNode, "n1")))
    e = Entry(term=3, index=8, type=EntryType.ConfChange, data=encode_conf_change(cc))
    assert describe_entry(e) == "3/8 EntryConfChange AddVoter(n4) RemoveNode(n1)"


def test_describe_ready_lists_each_part_in_order():
    rd = Ready(soft_state=SoftState(leader_id="n1", role=Role.Leader),
               hard_state=HardState(term=2, vote="n1", commit=4),
               read_states=[ReadState(4, b"r")],
               entries=[Entry(term=2, index=5)],
               committed_entries=[Entry(term=2, index=4, data=b"c")],
               messages=[Message(type=MsgType.MsgHeartbeat, frm="n1", to="n2", term=2)],
               messages_after_persist=[], must_sync=True)
    assert describe_ready(rd).splitlines() == [
        "Lead:n1 State:leader",
        "HardState Term:2 Vote:n1 Commit:4",
        "ReadStates:",
        '  Index:4 RequestCtx:"r"',
        "Entries:",
        '  2/5 EntryNormal ""',
        "CommittedEntries:",
        '  2/4 EntryNormal "c"',
        "Messages:",
        "  n1->n2 MsgHeartbeat Term:2 Log:0/0",
        "MustSync",
    ]
    assert describe_ready(Ready()) == "<empty Ready>"

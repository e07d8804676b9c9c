"""The chaos harness' parts without a cluster: RESP client parsing and outcome rules,
the workload's records, the checks, the torn-WAL nemesis, link splits, the PNG."""

import io
import random
import struct
import threading
import zlib

import pytest

from kvraft.raft.types import Entry
from kvraft.storage.wal import open_storage
from kvraft.testing.chaos import checks, cli, client, nemesis, plot, workload
from kvraft.testing.chaos.client import ErrorReply, classify, read_reply
from kvraft.testing.chaos.harness import format_summary, profile

# -- RESP client --------------------------------------------------------------------------


@pytest.mark.parametrize("wire, value", [
    (b"+OK\r\n", "OK"),
    (b":42\r\n", 42),
    (b"$3\r\nabc\r\n", b"abc"),
    (b"$-1\r\n", None),
    (b"*0\r\n", []),
    (b"*-1\r\n", None),
    (b"*2\r\n$1\r\na\r\n*2\r\n:1\r\n$-1\r\n", [b"a", [1, None]]),
])
def test_read_reply(wire, value):
    assert read_reply(io.BytesIO(wire)) == value


def test_read_reply_keeps_errors_as_values_and_refuses_truncation():
    reply = read_reply(io.BytesIO(b"-CLUSTERDOWN no leader\r\n"))
    assert isinstance(reply, ErrorReply) and reply.code == "CLUSTERDOWN"
    with pytest.raises(ConnectionError):
        read_reply(io.BytesIO(b"$10\r\nabc"))
    with pytest.raises(ConnectionError):
        read_reply(io.BytesIO(b"*2\r\n:1\r\n"))


@pytest.mark.parametrize("reply, outcome", [
    ("OK", "ok"),
    (None, "ok"),
    (ErrorReply("CLUSTERDOWN no leader: the cluster is electing one"), "fail"),
    (ErrorReply("ERR server busy: too many writes in flight"), "fail"),
    (ErrorReply("TIMEOUT outcome unknown"), "info"),
    (ErrorReply("ERR internal error: the node failed"), "info"),
])
def test_classify_follows_the_client_error_contract(reply, outcome):
    assert classify(reply)[0] == outcome


def test_only_fault_errors_are_expected():
    assert client.is_expected_error("TIMEOUT the write was not applied in time")
    assert client.is_expected_error("connect: [Errno 111] Connection refused")
    assert not client.is_expected_error("ERR internal error: the node failed")
    assert not client.is_expected_error("unexpected reply 'QUEUED'")


# -- workload records ----------------------------------------------------------------


class FakeConnection:
    """Answers each call from a script; an exception in the script is raised."""

    def __init__(self, replies):
        self.replies = list(replies)
        self.calls = []

    def call(self, *args):
        self.calls.append(args)
        reply = self.replies.pop(0)
        if isinstance(reply, BaseException):
            raise reply
        return reply

    def close(self):
        pass


def _register_client(replies, rolls):
    history = workload.History(clock=iter(range(1000)).__next__)
    keys = workload.KeySpace(active=1, ops_per_key_max=100, rng=random.Random(1))

    class Rng(random.Random):
        def random(self):
            return rolls.pop(0)

        def randrange(self, *args):
            return 0

    c = workload.RegisterClient(
        "r", node_id="n1", connection=FakeConnection(replies), history=history,
        stop=threading.Event(), processes=workload.Processes(), rng=Rng(1), think_s=0,
        keys=keys)
    return c, history


def test_register_client_records_each_outcome():
    replies = [None, "OK", None, ErrorReply("CLUSTERDOWN no leader"),
               ErrorReply("TIMEOUT unknown"), client.ConnectError("connect: refused")]
    #          get   put   cas-nil  put->fail  cas->info  get->fail
    rolls = [0.1, 0.6, 0.9, 0.6, 0.9, 0.1] + [0.5] * 10
    c, history = _register_client(replies, rolls)
    for _ in range(6):
        c.step()
    done = [r for r in history.records if r["type"] != "invoke"]
    assert [(r["f"], r["type"]) for r in done] == [
        ("get", "ok"), ("put", "ok"), ("cas", "fail"), ("put", "fail"), ("cas", "info"),
        ("get", "fail")]
    assert done[0]["value"] is None and workload._parse_value(b"7") == 7
    # The cas expected the value the client had just written, and wrote a fresh one.
    cas = c.conn.calls[2]
    assert cas[3] == b"IFEQ" and cas[4] == done[1]["value"]
    # After the unknown cas the client is a new process; before it, one process.
    assert len({r["process"] for r in done[:5]}) == 1
    assert done[5]["process"] != done[4]["process"]
    assert c.stats.ok == 2 and c.stats.fail == 3 and c.stats.info == 1
    # Every completion follows its invoke, and the checker accepts the history.
    assert checks.check_registers(history.records, timeout_s=10).ok


def test_set_client_appends_unique_tokens():
    history = workload.History()
    c = workload.SetClient("s", node_id="n2", connection=FakeConnection([5, 10]),
                           history=history, stop=threading.Event(),
                           processes=workload.Processes(), rng=random.Random(2), think_s=0,
                           set_keys=1, client_index=4)
    c.step()
    c.step()
    assert [call[2] for call in c.conn.calls] == ["c4-0 ", "c4-1 "]
    assert [r["type"] for r in history.records] == ["invoke", "ok", "invoke", "ok"]


def test_key_space_retires_keys_after_their_budget():
    keys = workload.KeySpace(active=2, ops_per_key_max=3, rng=random.Random(1))
    picked = [keys.pick(random.Random(i)) for i in range(30)]
    assert all(n <= 3 for n in keys.used.values())
    assert len(set(picked)) >= 10


# -- checks ----------------------------------------------------------------------------


def _add(history, process, token, outcome, key="s:0"):
    history.append({"process": process, "type": "invoke", "f": "add", "key": key,
                    "value": token, "time": len(history)})
    history.append({"process": process, "type": outcome, "f": "add", "key": key,
                    "value": token, "time": len(history)})


def test_set_check_accepts_a_clean_run():
    history = []
    _add(history, 1, "a", "ok")
    _add(history, 1, "b", "info")
    _add(history, 1, "c", "fail")
    result = checks.check_set(history, {"s:0": b"a b "})
    assert result.ok, result.summary
    assert result.details["unknown_outcome_present"] == 1


@pytest.mark.parametrize("final, problem", [
    ({"s:0": b"b "}, "lost"),
    ({"s:0": b"a z "}, "phantom"),
    ({"s:0": b"a c "}, "failed-but-present"),
    ({"s:0": b"a a "}, "duplicated"),
    ({"s:0": b"", "s:1": b"a "}, "misplaced"),
])
def test_set_check_finds_each_problem(final, problem):
    history = []
    _add(history, 1, "a", "ok")
    _add(history, 1, "c", "fail")
    result = checks.check_set(history, final)
    assert not result.ok and problem in result.summary


def test_register_check_rejects_a_stale_read():
    history = [
        {"process": 1, "type": "invoke", "f": "put", "key": "r:0", "value": 1, "time": 0},
        {"process": 1, "type": "ok", "f": "put", "key": "r:0", "value": 1, "time": 1},
        {"process": 1, "type": "invoke", "f": "put", "key": "r:0", "value": 2, "time": 2},
        {"process": 1, "type": "ok", "f": "put", "key": "r:0", "value": 2, "time": 3},
        {"process": 2, "type": "invoke", "f": "get", "key": "r:0", "value": None, "time": 4},
        {"process": 2, "type": "ok", "f": "get", "key": "r:0", "value": 1, "time": 5},
        {"process": 2, "type": "invoke", "f": "add", "key": "s:0", "value": "x", "time": 6},
        {"process": 2, "type": "ok", "f": "add", "key": "s:0", "value": "x", "time": 7},
    ]
    result = checks.check_registers(history, timeout_s=10)
    assert not result.ok and not result.unknown
    assert "NOT linearizable" in result.summary and result.details["key"] == "r:0"


def test_availability_and_error_checks():
    faults = [{"kind": "kill-leader", "detail": "x", "recovery_s": 2.0},
              {"kind": "pause-leader", "detail": "y", "recovery_s": 25.0}]
    result = checks.check_availability(faults, bound_s=20.0)
    assert not result.ok and result.details["slow"][0]["kind"] == "pause-leader"
    assert checks.check_availability(faults[:1], bound_s=20.0).ok
    odd = [{"type": "info", "error": "ERR internal error: boom"},
           {"type": "fail", "error": "CLUSTERDOWN no leader"}]
    result = checks.check_errors(odd)
    assert not result.ok and list(result.details["unexpected"]) == ["ERR internal error: boom"]


# -- nemesis parts ---------------------------------------------------------------------


def _wal_with_entries(data_dir, count):
    storage = open_storage(str(data_dir), {})
    storage.log.append([Entry(term=1, index=i, data=b"x%d" % i) for i in range(1, count + 1)])
    storage.log.sync()
    storage.close()


def test_torn_wal_appends_a_partial_record_the_wal_cuts_off(tmp_path):
    _wal_with_entries(tmp_path, 5)
    what = nemesis.tear_wal(tmp_path, random.Random(3))
    assert "appended" in what and "entry 6" in what
    storage = open_storage(str(tmp_path), {})
    try:
        assert storage.log.last_index() == 5
        assert storage.log.entries(5, 6)[0].data == b"x5"
    finally:
        storage.close()


def test_torn_wal_cut_complete_loses_the_last_entry(tmp_path):
    _wal_with_entries(tmp_path, 5)
    what = nemesis.tear_wal(tmp_path, random.Random(3), cut_complete=True)
    assert "entry 5" in what
    storage = open_storage(str(tmp_path), {})
    try:
        assert storage.log.last_index() == 4
    finally:
        storage.close()


class Splitter(nemesis.Nemesis):
    def __init__(self, nodes):
        self.nodes = nodes


def test_partition_links():
    n = Splitter(["n1", "n2", "n3", "n4", "n5"])
    links = set(n._split([["n1", "n2"], ["n3", "n4", "n5"]]))
    assert len(links) == 12 and "n1->n3" in links and "n3->n1" in links
    assert "n1->n2" not in links and "n3->n4" not in links
    bridged = set(n._split([["n1", "n2"], ["n4", "n5"]], bridge="n3"))
    assert len(bridged) == 8 and not any("n3" in link for link in bridged)


# -- report ----------------------------------------------------------------------------


def test_timeline_png_is_a_valid_image_with_faults_shaded(tmp_path):
    history = []
    for i in range(50):
        history.append({"process": i % 3, "type": "invoke", "f": "get", "key": "r:0",
                        "time": i * 0.2})
        history.append({"process": i % 3, "type": ["ok", "fail", "info"][i % 3],
                        "f": "get", "key": "r:0", "time": i * 0.2 + 0.01})
    faults = [{"kind": "kill-leader", "start": 2.0, "end": 4.0, "recovered": 5.0}]
    path = tmp_path / "t.png"
    plot.render_timeline(history, faults, path, title="test", width=400, height=300)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (400, 300)
    idat = data.index(b"IDAT")
    length = struct.unpack(">I", data[idat - 4:idat])[0]
    raw = zlib.decompress(data[idat + 4:idat + 4 + length])
    assert len(raw) == height * (1 + 3 * width)
    # Inside the kill window (t=2.5 s, between grid lines) the latency panel is the kill shade.
    x, y = 70 + int((400 - 20 - 70) * 2.5 / 9.81), int(300 * 0.54) - 5
    row = raw[y * (1 + 3 * width) + 1:]
    assert tuple(row[3 * x:3 * x + 3]) == plot.FAULT_COLORS["kill"]


def test_profiles_and_summary_text():
    ci = profile("ci")
    assert ci.nodes == 3 and set(ci.nemeses) == set(nemesis.NEMESES)
    long = profile("long", seed=9)
    assert long.nodes == 5 and long.duration_s >= 1800 and long.seed == 9
    with pytest.raises(ValueError, match="unknown profile"):
        profile("forever")
    summary = {
        "config": {"profile": "ci", "nodes": 3, "seed": 1, "duration_s": 120},
        "wall_s": 150, "verdict": "pass", "faults_injected": 1,
        "faults_by_kind": {"kill-leader": 1},
        "operations": {"total": 2, "ok": 1, "fail": 1, "info": 0,
                       "by_f": {"get": {"ok": 1, "fail": 1}}},
        "checks": {"set": {"ok": True, "summary": "fine"}},
        "files": {"summary": "s", "history": "h", "timeline": "t"},
    }
    text = format_summary(summary)
    assert "verdict: PASS" in text and "[ok] set: fine" in text and "kill-leader x1" in text


def test_cli_refuses_bad_arguments(capsys):
    assert cli.main(["--nemesis", "bogus"]) == 2
    assert "unknown nemesis bogus" in capsys.readouterr().err
    assert cli.main(["--nodes", "2", "--out", "/nonexistent/never-created"]) == 2
    assert "at least 3" in capsys.readouterr().err


class FakeCluster:
    def __init__(self, leaders):
        self.leaders = list(leaders)

    def leader(self):
        return self.leaders.pop(0) if len(self.leaders) > 1 else self.leaders[0]


def test_membership_change_retries_until_in_effect(monkeypatch):
    from kvraft.testing.chaos import membership
    replies = [ErrorReply("NOTLEADER n2 membership changes run on the leader"),
               ErrorReply("ERR a membership change is in progress; retry"),
               ErrorReply("lost TimeoutError: timed out")]
    # Looked at before and after each attempt; in effect after the third.
    views = [{"n1": "voter", "n2": "voter", "n3": "voter"}] * 5 + [{"n1": "voter"}]
    sent = []

    def admin(cluster, node, args, timeout_s=0):
        sent.append((node, args[0]))
        return replies.pop(0)

    monkeypatch.setattr(membership, "admin", admin)
    monkeypatch.setattr(membership, "members", lambda cluster, node: views.pop(0))
    ok, how = membership.change(FakeCluster([None, "n1", "n2"]), [b"RAFT.REMOVE", "n3"],
                                lambda m: "n3" not in m, sleep=lambda s: None)
    assert ok and "TimeoutError" in how
    assert [node for node, _ in sent] == ["n1", "n2", "n2"]


def test_membership_change_gives_up_on_a_refusal(monkeypatch):
    from kvraft.testing.chaos import membership
    monkeypatch.setattr(membership, "admin",
                        lambda *a, **k: ErrorReply("ERR n9 is not a member"))
    monkeypatch.setattr(membership, "members", lambda cluster, node: {"n1": "voter"})
    ok, how = membership.change(FakeCluster(["n1"]), [b"RAFT.REMOVE", "n9"],
                                lambda m: False, sleep=lambda s: None)
    assert not ok and "not a member" in how

"""kvraft.logs: node id and term on every event, text and JSON lines, how twistd picks
the observer up. (A real `twistd kvraft` writing JSON lines: tests/integration/test_ops.py.)"""

from __future__ import annotations

import io
import json

from twisted.application.service import Application
from twisted.logger import ILogObserver, Logger, LogLevel
from twisted.python.failure import Failure

from kvraft import logs


class Core:
    term = 7


class Node:
    core = Core()


def context(with_node: bool = True) -> logs.NodeLogContext:
    ctx = logs.NodeLogContext("n1")
    if with_node:
        ctx.node = Node()
    return ctx


def emit(observer, level=LogLevel.info, **fields) -> None:
    Logger(namespace="kvraft.test", observer=observer).emit(level, **fields)


def test_text_lines_carry_node_and_term():
    out = io.StringIO()
    observer = logs.NodeFileObserver(out, "text", context())
    emit(observer, format="leader is {leader}", leader="n2")
    line = out.getvalue()
    assert line.endswith(" [n1 t7] [kvraft.test#info] leader is n2\n"), line
    out = io.StringIO()
    emit(logs.NodeFileObserver(out, "text", context(with_node=False)), format="starting")
    assert "[n1 t-] [kvraft.test#info] starting" in out.getvalue()


def test_json_lines_are_one_object_per_event_with_fixed_keys():
    out = io.StringIO()
    observer = logs.NodeFileObserver(out, "json", context())
    emit(observer, LogLevel.warn, format="peer {peer} refused ({reason})", peer="n3",
         reason="expired", count=3, ids=["a", "b"], obj=object(), node="ignored",
         message="ignored too")
    record = json.loads(out.getvalue())
    assert out.getvalue().count("\n") == 1
    assert record["node"] == "n1" and record["term"] == 7
    assert record["level"] == "warn" and record["namespace"] == "kvraft.test"
    assert record["message"] == "peer n3 refused (expired)"
    assert record["peer"] == "n3" and record["count"] == 3 and record["ids"] == ["a", "b"]
    assert record["obj"].startswith("<object object")
    assert record["time"].endswith("Z") and isinstance(record["ts"], float)
    assert not any(key.startswith("log_") for key in record)


def test_json_lines_include_the_traceback_of_a_failure():
    out = io.StringIO()
    observer = logs.NodeFileObserver(out, "json", context())
    try:
        raise RuntimeError("disk on fire")
    except RuntimeError:
        failure = Failure()
    Logger(namespace="kvraft.node", observer=observer).failure("storage failed", failure)
    record = json.loads(out.getvalue())
    assert record["level"] == "critical" and record["message"] == "storage failed"
    assert "RuntimeError: disk on fire" in record["failure"]


def test_level_filter_drops_debug_unless_asked():
    seen = []
    quiet = logs.level_filter(seen.append, environ={})
    emit(quiet, LogLevel.debug, format="noise")
    emit(quiet, LogLevel.info, format="signal")
    assert [e["log_format"] for e in seen] == ["signal"]
    seen.clear()
    chatty = logs.level_filter(seen.append, environ={"KVRAFT_LOG_LEVEL": "debug"})
    emit(chatty, LogLevel.debug, format="noise")
    assert [e["log_format"] for e in seen] == ["noise"]


def test_install_sets_the_application_observer_twistd_uses(tmp_path):
    application = Application("kvraft")
    assert logs.install(application, {"logfile": str(tmp_path / "node.log")}, "json")
    observer = application.getComponent(ILogObserver)
    assert observer is not None
    emit(observer, format="hello")
    assert json.loads((tmp_path / "node.log").read_text())["message"] == "hello"
    # twistd --syslog keeps twistd's own observer.
    other = Application("kvraft")
    assert not logs.install(other, {"syslog": True}, "json")
    assert other.getComponent(ILogObserver) is None


def test_a_broken_event_still_produces_a_line():
    out = io.StringIO()
    observer = logs.NodeFileObserver(out, "text", context())
    observer({"log_format": "{missing", "log_level": LogLevel.info, "log_time": 0.0})
    assert out.getvalue().strip()


def test_twistd_logger_option_gives_json_lines_on_stdout(capsys, monkeypatch):
    monkeypatch.setattr(logs.CONTEXT, "node_id", "n9")
    observer = logs.json_stdout_observer()
    emit(observer, format="from --logger")
    emit(observer, LogLevel.debug, format="filtered out")
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["message"] for line in lines] == ["from --logger"]
    assert json.loads(lines[0])["node"] == "n9"

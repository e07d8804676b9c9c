"""Logging: every event carries the node id and its current Raft term, as text or as
JSON lines.

kvraft logs through ``twisted.logger``. ``twistd kvraft`` installs one observer (see
``install``) that writes where twistd would (``--logfile``, or stdout with
``--nodaemon``), with the node and term added to every event:

* ``log.format = "text"`` (default)::

      2025-05-01T10:00:00.123+0000 [n1 t7] [kvraft.node#info] node n1: role leader ...

* ``log.format = "json"``: one object per line, for log shippers::

      {"time": "2025-05-01T10:00:00.123Z", "ts": 1746093600.123, "level": "info",
       "namespace": "kvraft.node", "node": "n1", "term": 7, "message": "node n1: ...",
       "role": "leader", ...}

  ``message`` is the rendered text; the event's own fields follow when they are plain
  JSON values (others as their ``str``), never overwriting the fixed keys; a logged
  failure adds ``failure`` (the traceback). ``twistd --logger
  kvraft.logs.json_stdout_observer kvraft ...`` gives the same lines on stdout.

Events below ``info`` are dropped unless ``KVRAFT_LOG_LEVEL=debug`` is set in the
environment. With ``twistd --syslog`` twistd's own syslog observer is kept (no node or
term).
"""

from __future__ import annotations

import datetime
import enum
import json
import os
import sys
from typing import IO, Any

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    eventAsText,
    formatEvent,
)
from zope.interface import implementer

value_chars_max = 2000
"""Longest non-JSON field value written (as its ``str``), so one event stays one line
of sane size."""
_FIXED = ("time", "ts", "level", "namespace", "node", "term", "message", "failure")


class NodeLogContext:
    """Where the node id and term come from: ``node_id`` is set from the configuration
    at start, ``node`` (a ``RaftNodeService``) once it exists; ``term`` is read from its
    core at each event."""

    def __init__(self, node_id: str = "-") -> None:
        self.node_id = node_id
        self.node = None

    @property
    def term(self) -> int | None:
        """The node's current term, or None before its core exists."""
        core = getattr(self.node, "core", None)
        return getattr(core, "term", None) if core is not None else None


CONTEXT = NodeLogContext()
"""The process's context (one node per process); ``kvraft.tap`` fills it in."""


def _timestamp(event: dict) -> tuple[float, str]:
    ts = event.get("log_time")
    if ts is None:
        import time
        ts = time.time()
    moment = datetime.datetime.fromtimestamp(ts, datetime.UTC)
    return ts, moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _level_name(event: dict) -> str:
    return getattr(event.get("log_level"), "name", "info")


def _json_value(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple) and all(
            v is None or isinstance(v, bool | int | float | str) for v in value):
        return list(value)
    if isinstance(value, enum.Enum):
        return _json_value(value.value)
    return str(value)[:value_chars_max]


def event_as_json(event: dict, context: NodeLogContext = CONTEXT) -> str:
    """One event as one JSON line (no trailing newline)."""
    ts, when = _timestamp(event)
    out: dict[str, Any] = {
        "time": when, "ts": round(ts, 6), "level": _level_name(event),
        "namespace": event.get("log_namespace", "-"), "node": context.node_id,
        "term": context.term, "message": formatEvent(event),
    }
    failure = event.get("log_failure")
    if failure is not None:
        try:
            out["failure"] = failure.getTraceback()
        except Exception:
            out["failure"] = repr(failure)
    for key, value in event.items():
        if key.startswith("log_") or key in _FIXED or key.startswith("_"):
            continue
        out[key] = _json_value(value)
    return json.dumps(out, ensure_ascii=False, separators=(",", ":"))


def event_as_text(event: dict, context: NodeLogContext = CONTEXT) -> str:
    """One event as a classic twistd line with ``[node tTERM]`` (newline included)."""
    term = context.term
    prefix = f"[{context.node_id} t{term if term is not None else '-'}] "
    system = event.get("log_system")
    if system in (None, "-"):
        system = f"{event.get('log_namespace', '-')}#{_level_name(event)}"
    text = eventAsText(event, includeTimestamp=True, includeSystem=False)
    stamp, _, rest = text.partition(" ")
    return f"{stamp} {prefix}[{system}] {rest}".rstrip("\n").replace("\n", "\n\t") + "\n"


@implementer(ILogObserver)
class NodeFileObserver:
    """Writes every event to ``out`` as text or JSON lines, with the node and term."""

    def __init__(self, out: IO[str], log_format: str = "text",
                 context: NodeLogContext = CONTEXT) -> None:
        if log_format not in ("text", "json"):
            raise ValueError(f"log format must be \"text\" or \"json\", not {log_format!r}")
        self.out = out
        self.log_format = log_format
        self.context = context

    def __call__(self, event: dict) -> None:
        try:
            if self.log_format == "json":
                line = event_as_json(event, self.context) + "\n"
            else:
                line = event_as_text(event, self.context)
        except Exception as e:  # a broken event must not silence the log
            line = f"unloggable event {event.get('log_format')!r}: {e!r}\n"
        self.out.write(line)
        flush = getattr(self.out, "flush", None)
        if flush is not None:
            flush()


def level_filter(observer: ILogObserver, environ: dict | None = None) -> ILogObserver:
    """``observer`` behind a level filter: ``info`` and up, or ``KVRAFT_LOG_LEVEL``."""
    env = os.environ if environ is None else environ
    name = env.get("KVRAFT_LOG_LEVEL", "info").strip().lower()
    try:
        level = LogLevel.levelWithName(name)
    except Exception:
        level = LogLevel.info
    return FilteringLogObserver(observer, [LogLevelFilterPredicate(defaultLogLevel=level)])


def observer_for(options: dict | None, log_format: str) -> ILogObserver | None:
    """The observer twistd should use, from its own options (``logfile``, ``nodaemon``,
    ``syslog``) and our ``log.format``; None to leave twistd's choice (syslog)."""
    options = options or {}
    if options.get("syslog"):
        return None
    logfile_name = options.get("logfile") or ""
    if logfile_name == "-" or (not logfile_name and options.get("nodaemon", True)):
        out: IO[str] = sys.stdout
    else:
        from twisted.python import logfile
        out = logfile.LogFile.fromFullPath(logfile_name or "twistd.log")
    return level_filter(NodeFileObserver(out, log_format))


def install(application, options: dict | None, log_format: str) -> bool:
    """Make twistd log through ``observer_for(options, log_format)``: sets the
    application's ``ILogObserver`` component, which twistd uses unless ``--logger`` names
    another. Returns whether it did."""
    observer = observer_for(options, log_format)
    if observer is None or not hasattr(application, "setComponent"):
        return False
    application.setComponent(ILogObserver, observer)
    return True


def json_stdout_observer() -> ILogObserver:
    """For ``twistd --logger kvraft.logs.json_stdout_observer``: JSON lines on stdout."""
    return level_filter(NodeFileObserver(sys.stdout, "json"))

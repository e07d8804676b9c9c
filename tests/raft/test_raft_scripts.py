"""Script-style interaction tests: tests/raft/testdata/*.txt hold commands and the
stable text they print (describe_ready / describe_message). Run with KVRAFT_REWRITE=1
to rewrite the expected output after an intended change, then review the diff.

A file is a sequence of blocks separated by blank lines::

    # comments
    command args...
    ----
    expected output (no blank lines)

Commands: ``cluster n1 n2 n3 [key=value...]``, ``campaign n1``, ``propose n1 data``,
``read-index n1 ctx``, ``transfer n1 n2`` (asked at n1, to n2), ``tick n1 [count]``,
``tick-all [count]``, ``stabilize``, ``partition n1 | n2 n3``, ``isolate n1``, ``heal``,
``restart n1``, ``compact n1``, ``status n1``, ``raft-log n1``, ``applied n1``.
"""

from __future__ import annotations

import os
import pathlib

import pytest
from raft_harness import Cluster

from kvraft.raft import ProposalDropped, describe_entry

TESTDATA = pathlib.Path(__file__).parent / "testdata"
REWRITE = os.environ.get("KVRAFT_REWRITE") == "1"


def parse_value(text: str):
    if text in ("true", "false"):
        return text == "true"
    try:
        return int(text)
    except ValueError:
        return text


class Script:
    """Runs commands against a Cluster and returns their text output."""

    def __init__(self):
        self.c: Cluster | None = None

    def run(self, line: str) -> list[str]:
        words = line.split()
        name, args = words[0], words[1:]
        handler = getattr(self, "do_" + name.replace("-", "_"), None)
        if handler is None:
            raise ValueError(f"unknown script command {name!r} in {line!r}")
        return handler(args) or ["ok"]

    def do_cluster(self, args):
        ids = [a for a in args if "=" not in a]
        overrides = dict(a.split("=", 1) for a in args if "=" in a)
        self.c = Cluster(ids, **{k: parse_value(v) for k, v in overrides.items()})
        self.c.trace = []

    def do_campaign(self, args):
        self.c.core(args[0]).campaign()

    def do_propose(self, args):
        try:
            self.c.core(args[0]).propose(" ".join(args[1:]).encode())
        except ProposalDropped as e:
            return [f"dropped: {e.reason}: {e}"]

    def do_read_index(self, args):
        try:
            self.c.core(args[0]).read_index(args[1].encode())
        except ProposalDropped as e:
            return [f"dropped: {e.reason}: {e}"]

    def do_transfer(self, args):
        self.c.core(args[0]).transfer_leadership(args[1])

    def do_tick(self, args):
        self.c.tick(args[0], int(args[1]) if len(args) > 1 else 1)

    def do_tick_all(self, args):
        for _ in range(int(args[0]) if args else 1):
            for node in self.c.ids:
                self.c.tick(node)

    def do_stabilize(self, args):
        self.c.trace = []
        self.c.stabilize()
        out, self.c.trace = self.c.trace, []
        return out

    def do_partition(self, args):
        groups = [g.split() for g in " ".join(args).split("|")]
        self.c.partition(*groups)

    def do_isolate(self, args):
        self.c.isolate(args[0])

    def do_heal(self, args):
        self.c.heal()

    def do_restart(self, args):
        self.c.restart(args[0])

    def do_compact(self, args):
        return [f"compacted {args[0]} to {self.c.compact(args[0])}"]

    def do_status(self, args):
        st = self.c.core(args[0]).status()
        out = [f"{st['id']}: {st['role'].value} term={st['term']} "
               f"lead={st['leader_id'] or 'None'} vote={st['vote'] or 'None'} "
               f"commit={st['commit_index']} applied={st['applied_index']} "
               f"last={st['last_index']}"]
        for node, pr in st.get("progress", {}).items():
            out.append(f"  {node}: match={pr['match']} next={pr['next']} {pr['state']}"
                       f" inflight={pr['inflight']}"
                       + (" learner" if pr["is_learner"] else "")
                       + (" paused" if pr["paused"] else ""))
        return out

    def do_raft_log(self, args):
        storage = self.c.storage[args[0]]
        ents = storage.entries(storage.first_index(), storage.last_index() + 1)
        return [describe_entry(e) for e in ents] or ["<empty log>"]

    def do_applied(self, args):
        return [describe_entry(e) for e in self.c.applied[args[0]]] or ["<nothing applied>"]


def parse_blocks(text: str) -> list[tuple[list[str], str, list[str]]]:
    """(comment lines, command, expected output lines) per block."""
    blocks = []
    for chunk in text.strip("\n").split("\n\n"):
        lines = chunk.split("\n")
        comments = [x for x in lines if x.startswith("#")]
        rest = [x for x in lines if not x.startswith("#")]
        if not rest:
            blocks.append((comments, "", []))
            continue
        if "----" not in rest:
            raise ValueError(f"block without '----': {chunk!r}")
        sep = rest.index("----")
        if sep != 1:
            raise ValueError(f"one command per block: {chunk!r}")
        blocks.append((comments, rest[0], rest[sep + 1:]))
    return blocks


def render(blocks) -> str:
    parts = []
    for comments, command, output in blocks:
        parts.append("\n".join(comments + ([command, "----"] + output if command else [])))
    return "\n\n".join(parts) + "\n"


@pytest.mark.parametrize("path", sorted(TESTDATA.glob("*.txt")), ids=lambda p: p.stem)
def test_script(path):
    blocks = parse_blocks(path.read_text())
    script = Script()
    actual = []
    for comments, command, expected in blocks:
        output = script.run(command) if command else []
        actual.append((comments, command, output))
        if not REWRITE:
            assert output == expected, (
                f"{path.name}: `{command}` printed:\n" + "\n".join(output)
                + "\n(rerun with KVRAFT_REWRITE=1 to accept)")
    if REWRITE:
        path.write_text(render(actual))


def test_script_files_exist():
    assert len(list(TESTDATA.glob("*.txt"))) >= 3


def test_script_parser_round_trips():
    text = "# a comment\ncluster n1\n----\nok\n\nstatus n1\n----\nn1: line\n"
    assert render(parse_blocks(text)) == text
    with pytest.raises(ValueError, match="----"):
        parse_blocks("status n1\nno separator\n")

"""The core stays pure: no I/O, clocks, threads or global randomness (DESIGN.md §1)."""

import ast
import pathlib

import kvraft.raft

FORBIDDEN = {"twisted", "socket", "time", "os", "random", "threading", "asyncio",
             "subprocess", "select"}
RAFT_DIR = pathlib.Path(kvraft.raft.__file__).parent


def imported_roots(path: pathlib.Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "id", "") == "__import__":
            roots.add("__import__")
    return roots


def test_purity_no_forbidden_imports_under_kvraft_raft():
    files = sorted(RAFT_DIR.rglob("*.py"))
    assert len(files) >= 10, "the core's modules were not found"
    offenders = {str(f.relative_to(RAFT_DIR)): sorted(imported_roots(f) & (FORBIDDEN | {
        "__import__"})) for f in files}
    assert {f: bad for f, bad in offenders.items() if bad} == {}


def test_purity_checker_catches_a_forbidden_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import os.path\nfrom time import monotonic\n")
    assert imported_roots(bad) & FORBIDDEN == {"os", "time"}

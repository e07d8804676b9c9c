"""Chaos runs of real clusters: the CI profile (in the default run, about 3 minutes),
the negative control (stale READONLY reads must be rejected), and the long profile
(5 nodes, 30 minutes of faults; ``--runslow``).

Each run keeps its directory (summary, history, timeline, node logs) under pytest's
tmp_path, and a failure message names it.
"""

import json

import pytest

from kvraft.testing.chaos import NEMESES, profile, run

pytestmark = pytest.mark.integration


def _explain(summary: dict) -> str:
    return json.dumps({"checks": summary["checks"], "files": summary["files"]},
                      indent=1, default=str)[:6000]


def test_ci_profile_passes_with_every_nemesis(tmp_path):
    summary = run(profile("ci", seed=1, out_dir=tmp_path / "ci"))
    assert summary["verdict"] == "pass", _explain(summary)
    assert set(summary["faults_by_kind"]) == set(NEMESES)
    ops = summary["operations"]
    # Enough work to mean something, and faults that really bit: some operations failed
    # or went unknown, and the checker looked at thousands.
    assert ops["ok"] > 5000 and ops["fail"] + ops["info"] > 50, ops
    assert summary["checks"]["linearizability"]["operations"] > 3000
    assert summary["checks"]["set"]["acknowledged"] > 500
    assert (tmp_path / "ci" / "timeline.png").read_bytes()[:4] == b"\x89PNG"
    assert len((tmp_path / "ci" / "history.jsonl").read_text().splitlines()) == \
        2 * ops["total"]


def test_stale_readonly_reads_under_partitions_are_rejected(tmp_path):
    """The harness can fail, with nothing unsafe switched on in the product: the same
    harness with clients reading through READONLY connections (a real feature: local,
    possibly stale reads) across partitions must be judged not linearizable."""
    summary = run(profile("ci", seed=5, out_dir=tmp_path / "readonly", duration_s=20.0,
                          nemeses=("partition-halves", "partition-leader"),
                          readonly_reads=True))
    lin = summary["checks"]["linearizability"]
    assert summary["linearizable"] is False, _explain(summary)
    assert not lin["unknown"] and "NOT linearizable" in lin["summary"]
    assert lin["operations_around_failure"], lin
    assert summary["verdict"] == "fail"


@pytest.mark.slow
def test_long_profile_passes(tmp_path):
    summary = run(profile("long", seed=7, out_dir=tmp_path / "long"))
    assert summary["verdict"] == "pass", _explain(summary)
    assert set(summary["faults_by_kind"]) == set(NEMESES)
    assert summary["config"]["nodes"] == 5

"""``kvraft bench suite``: each target judged on the median of ``--repeat`` runs, every run
kept. The runs are faked (``runner.run`` replaced): what is tested is the suite's
bookkeeping, not a cluster's speed."""

import json

import pytest

from kvraft.bench import runner, suite
from kvraft.bench.suite import Check, describe_check, judge


def _result(throughput: float, p50: float = 0.5, p99: float = 2.0) -> dict:
    """The parts of a ``runner.run`` result the suite reads and prints."""
    return {
        "workload": "set", "driver": "redis-benchmark",
        "options": {"clients": 50, "pipeline": 1, "value_bytes": 16, "keyspace": 100_000},
        "throughput_ops": throughput, "requests_ok": 1000, "errors": 0, "timeouts": 0,
        "elapsed_s": 1.0,
        "latency_ms": {"p50": p50, "p90": p50, "p99": p99, "p99.9": p99, "max": p99,
                       "mean": p50},
        "nodes": {}, "generator_cpu_s": 0.1,
        "machine": {"load_before": [0.0], "load_after": [0.0], "cpus": 2},
        "histogram": {"not": "kept in suite.json"}, "timeline": [],
    }


def test_a_target_is_judged_on_the_median_of_the_runs():
    at_least = Check("throughput_ops", ">=", 105)
    runs = [130, 110, 90, 140, 100]
    judged, = judge((at_least,), [_result(t) for t in runs])
    assert judged["values"] == runs
    assert judged["value"] == 110  # not the first, last, middle, best, worst or mean run
    assert judged["passed"] is True
    assert judged["runs_passed"] == 3


def test_a_median_below_the_bound_misses_even_if_one_run_met_it():
    at_most = Check("latency_ms.p50", "<=", 1.0)
    judged, = judge((at_most,), [_result(0, p50=0.9), _result(0, p50=1.4),
                                 _result(0, p50=1.2), _result(0, p50=2.0)])
    assert judged["value"] == pytest.approx(1.3)  # even count: the mean of the middle two
    assert judged["passed"] is False
    assert judged["runs_passed"] == 1
    assert "median 1.3 MISSED" in describe_check(judged)
    assert "met in 1 of 4" in describe_check(judged)


def test_one_run_reads_as_before():
    judged, = judge((Check("throughput_ops", ">=", 100),), [_result(120)])
    assert describe_check(judged) == "  target throughput_ops >= 100: 120 met"


def test_repeat_runs_each_test_and_keeps_every_run(tmp_path, monkeypatch, capsys):
    throughputs = iter([101_000, 104_000, 95_000])
    calls = []

    def fake_run(target, options, progress):
        calls.append(options)
        return _result(next(throughputs))

    monkeypatch.setattr(runner, "run", fake_run)
    code = suite.main(["--only", "set-pipelined", "--repeat", "3", "--target",
                       "127.0.0.1:1", "--out", str(tmp_path), "--no-chart", "--quiet"])
    assert code == 0
    assert len(calls) == 3 and {o.pipeline for o in calls} == {16}
    for run in (1, 2, 3):
        kept = json.loads((tmp_path / f"suite-set-pipelined-{run}.json").read_text())
        assert kept["histogram"]  # each run's own file is whole
    report = json.loads((tmp_path / "suite.json").read_text())
    assert report["repeat"] == 3
    entry, = report["tests"]
    assert [r["throughput_ops"] for r in entry["runs"]] == [101_000, 104_000, 95_000]
    assert all("histogram" not in r for r in entry["runs"])
    check, = entry["checks"]
    assert (check["value"], check["passed"], check["runs_passed"]) == (101_000, True, 2)
    assert "median 101000 met (runs 101000 / 104000 / 95000; met in 2 of 3)" in \
        capsys.readouterr().out


def test_repeat_wants_a_sensible_count(tmp_path):
    for count in ("0", str(suite.REPEAT_MAX + 1)):
        with pytest.raises(SystemExit) as exit_info:
            suite.main(["--repeat", count, "--target", "127.0.0.1:1", "--out",
                        str(tmp_path)])
        assert exit_info.value.code == 2


def test_the_suite_times_an_open_loop_beside_its_closed_ones():
    # What a change to batching costs requests that do not wait for answers (most
    # applications') shows only in an open loop: the suite runs one, with valid options.
    open_loops = [t for t in suite.tests(False) if t.options.rate > 0]
    assert [t.name for t in open_loops] == ["set-open-loop"]
    options = open_loops[0].options
    options.check()
    assert options.driver == "builtin" and options.pipeline == 1
    assert options.requests >= options.rate * 5  # long enough to see its tail
    assert any(t.options.rate == 0 for t in suite.tests(False))

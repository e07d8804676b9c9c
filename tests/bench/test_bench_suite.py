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


def _costly(throughput: float, machine_us: float, node_us: float) -> dict:
    """A run whose requests cost ``machine_us`` of the machine's CPU, ``node_us`` of n1's."""
    result = _result(throughput)
    result["nodes"] = {"n1": {"cpu_percent": 60.0, "cpu_s": 1.0, "rss_peak_mib": 70.0,
                              "cpu_us_per_op": node_us}}
    result["machine"]["cpu_us_per_op"] = machine_us
    result["cpu_ceiling"] = runner.cpu_ceiling(result["nodes"], machine_us, 2)
    return result


def test_each_test_shows_the_median_cpu_ceiling_of_its_runs(tmp_path, monkeypatch, capsys):
    runs = iter([_costly(10_000, 125.0, 50.0), _costly(10_000, 100.0, 62.5),
                 _costly(10_000, 160.0, 40.0)])
    monkeypatch.setattr(runner, "run", lambda target, options, progress: next(runs))
    assert suite.main(["--only", "set", "--repeat", "3", "--target", "127.0.0.1:1",
                       "--out", str(tmp_path), "--no-chart", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "  cpu ceiling: 16,000 ops/s for the machine (125.0 µs/op on 2 cpus), " \
        "20,000 ops/s for n1 (50.0 µs/op on one thread)\n" in out  # each run's own
    # The test's: machine 20,000 / 16,000 / 12,500; n1 20,000 / 16,000 / 25,000.
    assert "  cpu ceiling at the measured costs: machine 16,000 ops/s, busiest node " \
        "20,000 ops/s\n" in out
    report = json.loads((tmp_path / "suite.json").read_text())
    assert [r["cpu_ceiling"]["machine_ops"] for r in report["tests"][0]["runs"]] == [
        16_000, 20_000, 12_500]
    # Without /proc no cost is known: no ceiling, and no line for it.
    assert suite.describe_ceiling([_result(10_000), dict(_result(9_000), cpu_ceiling=None)]) \
        is None


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

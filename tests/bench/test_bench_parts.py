"""Parts of ``kvraft bench``: histogram, reply scanner, /proc parsing, redis-benchmark
output parsing, the PNG writer, and the built-in load generator against a tiny server."""

import os
import random
import socket
import struct
import threading
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvraft.bench import chart, cli, loadgen, procstat, rbench, runner
from kvraft.bench.histogram import Histogram

# -- histogram ---------------------------------------------------------------------------


def _exact_percentile(values, p):
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))  # ceil
    return ordered[int(rank) - 1]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10**9), min_size=1, max_size=300),
       st.sampled_from([50, 90, 99, 99.9, 100]))
def test_percentiles_are_within_the_bucket_precision(values, p):
    h = Histogram()
    h.record_many(values)
    exact = _exact_percentile(values, p)
    got = h.percentile(p)
    assert exact <= got <= max(exact, exact + exact // 64 + 1), (exact, got)
    assert h.min == min(values) and h.max == max(values) and h.count == len(values)


def test_buckets_are_contiguous_and_log_linear():
    h = Histogram(sub_bucket_bits=7)
    previous_high = -1
    for index in range(0, 2000):
        low, high = h.bounds(index)
        assert low == previous_high + 1, index
        assert h.index(low) == index and h.index(high) == index
        if low >= 128:
            assert (high - low + 1) / low <= 1 / 64
        previous_high = high


def test_merge_and_round_trip_through_a_dict():
    rng = random.Random(7)
    a, b, both = Histogram(), Histogram(), Histogram()
    for _ in range(1000):
        v = int(rng.expovariate(1 / 2000))
        (a if rng.random() < 0.5 else b).record(v)
        both.record(v)
    a.merge(Histogram.from_dict(b.to_dict()))
    assert a.to_dict() == both.to_dict()
    assert a.summary_ms()["p99"] == both.summary_ms()["p99"]


def test_an_empty_histogram_reports_zeros():
    assert Histogram().summary_ms() == {"p50": 0.0, "p90": 0.0, "p99": 0.0, "p99.9": 0.0,
                                        "max": 0.0, "min": 0.0, "mean": 0.0}


# -- RESP reply scanner ----------------------------------------------------------------------

REPLIES = [b"+OK\r\n", b"-ERR no\r\n", b":42\r\n", b"$-1\r\n", b"$5\r\nhe\r\no\r\n",
           b"$0\r\n\r\n", b"*2\r\n$1\r\na\r\n:1\r\n", b"*0\r\n"]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(REPLIES), min_size=1, max_size=20), st.data())
def test_scan_replies_counts_whatever_way_the_stream_is_cut(replies, data):
    stream = b"".join(replies)
    cut = data.draw(st.integers(min_value=0, max_value=len(stream)))
    n1, e1, end, _ = loadgen.scan_replies(stream[:cut])
    rest = stream[end:cut] + stream[cut:]
    n2, e2, end2, _ = loadgen.scan_replies(rest)
    assert n1 + n2 == len(replies)
    assert e1 + e2 == sum(r.startswith(b"-") for r in replies)
    assert end2 == len(rest)


def test_scan_replies_reports_the_first_error_text():
    assert loadgen.scan_replies(b"+OK\r\n-ERR busy\r\n-ERR x\r\n") == (3, 2, 24, b"ERR busy")


# -- /proc ---------------------------------------------------------------------------------


def test_stat_and_status_of_this_process():
    assert procstat.cpu_seconds(os.getpid()) >= 0.0
    rss, hwm = procstat.memory_kib(os.getpid())
    assert 0 < rss <= hwm
    assert procstat.cpu_seconds(2**22 + 12345) is None


def test_stat_parsing_survives_odd_command_names():
    fields = ["S"] + ["0"] * 10 + ["250", "150"] + ["0"] * 30
    line = b"1234 (a (weird) name) " + " ".join(fields).encode()
    assert procstat.parse_stat_cpu(line) == pytest.approx(400 / procstat.clock_ticks_per_s)


def test_machine_cpu_is_read_from_the_cpu_line_of_proc_stat():
    line = b"cpu  5183120 265044 723414 4129391 143556 0 240017 95441 0 0\n"
    assert procstat.parse_machine_cpu(line) == [5183120, 265044, 723414, 4129391, 143556,
                                                0, 240017, 95441]
    assert procstat.parse_machine_cpu(b"cpu 1 2 3 4 5 6 7") == [1, 2, 3, 4, 5, 6, 7, 0]
    with pytest.raises(ValueError, match="not the cpu line"):
        procstat.parse_machine_cpu(b"cpu0 1 2 3 4 5 6 7 8")
    ticks = procstat.machine_cpu_ticks()
    assert len(ticks) == len(procstat.MACHINE_CPU_FIELDS) and sum(ticks) > 0


def test_machine_cpu_percent_says_how_the_run_spent_the_machine():
    before = [1000, 0, 500, 4000, 100, 0, 50, 0]
    after = [1600, 0, 700, 4100, 120, 0, 80, 50]  # 1,000 ticks: 60% user, 5% steal
    shares = procstat.machine_cpu_percent(before, after)
    assert shares == {"user": 60.0, "nice": 0.0, "system": 20.0, "idle": 10.0,
                      "iowait": 2.0, "irq": 0.0, "softirq": 3.0, "steal": 5.0}
    assert procstat.machine_cpu_percent(None, after) is None  # no /proc: no figure
    assert procstat.machine_cpu_percent(after, after) is None  # no time passed


def test_the_machine_s_busy_time_leaves_out_idle_disk_waits_and_steal():
    before = [1000, 0, 500, 4000, 100, 0, 50, 0]
    after = [1600, 5, 700, 4100, 120, 1, 80, 50]  # user, nice, system, irq, softirq: 836
    assert procstat.machine_busy_s(before, after) == pytest.approx(
        836 / procstat.clock_ticks_per_s)
    assert procstat.machine_busy_s(None, after) is None


def test_the_cpu_ceiling_is_the_cores_over_what_a_request_costs():
    nodes = {"n1": {"cpu_us_per_op": 40.0}, "n2": {"cpu_us_per_op": 12.5},
             "n3": {"cpu_us_per_op": None}}
    # The machine: 2 cores / 125 µs per request; the busiest node: 1 core / 40 µs.
    assert runner.cpu_ceiling(nodes, 125.0, 2) == {"machine_ops": 16_000, "node": "n1",
                                                   "node_ops": 25_000}
    assert runner.cpu_ceiling({}, 125.0, 2) == {"machine_ops": 16_000}
    assert runner.cpu_ceiling(nodes, None, 2) == {"node": "n1", "node_ops": 25_000}
    assert runner.cpu_ceiling({"n3": {"cpu_us_per_op": None}}, None, 2) is None


def test_sampler_reports_cpu_and_memory():
    sampler = procstat.ProcSampler({"me": os.getpid()})
    sampler.sample()
    sum(i * i for i in range(200_000))  # some CPU
    sampler.sample(0.5)
    figures = sampler.to_dict(1.0)["me"]
    assert figures["cpu_s"] > 0 and figures["rss_peak_mib"] > 0
    assert len(figures["cpu_series"]) == 1


def test_each_node_reports_its_cpu_per_answered_request():
    nodes = runner.with_cpu_per_op({"n1": {"cpu_s": 2.5}, "n2": {"cpu_s": 0.5}}, 50_000)
    assert nodes["n1"]["cpu_us_per_op"] == 50.0 and nodes["n2"]["cpu_us_per_op"] == 10.0
    assert runner.cpu_us_per_op(1.0, 0) is None  # nothing answered: no figure


def test_the_summary_shows_cpu_per_request_beside_cpu_time():
    node = {"cpu_percent": 62.0, "cpu_s": 11.1, "rss_peak_mib": 118.0,
            "cpu_us_per_op": 55.5}
    result = {"workload": "set", "driver": "redis-benchmark", "leader": "n1",
              "options": {"clients": 50, "pipeline": 1, "value_bytes": 16,
                          "keyspace": 100_000},
              "throughput_ops": 10_000.0, "requests_ok": 200_000, "errors": 0,
              "timeouts": 0, "elapsed_s": 20.0,
              "latency_ms": {"p50": 4.0, "p90": 8.0, "p99": 9.0, "p99.9": 12.0,
                             "max": 20.0, "mean": 5.0},
              "nodes": {"n1": node, "n2": dict(node, cpu_us_per_op=None)},
              "generator_cpu_s": 3.5, "generator_cpu_us_per_op": 17.5,
              "machine": {"load_before": [1.0], "load_after": [2.0], "cpus": 2}}
    lines = cli.summary(result).splitlines()
    assert "n1* cpu  62.0% (11.1 s, 55.5 µs/op)" in lines[3]
    assert "n2  cpu  62.0% (11.1 s)  rss" in lines[4]
    assert "load generator cpu 3.5 s, 17.5 µs/op" in lines[5]
    assert len(lines) == 6  # no machine CPU shares known: no line for them
    result["machine"]["cpu_percent"] = {"user": 55.0, "nice": 0.0, "system": 20.0,
                                        "idle": 10.0, "iowait": 2.0, "irq": 0.0,
                                        "softirq": 3.0, "steal": 5.0}
    assert cli.summary(result).splitlines()[6] == (
        "  machine cpu user 55.0%  system 20.0%  softirq 3.0%  idle 10.0%  iowait 2.0%  "
        "steal 5.0%")
    assert len(cli.summary(result).splitlines()) == 7  # no ceiling known: no line for it
    result["machine"]["cpu_us_per_op"] = 125.0
    result["cpu_ceiling"] = runner.cpu_ceiling(result["nodes"], 125.0, 2)
    assert cli.summary(result).splitlines()[7] == (
        "  cpu ceiling: 16,000 ops/s for the machine (125.0 µs/op on 2 cpus), "
        "18,018 ops/s for n1 (55.5 µs/op on one thread)")


# -- redis-benchmark output --------------------------------------------------------------------

RBENCH_OUTPUT = b"""SET: rps=0.0 (overall: -nan) avg_msec=-nan (overall: -nan)\r\
SET: rps=4171.3 (overall: 4171.3) avg_msec=0.462 (overall: 0.462)\r
====== SET ======
  2000 requests completed in 0.45 seconds
  2 parallel clients

Latency by percentile distribution:
0.000% <= 0.039 milliseconds (cumulative count 95)
50.000% <= 0.111 milliseconds (cumulative count 1067)
99.000% <= 4.231 milliseconds (cumulative count 1985)
100.000% <= 7.711 milliseconds (cumulative count 2000)

Cumulative distribution of latencies:
48.700% <= 0.103 milliseconds (cumulative count 974)

Summary:
  throughput summary: 4424.78 requests per second
"""


def test_redis_benchmark_report_becomes_our_histogram():
    result = rbench.parse_output(RBENCH_OUTPUT, ["redis-benchmark"], [])
    h = result.histogram
    assert h.count == 2000 and result.requests == 2000
    assert result.throughput == pytest.approx(4424.78)
    assert h.percentile(50) == 111
    assert h.max == 7711
    assert 4200 <= h.percentile(99) <= 4300


def test_redis_benchmark_command_line():
    argv = rbench.command_line("127.0.0.1", 7000, "set", 50, 16, 1000, 16, 100)
    assert argv[:7] == ["redis-benchmark", "-h", "127.0.0.1", "-p", "7000", "-t", "set"]
    assert "-P" in argv and argv[argv.index("-P") + 1] == "16"


# -- the PNG writer ----------------------------------------------------------------------------


def _png_chunks(data: bytes):
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos = 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF
        yield kind, body
        pos += 12 + length


def test_chart_is_a_valid_png_with_the_lines_drawn(tmp_path):
    panels = [chart.Panel("throughput (ops/s)", [chart.Series("ops/s", [(1, 10), (2, 30)])]),
              chart.Panel("latency (ms)", [chart.Series("p99", [(1, 2.5), (2, 1.0)])])]
    path = tmp_path / "c.png"
    chart.write_chart(str(path), "test 1", panels)
    chunks = dict(_png_chunks(path.read_bytes()))
    width, height, depth, color = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert (depth, color) == (8, 2)
    raw = zlib.decompress(chunks[b"IDAT"])
    assert len(raw) == height * (1 + 3 * width)
    blue = bytes(chart.SERIES_COLORS[0])
    assert raw.count(blue) > 50, "the series line is drawn"


def test_nice_ticks_cover_the_range():
    ticks = chart.nice_ticks(0, 93_457, 5)
    assert ticks[0] == 0 and ticks[-1] >= 93_457 and len(ticks) <= 8
    assert chart.format_tick(20_000) == "20k" and chart.format_tick(2.5) == "2.5"


# -- the built-in load generator against a tiny server -----------------------------------------


class _TinyRedis:
    """Answers SET with +OK, GET with the value set (or nil), READONLY with +OK."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.data = {}
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        buf = b""
        with conn:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
                out = []
                while True:
                    parsed = _parse_command(buf)
                    if parsed is None:
                        break
                    args, buf = parsed
                    name = args[0].upper()
                    with self.lock:
                        if name == b"SET":
                            self.data[args[1]] = args[2]
                            out.append(b"+OK\r\n")
                        elif name == b"GET":
                            v = self.data.get(args[1])
                            out.append(b"$-1\r\n" if v is None else b"$%d\r\n%s\r\n" % (len(v), v))
                        else:
                            out.append(b"+OK\r\n")
                conn.sendall(b"".join(out))

    def close(self):
        self.sock.close()


def _parse_command(buf: bytes):
    if not buf.startswith(b"*"):
        return None
    nl = buf.find(b"\r\n")
    if nl < 0:
        return None
    count, pos, args = int(buf[1:nl]), nl + 2, []
    for _ in range(count):
        nl = buf.find(b"\r\n", pos)
        if nl < 0:
            return None
        size = int(buf[pos + 1:nl])
        if len(buf) < nl + 2 + size + 2:
            return None
        args.append(buf[nl + 2:nl + 2 + size])
        pos = nl + 2 + size + 2
    return args, buf[pos:]


@pytest.fixture
def tiny():
    server = _TinyRedis()
    yield server
    server.close()


def test_fill_sets_every_key_once(tiny):
    spec = loadgen.LoadSpec("127.0.0.1", tiny.port, workload="fill", clients=4, pipeline=8,
                            keyspace=101, value_bytes=3, requests=0, duration_s=0)
    result = loadgen.run(spec)
    assert result.ok == 101 and result.errors == 0
    assert sorted(tiny.data) == [b"key:%012d" % i for i in range(101)]
    assert set(tiny.data.values()) == {b"xxx"}


@pytest.mark.parametrize("workload", ["set", "get-readonly", "mixed"])
def test_a_counted_run_answers_every_request(tiny, workload):
    ticks = []
    spec = loadgen.LoadSpec("127.0.0.1", tiny.port, workload=workload, clients=6, pipeline=4,
                            keyspace=50, requests=600, procs=2)
    result = loadgen.run(spec, lambda elapsed, done: ticks.append(done))
    assert result.ok == 600 and result.errors == 0 and result.timeouts == 0
    assert result.histogram.count == 600
    assert sum(p["ops"] for p in result.timeline) == 600
    assert result.throughput > 0


def _serve_one_connection(reply) -> socket.socket:
    """A loopback server for one connection that calls ``reply(conn, data)`` for each
    read; the listening socket (close it at the end)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)

    def serve():
        conn, _ = server.accept()
        with conn:
            while data := conn.recv(65536):
                reply(conn, data)

    threading.Thread(target=serve, daemon=True).start()
    return server


def test_error_replies_are_counted_and_sampled():
    server = _serve_one_connection(lambda conn, data: conn.sendall(b"-ERR nope\r\n"))
    spec = loadgen.LoadSpec("127.0.0.1", server.getsockname()[1], workload="set",
                            clients=1, pipeline=1, requests=20)
    result = loadgen.run(spec)
    server.close()
    assert result.errors == 20 and result.ok == 0
    assert result.error_samples and "ERR nope" in result.error_samples[0]


def test_an_open_loop_sends_at_its_arrival_times_not_as_fast_as_answers_come(tiny):
    spec = loadgen.LoadSpec("127.0.0.1", tiny.port, workload="set", clients=4, keyspace=50,
                            requests=200, procs=2, rate=1000.0)
    result = loadgen.run(spec)
    assert result.ok == 200 and result.errors == 0 and result.timeouts == 0
    assert result.histogram.count == 200
    # Each worker's last request arrives at the sum of its Poisson gaps (seeded): the
    # run cannot end before the later of the two, however fast the server answers.
    last_arrival_s = 0.0
    for wid in range(2):
        gap = random.Random(spec.seed * 7919 + wid).expovariate
        last_arrival_s = max(last_arrival_s,
                             sum(int(gap(spec.rate / 2) * 1e9) for _ in range(100)) / 1e9)
    assert result.elapsed_s >= last_arrival_s > 0.05


def test_an_open_loop_counts_the_time_a_request_waits_for_a_connection():
    delay_s = 0.03
    waited_share = 0.9  # the arrivals span a few ms: the last one waits nearly 4 answers

    def slowly(conn, data):  # one request at a time, each answered after delay_s
        for _ in range(data.count(b"*3\r\n")):
            threading.Event().wait(delay_s)
            conn.sendall(b"+OK\r\n")

    server = _serve_one_connection(slowly)
    # Five requests arrive within a few ms on one connection: all but the first wait
    # for it, and their latency counts the wait, as an application would see it.
    spec = loadgen.LoadSpec("127.0.0.1", server.getsockname()[1], workload="set",
                            clients=1, requests=5, rate=2000.0)
    result = loadgen.run(spec)
    server.close()
    assert result.ok == 5 and result.waited >= 3
    assert result.histogram.percentile(100) >= 4 * delay_s * 1e6 * waited_share


@pytest.mark.parametrize("changes, message", [
    ({"rate": -1.0}, "rate must be 0"),
    ({"rate": float("nan")}, "rate must be 0"),
    ({"rate": 100.0, "pipeline": 4}, "one request per arrival"),
])
def test_an_open_loop_spec_is_checked(changes, message):
    spec = loadgen.LoadSpec("127.0.0.1", 1, requests=10, **changes)
    with pytest.raises(ValueError, match=message):
        spec.check()


def test_an_open_loop_runs_on_the_built_in_generator():
    opts = runner.RunOptions(workload="set", requests=1000, rate=500.0)
    opts.check()
    assert opts.chosen_driver() == "builtin"
    with pytest.raises(ValueError, match="closed loop"):
        runner.RunOptions(driver="redis-benchmark", rate=500.0).check()
    with pytest.raises(ValueError, match="drop --pipeline"):
        runner.RunOptions(driver="builtin", rate=500.0, pipeline=16).check()


def test_an_open_loop_worker_with_no_requests_to_send_ends_at_once(tiny):
    # One request over two clients in two processes: the second worker's share is none.
    spec = loadgen.LoadSpec("127.0.0.1", tiny.port, workload="set", clients=2, keyspace=5,
                            requests=1, procs=2, rate=1000.0)
    result = loadgen.run(spec)
    assert result.ok == 1 and result.errors == 0 and result.timeouts == 0

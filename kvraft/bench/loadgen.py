"""The built-in load generator: many connections, pipelining, several processes.

Used for what redis-benchmark cannot do (READONLY reads, a read/write mix, filling a
key space with every key once) and as a check on it. Each worker process drives its
connections with plain blocking sockets and one ``selectors`` loop: a connection sends
``pipeline`` requests at once and sends the next batch when all their replies arrived,
as redis-benchmark does. Every reply of a batch is timed from the moment the batch was
sent to the moment the reply was read. Latencies go into a log-linear histogram per
process and per second (``kvraft.bench.histogram``); the parent merges them.

Keys are ``key:%012d`` like redis-benchmark's ``-r``, so the two drivers share data;
values are ``value_bytes`` of ``x``.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import random
import selectors
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from kvraft.bench.histogram import Histogram

WORKLOADS = ("set", "get", "get-readonly", "mixed", "fill")
drain_timeout_s = 10.0
"""After the end of a run, how long outstanding replies are awaited (then: errors)."""
connect_timeout_s = 5.0
recv_bytes_max = 256 * 1024


@dataclass
class LoadSpec:
    """What to run. ``requests`` (total) or ``duration_s`` ends the run."""

    host: str
    port: int
    workload: str = "set"
    clients: int = 50
    pipeline: int = 1
    value_bytes: int = 16
    keyspace: int = 100_000
    read_ratio: float = 0.9  # "mixed": share of GETs
    requests: int = 0
    duration_s: float = 10.0
    procs: int = 1
    seed: int = 1
    targets: list[tuple[str, int]] = field(default_factory=list)  # spread clients over these

    def check(self) -> None:
        """Raise ValueError naming the bad field."""
        if self.workload not in WORKLOADS:
            raise ValueError(f"unknown workload {self.workload!r}; use one of "
                             f"{', '.join(WORKLOADS)}")
        for name in ("clients", "pipeline", "value_bytes", "keyspace", "procs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.procs > self.clients:
            raise ValueError(f"procs ({self.procs}) cannot exceed clients ({self.clients})")
        if self.workload != "fill" and not self.requests and self.duration_s <= 0:
            raise ValueError("give a number of requests or a duration")
        if not 0.0 <= self.read_ratio <= 1.0:
            raise ValueError("read_ratio must be between 0 and 1")


@dataclass
class LoadResult:
    """Merged figures of all worker processes."""

    histogram: Histogram
    ok: int
    errors: int
    timeouts: int
    elapsed_s: float
    timeline: list[dict]  # one entry per second: t, ops, errors, p50/p99 ms
    error_samples: list[str]

    @property
    def throughput(self) -> float:
        """Successful replies per second over the run."""
        return self.ok / self.elapsed_s if self.elapsed_s > 0 else 0.0


# -- requests and replies -------------------------------------------------------------------


def command(*args: bytes) -> bytes:
    """One RESP multibulk request."""
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


class RequestMaker:
    """Encodes the requests of a workload (random keys, or every key in turn for fill)."""

    def __init__(self, spec: LoadSpec, rng: random.Random, first_key: int = 0,
                 key_step: int = 1):
        self.rng = rng
        self.keyspace = spec.keyspace
        self.read_ratio = spec.read_ratio
        value = b"x" * spec.value_bytes
        self._set_tail = b"\r\n$%d\r\n%s\r\n" % (len(value), value)
        self.workload = spec.workload
        self._next_key = first_key
        self._key_step = key_step

    def next(self) -> bytes:
        """The next request."""
        w = self.workload
        if w == "fill":
            key = self._next_key
            self._next_key += self._key_step
            return b"*3\r\n$3\r\nSET\r\n$16\r\nkey:%012d" % key + self._set_tail
        key = self.rng.randrange(self.keyspace)
        if w == "set" or (w == "mixed" and self.rng.random() >= self.read_ratio):
            return b"*3\r\n$3\r\nSET\r\n$16\r\nkey:%012d" % key + self._set_tail
        return b"*2\r\n$3\r\nGET\r\n$16\r\nkey:%012d\r\n" % key

    def exhausted(self) -> bool:
        """Fill only: every key was sent."""
        return self.workload == "fill" and self._next_key >= self.keyspace


def scan_replies(buf: bytes, pos: int = 0) -> tuple[int, int, int, bytes | None]:
    """Count the complete RESP2 replies in ``buf[pos:]``.

    Returns ``(replies, errors, end, first_error)``: ``end`` is where the first
    incomplete reply starts (keep ``buf[end:]`` for the next read).
    """
    replies = errors = 0
    first_error = None
    end = len(buf)
    while pos < end:
        stop = _reply_end(buf, pos, end)
        if stop < 0:
            break
        if buf[pos] == 45:  # "-"
            errors += 1
            if first_error is None:
                first_error = bytes(buf[pos + 1:stop - 2])
        replies += 1
        pos = stop
    return replies, errors, pos, first_error


def _reply_end(buf: bytes, pos: int, end: int) -> int:
    """Where the reply at ``pos`` ends, or -1 if it is incomplete."""
    nl = buf.find(b"\r\n", pos)
    if nl < 0:
        return -1
    kind = buf[pos]
    if kind in (43, 45, 58):  # "+", "-", ":"
        return nl + 2
    if kind == 36:  # "$"
        size = int(buf[pos + 1:nl])
        if size < 0:
            return nl + 2
        stop = nl + 2 + size + 2
        return stop if stop <= end else -1
    if kind == 42:  # "*"
        count = int(buf[pos + 1:nl])
        at = nl + 2
        for _ in range(max(count, 0)):
            at = _reply_end(buf, at, end) if at < end else -1
            if at < 0:
                return -1
        return at
    raise ValueError(f"not a RESP2 reply: {bytes(buf[pos:pos + 20])!r}")


# -- one worker process ---------------------------------------------------------------------


class _Conn:
    __slots__ = ("sock", "buf", "outstanding", "sent_ns", "quota", "maker")

    def __init__(self, sock: socket.socket, maker: RequestMaker, quota: int):
        self.sock = sock
        self.buf = b""
        self.outstanding = 0
        self.sent_ns = 0
        self.quota = quota  # requests left to send; -1: until the deadline
        self.maker = maker


def _connect(host: str, port: int, readonly: bool) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=connect_timeout_s)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if readonly:
        sock.sendall(command(b"READONLY"))
        reply = sock.recv(64)
        if not reply.startswith(b"+OK"):
            raise ConnectionError(f"READONLY was answered {reply!r}")
    sock.settimeout(None)
    return sock


def _worker(spec_dict: dict, wid: int, nconns: int, first_conn: int, counter, out) -> None:
    spec = LoadSpec(**spec_dict)
    targets = spec.targets or [(spec.host, spec.port)]
    rng = random.Random(spec.seed * 1000 + wid)
    sel = selectors.DefaultSelector()
    conns: list[_Conn] = []
    for i in range(nconns):
        n = first_conn + i
        host, port = targets[n % len(targets)]
        if spec.workload == "fill":
            maker = RequestMaker(spec, rng, first_key=n, key_step=spec.clients)
            quota = -1
        else:
            maker = RequestMaker(spec, rng)
            quota = -1
            if spec.requests:
                share, extra = divmod(spec.requests, spec.clients)
                quota = share + (1 if n < extra else 0)
        conn = _Conn(_connect(host, port, spec.workload == "get-readonly"), maker, quota)
        conns.append(conn)
        sel.register(conn.sock, selectors.EVENT_READ, conn)
    hist = Histogram()
    per_second: dict[int, list] = {}  # second -> [ops, errors, Histogram]
    ok = errors = timeouts = 0
    error_samples: list[str] = []
    start_ns = time.perf_counter_ns()
    deadline_ns = start_ns + int(spec.duration_s * 1e9) if not spec.requests and \
        spec.workload != "fill" else 0
    pipeline = spec.pipeline

    def send(c: _Conn) -> None:
        if deadline_ns and time.perf_counter_ns() >= deadline_ns:
            return
        n = pipeline if c.quota < 0 else min(pipeline, c.quota)
        if c.maker.workload == "fill":
            batch = []
            while len(batch) < n and not c.maker.exhausted():
                batch.append(c.maker.next())
            n = len(batch)
        else:
            batch = [c.maker.next() for _ in range(n)]
        if not n:
            return
        if c.quota > 0:
            c.quota -= n
        c.outstanding = n
        c.sent_ns = time.perf_counter_ns()
        c.sock.sendall(b"".join(batch))

    for c in conns:
        send(c)
    active = sum(1 for c in conns if c.outstanding)
    last_publish = start_ns
    drain_until = 0
    while active:
        events = sel.select(timeout=0.05)
        now = time.perf_counter_ns()
        if now - last_publish > 200_000_000:
            counter[wid] = ok + errors
            last_publish = now
        if deadline_ns and now >= deadline_ns and not drain_until:
            drain_until = now + int(drain_timeout_s * 1e9)
        if drain_until and now >= drain_until:
            timeouts = sum(c.outstanding for c in conns)
            break
        for key, _ in events:
            c = key.data
            try:
                data = c.sock.recv(recv_bytes_max)
            except OSError as e:
                data = b""
                error_samples.append(f"connection error: {e}")
            if not data:
                errors += c.outstanding
                c.outstanding = 0
                sel.unregister(c.sock)
                c.sock.close()
                active -= 1
                if len(error_samples) < 5:
                    error_samples.append("the server closed a connection")
                continue
            buf = c.buf + data if c.buf else data
            replies, errs, end, first_error = scan_replies(buf)
            c.buf = buf[end:]
            if not replies:
                continue
            latency_us = (now - c.sent_ns) // 1000
            if replies > errs:
                hist.record(latency_us, replies - errs)
            second = (now - start_ns) // 1_000_000_000
            slot = per_second.get(second)
            if slot is None:
                slot = per_second[second] = [0, 0, Histogram()]
            slot[0] += replies - errs
            slot[1] += errs
            if replies > errs:
                slot[2].record(latency_us, replies - errs)
            ok += replies - errs
            errors += errs
            if first_error is not None and len(error_samples) < 5:
                error_samples.append(first_error.decode("utf-8", "replace"))
            c.outstanding -= replies
            if c.outstanding <= 0:
                c.outstanding = 0
                send(c)
                if not c.outstanding:
                    active -= 1
    elapsed_s = (time.perf_counter_ns() - start_ns) / 1e9
    counter[wid] = ok + errors
    for c in conns:
        try:
            c.sock.close()
        except OSError:
            pass
    out.send({"histogram": hist.to_dict(), "ok": ok, "errors": errors, "timeouts": timeouts,
              "elapsed_s": elapsed_s, "error_samples": error_samples,
              "per_second": {s: [v[0], v[1], v[2].to_dict()] for s, v in per_second.items()}})
    out.close()


# -- the coordinator --------------------------------------------------------------------------


def run(spec: LoadSpec, on_tick: Callable[[float, int], None] | None = None) -> LoadResult:
    """Run ``spec`` in ``spec.procs`` processes; ``on_tick(elapsed_s, replies_so_far)``
    is called about once a second (progress, process sampling)."""
    spec.check()
    ctx = multiprocessing.get_context("fork")
    counter = ctx.Array("q", spec.procs, lock=False)
    workers = []
    share, extra = divmod(spec.clients, spec.procs)
    first = 0
    for wid in range(spec.procs):
        nconns = share + (1 if wid < extra else 0)
        receiver, sender = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_worker, args=(asdict(spec), wid, nconns, first, counter,
                                                 sender), daemon=True)
        proc.start()
        sender.close()
        workers.append((proc, receiver))
        first += nconns
    started = time.monotonic()
    results = []
    pending = list(workers)
    next_tick = started + 1.0
    while pending:
        timeout = max(0.0, next_tick - time.monotonic())
        ready = multiprocessing.connection.wait([r for _, r in pending], timeout=timeout)
        for receiver in ready:
            try:
                results.append(receiver.recv())
            except EOFError:
                results.append(None)
            pending = [(p, r) for p, r in pending if r is not receiver]
        if time.monotonic() >= next_tick:
            next_tick += 1.0
            if on_tick is not None:
                on_tick(time.monotonic() - started, sum(counter))
    for proc, _ in workers:
        proc.join(timeout=5)
    if any(r is None for r in results):
        raise RuntimeError("a load generator process died; is the server reachable?")
    return _merge(results)


def _merge(results: list[dict]) -> LoadResult:
    hist = Histogram()
    ok = errors = timeouts = 0
    elapsed = 0.0
    samples: list[str] = []
    seconds: dict[int, list] = {}
    for r in results:
        hist.merge(Histogram.from_dict(r["histogram"]))
        ok += r["ok"]
        errors += r["errors"]
        timeouts += r["timeouts"]
        elapsed = max(elapsed, r["elapsed_s"])
        samples.extend(r["error_samples"])
        for second, (n, errs, h) in r["per_second"].items():
            slot = seconds.setdefault(int(second), [0, 0, Histogram()])
            slot[0] += n
            slot[1] += errs
            slot[2].merge(Histogram.from_dict(h))
    timeline = []
    for second in sorted(seconds):
        n, errs, h = seconds[second]
        timeline.append({"t": second + 1, "ops": n, "errors": errs,
                         "p50_ms": h.percentile(50) / 1000.0,
                         "p99_ms": h.percentile(99) / 1000.0})
    return LoadResult(hist, ok, errors, timeouts, elapsed, timeline, samples[:5])

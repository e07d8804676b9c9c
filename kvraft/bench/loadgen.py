"""The built-in load generator: many connections, pipelining, several processes.

Used for what redis-benchmark cannot do (READONLY reads, a read/write mix, filling a
key space with every key once) and as a check on it. Each worker process drives its
connections with plain blocking sockets and one ``selectors`` loop: a connection sends
``pipeline`` requests at once and sends the next batch when all their replies arrived,
as redis-benchmark does (a closed loop). Every reply of a batch is timed from the moment
the batch was sent to the moment the reply was read. Latencies go into a log-linear
histogram per process and per second (``kvraft.bench.histogram``); the parent merges
them.

With a ``rate`` the load is an open loop instead, as most applications are to a database:
requests arrive at random (Poisson) times at that rate whatever the answers do, each
takes the idle connection answered last (as a client's connection pool does), and
waits for one when none is idle. Latency is counted from when the request arrived, not
from when it was sent, so time queued for a connection counts (the coordinated omission
a closed loop hides).

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
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from kvraft.bench.histogram import Histogram

WORKLOADS = ("set", "get", "get-readonly", "mixed", "fill")
drain_timeout_s = 10.0
"""After the end of a run, how long outstanding replies are awaited (then: errors)."""
connect_timeout_s = 5.0
recv_bytes_max = 256 * 1024
select_timeout_s = 0.05
"""The longest a worker waits for replies before it looks at the clock again."""
progress_every_ns = 200_000_000
"""How often a worker publishes its count of replies for the progress line."""


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
    rate: float = 0.0  # open loop: requests per second in all (Poisson); 0: closed loop

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
        if not self.rate >= 0.0:  # NaN too
            raise ValueError("rate must be 0 (a closed loop) or a number of requests per "
                             "second")
        if self.rate and (self.pipeline != 1 or self.workload == "fill"):
            raise ValueError("an open loop (rate) sends one request per arrival: use "
                             "pipeline 1, and not with fill")


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
    waited: int = 0  # open loop: arrivals that found no idle connection and queued

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


class _Tally:
    """One worker's figures: a latency histogram, one per second, counts, error texts."""

    def __init__(self, start_ns: int, counter, wid: int):
        self.start_ns = start_ns
        self._counter, self.wid = counter, wid  # shared with the parent: progress
        self._published_ns = start_ns
        self.hist = Histogram()
        self.per_second: dict[int, list] = {}  # second -> [ops, errors, Histogram]
        self.ok = self.errors = self.timeouts = self.waited = 0
        self.error_samples: list[str] = []

    def replies(self, c: _Conn, now: int) -> int:
        """Count the complete replies in what ``c`` has read, timed from ``c.sent_ns``;
        how many there were."""
        replies, errs, end, first_error = scan_replies(c.buf)
        c.buf = c.buf[end:]
        if not replies:
            return 0
        good = replies - errs
        latency_us = (now - c.sent_ns) // 1000
        second = (now - self.start_ns) // 1_000_000_000
        slot = self.per_second.get(second)
        if slot is None:
            slot = self.per_second[second] = [0, 0, Histogram()]
        if good:
            self.hist.record(latency_us, good)
            slot[2].record(latency_us, good)
        slot[0] += good
        slot[1] += errs
        self.ok += good
        self.errors += errs
        if first_error is not None and len(self.error_samples) < 5:
            self.error_samples.append(first_error.decode("utf-8", "replace"))
        c.outstanding = max(c.outstanding - replies, 0)
        return replies

    def read(self, c: _Conn, sel: selectors.BaseSelector) -> bool:
        """Read what ``c`` has into ``c.buf``; False (``c`` closed and counted) when
        the connection ended."""
        try:
            data = c.sock.recv(recv_bytes_max)
        except OSError as e:
            data = b""
            self.error_samples.append(f"connection error: {e}")
        if data:
            c.buf = c.buf + data if c.buf else data
            return True
        self.errors += c.outstanding
        c.outstanding = 0
        sel.unregister(c.sock)
        c.sock.close()
        if len(self.error_samples) < 5:
            self.error_samples.append("the server closed a connection")
        return False

    def publish(self, now: int, force: bool = False) -> None:
        """Tell the parent how many replies came, every ``progress_every_ns``."""
        if force or now - self._published_ns > progress_every_ns:
            self._counter[self.wid] = self.ok + self.errors
            self._published_ns = now

    def to_dict(self, elapsed_s: float) -> dict:
        return {"histogram": self.hist.to_dict(), "ok": self.ok, "errors": self.errors,
                "timeouts": self.timeouts, "waited": self.waited, "elapsed_s": elapsed_s,
                "error_samples": self.error_samples,
                "per_second": {s: [v[0], v[1], v[2].to_dict()]
                               for s, v in self.per_second.items()}}


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
    start_ns = time.perf_counter_ns()
    deadline_ns = start_ns + int(spec.duration_s * 1e9) if not spec.requests and \
        spec.workload != "fill" else 0
    tally = _Tally(start_ns, counter, wid)
    if spec.rate:
        _open_loop(spec, conns, sel, tally, deadline_ns)
    else:
        _closed_loop(spec, conns, sel, tally, deadline_ns)
    end_ns = time.perf_counter_ns()
    elapsed_s = (end_ns - start_ns) / 1e9
    tally.publish(end_ns, force=True)
    for c in conns:
        try:
            c.sock.close()
        except OSError:
            pass
    out.send(tally.to_dict(elapsed_s))
    out.close()


def _closed_loop(spec: LoadSpec, conns: list[_Conn], sel, tally: _Tally,
                 deadline_ns: int) -> None:
    """Each connection sends ``pipeline`` requests, and again when all are answered."""
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
    drain_until = 0
    while active:
        events = sel.select(timeout=select_timeout_s)
        now = time.perf_counter_ns()
        tally.publish(now)
        if deadline_ns and now >= deadline_ns and not drain_until:
            drain_until = now + int(drain_timeout_s * 1e9)
        if drain_until and now >= drain_until:
            tally.timeouts = sum(c.outstanding for c in conns)
            break
        for key, _ in events:
            c = key.data
            if not tally.read(c, sel):
                active -= 1
                continue
            if tally.replies(c, now) and not c.outstanding:
                send(c)
                if not c.outstanding:
                    active -= 1


def _open_loop(spec: LoadSpec, conns: list[_Conn], sel, tally: _Tally,
               deadline_ns: int) -> None:
    """Requests arrive at Poisson times (this worker's share of ``spec.rate``), each on
    the idle connection answered last, or queued until one is idle; each is timed from
    its arrival."""
    gap_s = random.Random(spec.seed * 7919 + tally.wid).expovariate
    rate = spec.rate * len(conns) / spec.clients
    quota = sum(c.quota for c in conns) if spec.requests else -1
    idle = list(conns)
    queued: deque[int] = deque()  # arrival times of requests waiting for a connection

    def send(c: _Conn, arrived_ns: int) -> None:
        c.outstanding = 1
        c.sent_ns = arrived_ns
        c.sock.sendall(c.maker.next())

    next_ns = tally.start_ns + int(gap_s(rate) * 1e9)
    arriving = quota != 0  # a worker may have no share of a small request count
    drain_until = 0
    while True:
        now = time.perf_counter_ns()
        while arriving and next_ns <= now:
            if idle:
                send(idle.pop(), next_ns)
            else:
                queued.append(next_ns)
                tally.waited += 1
            quota -= 1
            next_ns += int(gap_s(rate) * 1e9)
            arriving = quota != 0 and not (deadline_ns and next_ns >= deadline_ns)
        busy = len(conns) - len(idle)
        if not arriving and not queued and not busy:
            break
        if not arriving and not drain_until:
            drain_until = now + int(drain_timeout_s * 1e9)
        if drain_until and now >= drain_until:
            tally.timeouts = busy + len(queued)
            break
        tally.publish(now)
        wait_s = (next_ns - now) / 1e9 if arriving else select_timeout_s
        for key, _ in sel.select(timeout=min(max(wait_s, 0.0), select_timeout_s)):
            c = key.data
            if not tally.read(c, sel):
                conns.remove(c)
                if c in idle:
                    idle.remove(c)
                continue
            if tally.replies(c, time.perf_counter_ns()) and not c.outstanding:
                if queued:
                    send(c, queued.popleft())
                else:
                    idle.append(c)
        if not conns:
            tally.errors += len(queued)
            break


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
    ok = errors = timeouts = waited = 0
    elapsed = 0.0
    samples: list[str] = []
    seconds: dict[int, list] = {}
    for r in results:
        hist.merge(Histogram.from_dict(r["histogram"]))
        ok += r["ok"]
        errors += r["errors"]
        timeouts += r["timeouts"]
        waited += r["waited"]
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
    return LoadResult(hist, ok, errors, timeouts, elapsed, timeline, samples[:5], waited)

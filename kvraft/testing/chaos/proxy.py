"""A controllable TCP proxy for peer links: one listening port per directed link.

Peer links are one TCP connection per direction (``kvraft.peer.transport``): node A
dials B to send A's messages to B. The chaos harness gives A a configuration in which
B's address is this proxy's port for the link ``A->B``, and the proxy forwards to B's
real peer port. TLS passes through untouched, so both ends still check each other's
certificate and node id. Per link, the proxy can

* **block** it, in one of two ways:

  - ``hold`` (the default): like a network that silently drops packets while TCP
    retransmits. Bytes stop moving both ways, open connections stay open, and new
    connections are accepted but not forwarded. On heal, what was held is delivered,
    late and in order (Raft must cope with stale messages).
  - ``reset``: like a firewall that rejects. Open connections are aborted (RST) and
    new ones are accepted and aborted at once, so the dialer sees its link fail and
    redials with backoff.

* **slow** it: every chunk of bytes is delivered ``delay_s +- jitter_s`` after it
  arrived, never before an earlier chunk of the same direction (TCP keeps order, so
  jitter delays but never reorders).

Blocking the link ``A->B`` is a one-way partition at the Raft level: A's messages do
not reach B, while B's messages to A travel on ``B->A``, a different link.

Flow control: reading from a side pauses while the link holds, while the other side
is not connected yet, and while more than ``pipe_bytes_max`` bytes wait in one
direction's delay queue or the destination's send buffer is full; so the proxy's
memory per connection is bounded and back-pressure reaches the sending node.

The proxy runs as its own process (``python -m kvraft.testing.chaos.proxy``) with a
Twisted reactor, so the harness' client threads never add latency to peer traffic. It
reads JSON commands on stdin, one per line, and answers each with one JSON line on
stdout (see ``ProxyServer.handle``). ``ProxyProcess`` is the harness' side of it.
"""

from __future__ import annotations

import json
import os
import random
import select
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.protocols.basic import LineReceiver
from zope.interface import implementer

HOLD = "hold"
RESET = "reset"
MODES = (HOLD, RESET)

pipe_bytes_max = 4 * 1024 * 1024
"""Bytes one direction of one connection may queue (delay queue) before the proxy stops
reading from the sender."""
upstream_connect_timeout_s = 5.0
"""How long the proxy tries to reach the target before closing the dialer's connection."""
command_timeout_s = 10.0
"""How long ``ProxyProcess`` waits for an answer to one command."""


class LinkProxy:
    """One directed link: a listening port that forwards to ``target``, with the link's
    fault state (blocked or not, how, and its delay)."""

    def __init__(self, name: str, target: tuple[str, int], reactor,
                 rng: random.Random | None = None):
        self.name = name
        self.target = target
        self.reactor = reactor
        self.rng = rng or random.Random()
        self.blocked = False
        self.mode = HOLD
        self.delay_s = 0.0
        self.jitter_s = 0.0
        self.connections: set[ProxyConnection] = set()
        self.port = None  # the listening port, once listening
        self.stats = {"accepted": 0, "upstream_failed": 0, "reset": 0,
                      "bytes_forwarded": 0}

    def factory(self) -> Factory:
        """The server factory to listen with."""
        link = self

        class _Accept(Factory):
            def buildProtocol(self, addr):
                return ProxyConnection(link).down

        return _Accept()

    def configure(self, blocked: bool | None = None, mode: str | None = None,
                  delay_s: float | None = None, jitter_s: float | None = None) -> None:
        """Change the link's state; the change applies to open connections at once."""
        if mode is not None:
            if mode not in MODES:
                raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
            self.mode = mode
        if delay_s is not None:
            if delay_s < 0:
                raise ValueError(f"delay_s must be >= 0, not {delay_s}")
            self.delay_s = delay_s
        if jitter_s is not None:
            if jitter_s < 0:
                raise ValueError(f"jitter_s must be >= 0, not {jitter_s}")
            self.jitter_s = jitter_s
        if blocked is not None:
            self.blocked = blocked
        for conn in list(self.connections):
            if self.blocked and self.mode == RESET:
                conn.abort()
            else:
                conn.update()

    def chunk_delay_s(self) -> float:
        """How long the next chunk waits: ``delay_s`` plus uniform jitter, never < 0."""
        if self.delay_s == 0 and self.jitter_s == 0:
            return 0.0
        return max(0.0, self.delay_s + self.rng.uniform(-self.jitter_s, self.jitter_s))

    def describe(self) -> dict[str, Any]:
        """The link's state and counters, for the ``stats`` command."""
        return {"name": self.name, "blocked": self.blocked, "mode": self.mode,
                "delay_ms": round(self.delay_s * 1000, 3),
                "jitter_ms": round(self.jitter_s * 1000, 3),
                "connections": len(self.connections), **self.stats}


@implementer(IPushProducer)
class _Side(Protocol):
    """One TCP side of a proxied connection: ``down`` (accepted from the dialing node)
    or ``up`` (our connection to the target). It is also the producer registered with
    its own transport, so the transport tells it when its send buffer is full."""

    def __init__(self, conn: ProxyConnection, role: str):
        self.conn = conn
        self.role = role
        self.connected = False
        self.lost = False
        self.reading = True  # the transport reads until we pause it
        self.send_full = False  # our transport's send buffer is full

    def connectionMade(self) -> None:
        self.connected = True
        self.transport.registerProducer(self, True)
        self.conn.side_made(self)

    def dataReceived(self, data: bytes) -> None:
        self.conn.received(self, data)

    def connectionLost(self, reason=None) -> None:
        self.connected = False
        self.lost = True
        self.conn.side_lost(self)

    # The transport calls these about its *send* buffer.
    def pauseProducing(self) -> None:
        self.send_full = True
        self.conn.update()

    def resumeProducing(self) -> None:
        self.send_full = False
        self.conn.update()

    def stopProducing(self) -> None:
        pass

    def set_reading(self, wanted: bool) -> None:
        if self.transport is None or self.lost or wanted == self.reading:
            return
        self.reading = wanted
        if wanted:
            self.transport.resumeProducing()
        else:
            self.transport.pauseProducing()


class _Pipe:
    """One direction of a proxied connection: chunks waiting for their delivery time."""

    def __init__(self, conn: ProxyConnection, src: _Side, dst: _Side):
        self.conn = conn
        self.src = src
        self.dst = dst
        self.queue: deque[tuple[float, bytes]] = deque()
        self.queued_bytes = 0
        self.last_due = 0.0
        self.timer = None
        self.eof = False  # the source is gone: close the destination once drained

    def push(self, data: bytes) -> None:
        link = self.conn.link
        now = link.reactor.seconds()
        due = max(now + link.chunk_delay_s(), self.last_due)
        self.last_due = due
        self.queue.append((due, data))
        self.queued_bytes += len(data)
        self.flush()

    def congested(self) -> bool:
        return self.queued_bytes > pipe_bytes_max or self.dst.send_full

    def flush(self) -> None:
        """Write every chunk that is due, unless the link holds; re-arm the timer."""
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        if self.conn.held() or not self.dst.connected:
            return
        link = self.conn.link
        now = link.reactor.seconds()
        wrote = False
        while self.queue and self.queue[0][0] <= now:
            _, data = self.queue.popleft()
            self.queued_bytes -= len(data)
            link.stats["bytes_forwarded"] += len(data)
            self.dst.transport.write(data)
            wrote = True
        if wrote:
            self.conn.update_reading()  # the queue may have room again
        if self.queue:
            self.timer = link.reactor.callLater(self.queue[0][0] - now, self.flush)
        elif self.eof:
            self.dst.transport.loseConnection()

    def cancel(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None


class ProxyConnection:
    """An accepted connection (``down``) and its forwarded twin (``up``)."""

    def __init__(self, link: LinkProxy):
        self.link = link
        self.down = _Side(self, "down")
        self.up = _Side(self, "up")
        self.to_up = _Pipe(self, self.down, self.up)
        self.to_down = _Pipe(self, self.up, self.down)
        self.dialing = False
        self.closed = False

    def held(self) -> bool:
        return self.link.blocked and self.link.mode == HOLD

    def side_made(self, side: _Side) -> None:
        if self.closed:  # e.g. our dial completed after the dialer went away
            side.transport.abortConnection()
            return
        if side is self.down:
            self.link.connections.add(self)
            self.link.stats["accepted"] += 1
            if self.link.blocked and self.link.mode == RESET:
                self.abort()
                return
        self.update()

    def _dial(self) -> None:
        self.dialing = True
        conn = self

        class _Dial(ClientFactory):
            def buildProtocol(self, addr):
                return conn.up

            def clientConnectionFailed(self, connector, reason):
                conn.link.stats["upstream_failed"] += 1
                conn.close()

        host, port = self.link.target
        self.link.reactor.connectTCP(host, port, _Dial(), timeout=upstream_connect_timeout_s)

    def received(self, side: _Side, data: bytes) -> None:
        (self.to_up if side is self.down else self.to_down).push(data)
        self.update()

    def update(self) -> None:
        """Re-derive what each side may do from the link's state and the buffers."""
        if self.closed:
            return
        held = self.held()
        if not held and not self.dialing and not self.up.connected and self.down.connected:
            self._dial()
        self.update_reading()
        if not held:
            self.to_up.flush()
            self.to_down.flush()

    def update_reading(self) -> None:
        """Read from a side only if both are connected, the link does not hold, and the
        direction it feeds has room."""
        if self.closed:
            return
        both = self.down.connected and self.up.connected
        held = self.held()
        self.down.set_reading(both and not held and not self.to_up.congested())
        self.up.set_reading(both and not held and not self.to_down.congested())

    def side_lost(self, side: _Side) -> None:
        other = self.up if side is self.down else self.down
        pipe = self.to_up if side is self.down else self.to_down
        if not other.connected:
            self._forget()
            return
        # Deliver what the closed side sent before it went (after its delay), then close.
        pipe.eof = True
        pipe.flush()

    def abort(self) -> None:
        """RST both sides now (``reset`` mode)."""
        self.link.stats["reset"] += 1
        self.close(abort=True)

    def close(self, abort: bool = False) -> None:
        for side in (self.down, self.up):
            if side.connected and side.transport is not None:
                if abort:
                    side.transport.abortConnection()
                else:
                    side.transport.loseConnection()
        self._forget()

    def _forget(self) -> None:
        self.closed = True
        self.to_up.cancel()
        self.to_down.cancel()
        self.link.connections.discard(self)


class ProxyServer:
    """The links of one proxy process and the commands that change them."""

    def __init__(self, reactor, seed: int = 0, host: str = "127.0.0.1"):
        self.reactor = reactor
        self.rng = random.Random(seed)
        self.host = host
        self.links: dict[str, LinkProxy] = {}

    def add(self, name: str, target: tuple[str, int], listen_port: int = 0) -> int:
        """Listen for link ``name`` on ``listen_port`` (0: any free port); forward to
        ``target``. Returns the port."""
        if name in self.links:
            raise ValueError(f"link {name!r} exists already")
        link = LinkProxy(name, (target[0], int(target[1])), self.reactor,
                         random.Random(self.rng.random()))
        link.port = self.reactor.listenTCP(listen_port, link.factory(), interface=self.host)
        self.links[name] = link
        return link.port.getHost().port

    def select(self, names: Iterable[str] | str) -> list[LinkProxy]:
        """Links by name; ``"*"`` for all of them."""
        if names == "*":
            return list(self.links.values())
        unknown = [n for n in names if n not in self.links]
        if unknown:
            raise ValueError(f"unknown link(s) {', '.join(unknown)}; known: "
                             f"{', '.join(sorted(self.links))}")
        return [self.links[n] for n in names]

    def handle(self, command: dict[str, Any]) -> dict[str, Any]:
        """Run one command; the answer is ``{"ok": true, ...}`` or ``{"ok": false,
        "error": ...}``. Commands (``op``):

        * ``add``: ``name``, ``target`` [host, port], optional ``listen`` port -> ``port``
        * ``set``: ``links`` (names or ``"*"``), any of ``blocked``, ``mode``,
          ``delay_ms``, ``jitter_ms``
        * ``heal``: every link unblocked, no delay
        * ``stats``: ``links``: each link's state and counters
        """
        op = command.get("op")
        try:
            if op == "add":
                port = self.add(command["name"], tuple(command["target"]),
                                int(command.get("listen", 0)))
                return {"ok": True, "port": port}
            if op == "set":
                delay = command.get("delay_ms")
                jitter = command.get("jitter_ms")
                for link in self.select(command.get("links", "*")):
                    link.configure(
                        blocked=command.get("blocked"), mode=command.get("mode"),
                        delay_s=None if delay is None else delay / 1000.0,
                        jitter_s=None if jitter is None else jitter / 1000.0)
                return {"ok": True}
            if op == "heal":
                for link in self.links.values():
                    link.configure(blocked=False, delay_s=0.0, jitter_s=0.0)
                return {"ok": True}
            if op == "stats":
                return {"ok": True, "links": [link.describe() for link in
                                              self.links.values()]}
        except (KeyError, TypeError, ValueError) as e:
            return {"ok": False, "error": f"{op}: {e!s}"}
        return {"ok": False, "error": f"unknown op {op!r}; expected add, set, heal or stats"}


class _Control(LineReceiver):
    """JSON commands on stdin, JSON answers on stdout."""

    delimiter = b"\n"
    MAX_LENGTH = 1 << 20

    def __init__(self, server: ProxyServer):
        self.server = server

    def lineReceived(self, line: bytes) -> None:
        try:
            command = json.loads(line)
            answer = self.server.handle(command) if isinstance(command, dict) else {
                "ok": False, "error": "a command is a JSON object"}
        except ValueError as e:
            answer = {"ok": False, "error": f"not JSON: {e}"}
        self.sendLine(json.dumps(answer).encode())

    def connectionLost(self, reason=None) -> None:
        # The harness went away (stdin closed): nothing controls us any more.
        reactor = self.server.reactor
        if reactor.running:
            reactor.stop()


def main(argv: list[str] | None = None) -> int:
    """Run a proxy process controlled over stdin/stdout (see the module docstring)."""
    import argparse

    from twisted.internet import reactor, stdio
    parser = argparse.ArgumentParser(prog="python -m kvraft.testing.chaos.proxy")
    parser.add_argument("--seed", type=int, default=0, help="seed of the jitter")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    args = parser.parse_args(argv)
    server = ProxyServer(reactor, seed=args.seed, host=args.host)
    stdio.StandardIO(_Control(server))
    reactor.run()
    return 0


class ProxyError(RuntimeError):
    """The proxy process refused a command, died, or did not answer in time."""


class ProxyProcess:
    """The harness' handle on a proxy process: start it, send commands, stop it."""

    def __init__(self, python: str | None = None, seed: int = 0,
                 log_path: Path | None = None, host: str = "127.0.0.1"):
        self.host = host
        self._log = open(log_path, "ab") if log_path is not None else subprocess.DEVNULL
        self.process = subprocess.Popen(
            [python or sys.executable, "-m", "kvraft.testing.chaos.proxy",
             "--seed", str(seed), "--host", host],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
            start_new_session=True)
        self._buffer = b""

    def request(self, command: dict[str, Any], timeout_s: float = command_timeout_s) -> dict:
        """Send one command and return its answer; ``ProxyError`` if it failed."""
        if self.process.poll() is not None:
            raise ProxyError(f"the proxy process exited with {self.process.returncode}")
        self.process.stdin.write(json.dumps(command).encode() + b"\n")
        self.process.stdin.flush()
        line = self._read_line(timeout_s)
        answer = json.loads(line)
        if not answer.get("ok"):
            raise ProxyError(f"the proxy refused {command.get('op')}: {answer.get('error')}")
        return answer

    def _read_line(self, timeout_s: float) -> bytes:
        deadline = time.monotonic() + timeout_s
        fd = self.process.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ProxyError(f"the proxy did not answer within {timeout_s} s")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise ProxyError("the proxy process closed its output (did it crash?)")
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def add(self, name: str, target: tuple[str, int]) -> int:
        """A new link ``name`` forwarding to ``target``; returns its listening port."""
        return int(self.request({"op": "add", "name": name, "target": list(target)})["port"])

    def set(self, links: Iterable[str] | str, **state: Any) -> None:
        """Change links' state: ``blocked``, ``mode``, ``delay_ms``, ``jitter_ms``."""
        self.request({"op": "set", "links": links if links == "*" else list(links), **state})

    def heal(self) -> None:
        """Unblock every link and remove every delay."""
        self.request({"op": "heal"})

    def stats(self) -> list[dict[str, Any]]:
        """Each link's state and counters."""
        return self.request({"op": "stats"})["links"]

    def close(self) -> None:
        """Stop the process (closing its stdin stops it; kill it if it lingers)."""
        if self.process.poll() is None:
            try:
                self.process.stdin.close()
                self.process.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait(timeout=5)
        if self._log is not subprocess.DEVNULL:
            self._log.close()


if __name__ == "__main__":
    sys.exit(main())

"""A small blocking RESP client over mutual TLS, and how the harness reads its outcomes.

Why not redis-py: its connection pool retries a command after a timeout or a dropped
connection, and a retried write that had already taken effect would take effect twice
while the history recorded it once. The harness must know exactly what it sent: one
command per call, no retries, and a clear line between "nothing was sent" and "sent,
outcome unknown".

Outcomes (``classify``), as the checker needs them (``kvraft.client.errors``):

* ``ok``: a reply that is not an error.
* ``fail``, the command certainly did not take effect: ``-CLUSTERDOWN`` (no leader,
  nothing proposed), ``-ERR server busy`` (refused before proposing), a failed connect
  or TLS handshake (nothing was sent).
* ``info``, unknown: ``-TIMEOUT``, a connection that broke or timed out after the
  command was sent, and any other error (the harness reports those separately: the
  product should not answer them to well-formed commands).
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

OK, FAIL, INFO = "ok", "fail", "info"

reply_bytes_max = 64 * 1024 * 1024
"""Largest bulk reply believed (a final read of a set key is the largest we expect)."""


class ConnectError(Exception):
    """The TCP connect or the TLS handshake failed: no command was sent."""


class OutcomeLostError(Exception):
    """The command was (maybe) sent, but no complete reply came back."""


class ErrorReply(str):
    """An error reply (``-CODE detail``), kept as a value so the caller classifies it."""

    @property
    def code(self) -> str:
        return self.split(" ", 1)[0]


def tls_context(cert_dir: Path, identity: str = "client") -> ssl.SSLContext:
    """A client context trusting the cluster CA and presenting ``identity``'s
    certificate. The harness passes the node id as ``server_hostname``, so the node's
    SAN ``DNS:<node id>`` is checked as a real client would."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH,
                                         cafile=str(cert_dir / "ca.pem"))
    context.load_cert_chain(str(cert_dir / f"{identity}.pem"),
                            str(cert_dir / f"{identity}-key.pem"))
    return context


class RespClient:
    """One connection; ``call`` sends one command and waits for its reply.

    After ``OutcomeLostError`` the connection is closed; ``call`` reconnects lazily, and a
    failed reconnect raises ``ConnectError``.
    """

    def __init__(self, host: str, port: int, context: ssl.SSLContext | None = None,
                 server_hostname: str | None = None, timeout_s: float = 10.0,
                 connect_timeout_s: float = 2.0, readonly: bool = False):
        self.host = host
        self.port = port
        self.context = context
        self.server_hostname = server_hostname
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.readonly = readonly
        self._sock: socket.socket | None = None
        self._reader = None

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def connect(self) -> None:
        """Open the connection (and send READONLY if asked); ``ConnectError`` if not."""
        self.close()
        try:
            sock = socket.create_connection((self.host, self.port),
                                            timeout=self.connect_timeout_s)
        except OSError as e:
            raise ConnectError(f"connect: {e}") from None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.context is not None:
                sock = self.context.wrap_socket(sock, server_hostname=self.server_hostname)
            sock.settimeout(self.timeout_s)
        except (OSError, ssl.SSLError) as e:
            sock.close()
            raise ConnectError(f"tls: {e}") from None
        self._sock = sock
        self._reader = sock.makefile("rb")
        if self.readonly:
            try:
                reply = self._exchange([b"READONLY"])
            except OutcomeLostError as e:
                raise ConnectError(f"readonly: {e}") from None
            if reply != "OK":
                self.close()
                raise ConnectError(f"READONLY answered {reply!r}")

    def call(self, *args: bytes | str | int) -> object:
        """Send one command; its reply (``ErrorReply`` for an error reply)."""
        if self._sock is None:
            self.connect()
        return self._exchange([a if isinstance(a, bytes) else str(a).encode() for a in args])

    def _exchange(self, args: list[bytes]) -> object:
        payload = b"*%d\r\n" % len(args) + b"".join(
            b"$%d\r\n%s\r\n" % (len(a), a) for a in args)
        try:
            self._sock.sendall(payload)
            return read_reply(self._reader)
        except (OSError, ssl.SSLError, ValueError, ConnectionError) as e:
            self.close()
            raise OutcomeLostError(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__) \
                from None

    def close(self) -> None:
        """Close the connection (idempotent)."""
        for thing in (self._reader, self._sock):
            if thing is not None:
                try:
                    thing.close()
                except OSError:
                    pass
        self._sock = self._reader = None


def read_reply(reader) -> object:
    """One RESP2 reply from a binary file object. Iterative for arrays (no recursion
    on data from the network)."""
    stack: list[tuple[list, int]] = []
    while True:
        value = _read_scalar(reader)
        if isinstance(value, _ArrayHeader):
            if value.length <= 0:
                value = [] if value.length == 0 else None
            else:
                stack.append(([], value.length))
                continue
        while stack:
            items, length = stack[-1]
            items.append(value)
            if len(items) < length:
                break
            stack.pop()
            value = items
        else:
            return value


class _ArrayHeader:
    __slots__ = ("length",)

    def __init__(self, length: int):
        self.length = length


def _read_scalar(reader) -> object:
    line = reader.readline(65536)
    if not line.endswith(b"\r\n"):
        raise ConnectionError("the connection closed mid-reply" if not line or
                              len(line) < 65536 else "a reply line is too long")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        return ErrorReply(rest.decode(errors="replace"))
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        if n > reply_bytes_max:
            raise ValueError(f"a bulk reply of {n} bytes is over {reply_bytes_max}")
        data = reader.read(n + 2)
        if len(data) != n + 2:
            raise ConnectionError("the connection closed mid-reply")
        return data[:-2]
    if kind == b"*":
        return _ArrayHeader(int(rest))
    raise ValueError(f"unexpected reply line {line[:80]!r}")


def classify(reply: object) -> tuple[str, str | None]:
    """``(outcome, error text or None)`` for a reply (see the module docstring)."""
    if not isinstance(reply, ErrorReply):
        return OK, None
    if reply.code == "CLUSTERDOWN" or reply.startswith("ERR server busy"):
        return FAIL, str(reply)
    return INFO, str(reply)


def is_expected_error(error: str | None) -> bool:
    """Errors a healthy cluster gives under faults (anything else is worth reporting)."""
    if error is None:
        return True
    return error.startswith(("CLUSTERDOWN", "TIMEOUT", "ERR server busy", "connect:",
                             "tls:", "readonly:", "lost:"))

"""The small sd_notify protocol: datagrams to $NOTIFY_SOCKET (systemd Type=notify).

Without NOTIFY_SOCKET (not under systemd) every call is a no-op.
"""

from __future__ import annotations

import os
import socket

from twisted.application.service import Service
from twisted.internet.task import LoopingCall


def notify(state: str, environ: dict | None = None) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``); True if a socket was there to send it to."""
    env = os.environ if environ is None else environ
    address = env.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        s.connect(address)
        s.sendall(state.encode())
    return True


def watchdog_interval_s(environ: dict | None = None) -> float | None:
    """Half of WATCHDOG_USEC (systemd's advice), if the watchdog is on for this process."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2_000_000
    except ValueError:
        return None


class NotifyService(Service):
    """Says READY=1 once the node is serving, pings the watchdog, says STOPPING=1."""

    name = "sd-notify"

    def __init__(self, is_healthy=lambda: True, environ: dict | None = None, clock=None):
        self.environ = environ
        self.is_healthy = is_healthy
        self._watchdog = LoopingCall(self._ping)
        if clock is not None:
            self._watchdog.clock = clock

    def ready(self, status: str = "serving") -> None:
        """Called once the node has loaded its state and its listeners listen."""
        notify(f"READY=1\nSTATUS={status}", self.environ)
        interval = watchdog_interval_s(self.environ)
        if interval and not self._watchdog.running:
            self._watchdog.start(interval, now=False)

    def _ping(self) -> None:
        # A wedged reactor stops pinging by itself; is_healthy guards the subtler cases.
        if self.is_healthy():
            notify("WATCHDOG=1", self.environ)

    def stopService(self):
        if self._watchdog.running:
            self._watchdog.stop()
        notify("STOPPING=1", self.environ)
        return super().stopService()

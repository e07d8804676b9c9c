"""sd_notify against a fake NOTIFY_SOCKET, and the unit file under systemd-analyze."""

import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from kvraft import sdnotify


@pytest.fixture
def fake_systemd(tmp_path):
    path = tmp_path / "notify.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(path))
    s.settimeout(2)
    yield s, {"NOTIFY_SOCKET": str(path)}
    s.close()


def test_no_socket_is_a_no_op():
    assert sdnotify.notify("READY=1", {}) is False


def test_ready_and_stopping_are_sent(fake_systemd):
    sock, env = fake_systemd
    service = sdnotify.NotifyService(environ=env, clock=Clock())
    service.startService()
    service.ready("serving as n1")
    assert sock.recv(1024) == b"READY=1\nSTATUS=serving as n1"
    service.stopService()
    assert sock.recv(1024) == b"STOPPING=1"


def test_abstract_socket_address():
    name = f"kvraft-test-{id(object())}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0" + name)
    s.settimeout(2)
    try:
        assert sdnotify.notify("READY=1", {"NOTIFY_SOCKET": "@" + name})
        assert s.recv(100) == b"READY=1"
    finally:
        s.close()


def test_watchdog_pings_at_half_the_interval_while_healthy(fake_systemd):
    sock, env = fake_systemd
    env = dict(env, WATCHDOG_USEC="4000000")
    clock = Clock()
    healthy = [True]
    service = sdnotify.NotifyService(is_healthy=lambda: healthy[0], environ=env, clock=clock)
    service.startService()
    service.ready()
    assert sock.recv(1024).startswith(b"READY=1")
    clock.advance(2.0)
    assert sock.recv(1024) == b"WATCHDOG=1"
    healthy[0] = False
    clock.advance(2.0)
    sock.settimeout(0.2)
    with pytest.raises(TimeoutError):
        sock.recv(1024)
    service.stopService()


def test_watchdog_for_another_pid_is_ignored():
    assert sdnotify.watchdog_interval_s({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}) is None
    assert sdnotify.watchdog_interval_s({"WATCHDOG_USEC": "1000000"}) == 0.5


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not here")
def test_unit_file_verifies(tmp_path):
    unit = Path(__file__).parent.parent / "systemd" / "kvraft@.service"
    target = tmp_path / "kvraft@n1.service"
    target.write_text(unit.read_text())
    out = subprocess.run(["systemd-analyze", "verify", str(target)], capture_output=True,
                         text=True, timeout=60)
    # Missing users/binaries on a build machine are warnings; syntax errors are not.
    assert out.returncode == 0, out.stderr
    assert "Unknown key" not in out.stderr and "Invalid" not in out.stderr, out.stderr

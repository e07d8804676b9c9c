"""Headless Chromium driven over the DevTools protocol on a pipe (no websocket package,
no Playwright): ``--remote-debugging-pipe`` reads JSON commands, each ended by a NUL
byte, from file descriptor 3 and writes replies and events the same way to fd 4.

Usage::

    with Chromium(tmp_path / "profile") as browser:
        page = browser.new_page(width=1280, height=900)
        page.navigate("http://127.0.0.1:9101/")
        page.wait_for("document.body.dataset.updates > 0")
        png = page.screenshot()
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--hide-scrollbars", "--remote-debugging-pipe",
]
reply_timeout_s = 30.0
message_bytes_max = 64 * 1024 * 1024  # a full-page PNG in base64 fits easily


def find_chromium() -> str | None:
    """Debian's chromium (apt-get install chromium), or another on PATH."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class CDPError(RuntimeError):
    """A DevTools command failed, or the browser went away."""


class Chromium:
    """One headless browser process with a fresh profile in ``user_data_dir``."""

    def __init__(self, user_data_dir: str | os.PathLike, executable: str | None = None):
        self.executable = executable or find_chromium()
        if self.executable is None:
            raise CDPError("chromium not found: apt-get install -y chromium")
        self.user_data_dir = Path(user_data_dir)
        self._next_id = 0
        self._buffer = b""
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> Chromium:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        self.user_data_dir.mkdir(parents=True, exist_ok=True)
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def child_fds():  # runs in the child between fork and exec
            os.dup2(to_browser_r, 3)
            os.dup2(from_browser_w, 4)

        self.process = subprocess.Popen(
            [self.executable, *CHROMIUM_FLAGS, f"--user-data-dir={self.user_data_dir}",
             "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=open(self.user_data_dir / "chromium.log", "ab"),
            preexec_fn=child_fds, close_fds=False, start_new_session=True)
        os.close(to_browser_r)
        os.close(from_browser_w)

    def close(self) -> None:
        if self.process is None:
            return
        try:
            self.call("Browser.close", timeout_s=5)
        except Exception:
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
        self.process = None

    # -- the protocol ------------------------------------------------------------------

    def call(self, method: str, params: dict | None = None, session: str | None = None,
             timeout_s: float = reply_timeout_s) -> dict:
        """Send one command and return its result (events in between are dropped)."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout_s
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise CDPError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise CDPError("no reply from chromium in time")
            ready, _, _ = select.select([self._from_browser], [], [], left)
            if not ready:
                continue
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise CDPError(f"chromium exited; see {self.user_data_dir / 'chromium.log'}")
            self._buffer += chunk
            if len(self._buffer) > message_bytes_max:
                raise CDPError("a DevTools message over message_bytes_max")
        raw, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(raw)

    def new_page(self, width: int = 1280, height: int = 900) -> Page:
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget",
                            {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session)
        page.call("Page.enable")
        page.call("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        return page


class Page:
    """One tab, addressed by its DevTools session."""

    def __init__(self, browser: Chromium, session: str):
        self.browser = browser
        self.session = session

    def call(self, method: str, params: dict | None = None, **kwargs) -> dict:
        return self.browser.call(method, params, session=self.session, **kwargs)

    def navigate(self, url: str) -> None:
        result = self.call("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise CDPError(f"navigating to {url}: {result['errorText']}")

    def evaluate(self, expression: str):
        """The JSON value of ``expression`` evaluated in the page."""
        result = self.call("Runtime.evaluate", {"expression": expression,
                                                "returnByValue": True})
        if "exceptionDetails" in result:
            raise CDPError(f"{expression}: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float = 20.0, interval_s: float = 0.1):
        """Poll ``expression`` until it is truthy; returns its value."""
        deadline = time.monotonic() + timeout_s
        value = None
        while time.monotonic() < deadline:
            try:
                value = self.evaluate(expression)
            except CDPError:
                value = None  # the page is still loading
            if value:
                return value
            time.sleep(interval_s)
        raise AssertionError(f"{expression!r} still {value!r} after {timeout_s} s")

    def screenshot(self) -> bytes:
        """A PNG of the viewport."""
        data = self.call("Page.captureScreenshot", {"format": "png"})["data"]
        return base64.b64decode(data)

"""A minimal Chrome DevTools Protocol client over ``--remote-debugging-pipe`` (no
websocket package, no browser download): drives Debian's ``chromium`` headless."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser() -> str | None:
    """The first Chromium-family executable on PATH (``$EMOBRIDGE_CHROMIUM`` first)."""
    env = os.environ.get("EMOBRIDGE_CHROMIUM")
    if env and Path(env).exists():
        return env
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


class PipeBrowser:
    """Headless Chromium speaking CDP on file descriptors 3 (commands) and 4 (replies)."""

    def __init__(self, executable: str, profile: Path) -> None:
        to_child_r, self._write = os.pipe()
        self._read, from_child_w = os.pipe()

        def wire() -> None:  # in the child: its fds 3 and 4 are the pipe ends
            high_r = fcntl.fcntl(to_child_r, fcntl.F_DUPFD, 20)
            high_w = fcntl.fcntl(from_child_w, fcntl.F_DUPFD, 20)
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)

        self.proc = subprocess.Popen(
            [executable, "--headless=new", "--remote-debugging-pipe", "--no-sandbox",
             "--disable-gpu", "--no-first-run", "--no-default-browser-check",
             "--disable-extensions", "--mute-audio", f"--user-data-dir={profile}",
             "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=wire, pass_fds=(3, 4))
        os.close(to_child_r)
        os.close(from_child_w)
        self._next_id = 0
        self._buffer = b""

    def send(self, method: str, params: dict[str, Any] | None = None,
             session: str | None = None, timeout: float = 20.0) -> dict[str, Any]:
        """Run one CDP command and return its result (events are ignored)."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._next_id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply.get("result", {})
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._read], [], [], left)[0]:
                raise TimeoutError(f"{method}: no reply from the browser")
            chunk = os.read(self._read, 1 << 16)
            if not chunk:
                raise RuntimeError("the browser closed the pipe")
            self._buffer += chunk

    def open(self, url: str) -> str:
        """A new page at ``url``; its session id."""
        target = self.send("Target.createTarget", {"url": url})["targetId"]
        return self.send("Target.attachToTarget", {"targetId": target, "flatten": True}
                         )["sessionId"]

    def evaluate(self, session: str, expression: str, await_promise: bool = False) -> Any:
        """The value of ``expression`` in the page (of the promise it gives, if awaited)."""
        result = self.send("Runtime.evaluate", {"expression": expression,
                                                "returnByValue": True,
                                                "awaitPromise": await_promise}, session)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r}: {result['exceptionDetails'].get('text')} "
                               f"{result.get('result', {}).get('description', '')}")
        return result.get("result", {}).get("value")

    def wait_for(self, session: str, expression: str, timeout: float = 20.0) -> Any:
        """Poll ``expression`` until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        error = ""
        while time.monotonic() < deadline:
            try:  # a page still loading may not have the elements yet
                value = self.evaluate(session, expression)
            except RuntimeError as exc:
                value, error = None, f" (last error: {exc})"
            if value:
                return value
            time.sleep(0.05)
        raise TimeoutError(f"{expression!r} stayed false for {timeout} s{error}")

    def set_file(self, session: str, selector: str, path: Path) -> None:
        """Choose ``path`` in the file input ``selector`` (fires its change event)."""
        self.set_files(session, selector, [path])

    def set_files(self, session: str, selector: str, paths: list[Path]) -> None:
        """Choose ``paths`` at once in the (``multiple``) file input ``selector``."""
        root = self.send("DOM.getDocument", {}, session)["root"]["nodeId"]
        node = self.send("DOM.querySelector", {"nodeId": root, "selector": selector},
                         session)["nodeId"]
        self.send("DOM.setFileInputFiles", {"files": [str(p) for p in paths],
                                            "nodeId": node}, session)

    def allow_downloads(self, folder: Path) -> None:
        """Save the pages' downloads in ``folder`` (headless asks nobody)."""
        self.send("Browser.setDownloadBehavior", {"behavior": "allow",
                                                  "downloadPath": str(folder)})

    def screenshot(self, session: str, path: Path, width: int = 1100,
                   height: int = 1400) -> Path:
        """A PNG of the page at ``width`` x ``height`` CSS pixels."""
        import base64

        self.send("Emulation.setDeviceMetricsOverride", {
            "width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            session)
        data = self.send("Page.captureScreenshot", {"format": "png"}, session)["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        with contextlib.suppress(OSError, RuntimeError, TimeoutError):
            self.send("Browser.close", timeout=5)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        os.close(self._write)
        os.close(self._read)

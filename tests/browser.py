"""A headless Chromium driven through the DevTools protocol, for the report's tests and its benchmark.

Debian's ``chromium`` is started with a temporary profile and ``--remote-debugging-port=0``; the port it
chose is read from the ``DevToolsActivePort`` file it writes in the profile (its stderr goes to a file), and
one page target is driven over a websocket (``websocket-client``).
Console messages, uncaught exceptions and log entries (CSP violations, failed loads) are collected in
:attr:`Page.errors`.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def find_chromium() -> str | None:
    """The Chromium executable on PATH (CHROMIUM overrides), or None."""
    if os.environ.get("CHROMIUM"):
        return os.environ["CHROMIUM"]
    return next((path for path in map(shutil.which, CHROMIUM_NAMES) if path), None)


class Page:
    """One browser tab: navigate, evaluate JavaScript, click, take screenshots; errors are collected."""

    def __init__(self, websocket_url: str, timeout: float = 30.0) -> None:
        import websocket

        self.socket = websocket.create_connection(websocket_url, timeout=timeout, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict[str, Any]] = []
        self.errors: list[str] = []
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable")

    def _record(self, message: dict[str, Any]) -> None:
        method, params = message.get("method"), message.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert", "warning"):
            text = " ".join(str(arg.get("value", arg.get("description", ""))) for arg in params.get("args", []))
            self.errors.append(f"console.{params['type']}: {text}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            self.errors.append(f"exception: {details.get('exception', {}).get('description', details.get('text'))}")
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") in ("error", "warning"):
            entry = params["entry"]
            self.errors.append(f"log {entry.get('source')}: {entry.get('text')} {entry.get('url', '')}".strip())
        self.events.append(message)

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Call a DevTools method and return its result (events that arrive meanwhile are recorded)."""
        self.next_id += 1
        ident = self.next_id
        self.socket.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self._record(message)

    def wait_for(self, method: str, timeout: float = 30.0) -> dict[str, Any]:
        """Wait for an event, also one that arrived during an earlier call."""
        for index, message in enumerate(self.events):
            if message.get("method") == method:
                return self.events.pop(index)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.socket.settimeout(max(0.1, deadline - time.monotonic()))
            message = json.loads(self.socket.recv())
            self._record(message)
            if message.get("method") == method:
                self.events.pop()
                return message
        raise TimeoutError(f"no {method} within {timeout} s")

    def open(self, url: str, viewport: tuple[int, int] = (1280, 900)) -> None:
        """Load ``url`` and wait for its load event."""
        self.send(
            "Emulation.setDeviceMetricsOverride",
            width=viewport[0],
            height=viewport[1],
            deviceScaleFactor=1,
            mobile=False,
        )
        self.events.clear()
        self.send("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (promises awaited), as JSON."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def _centre(self, selector: str) -> list[float]:
        return self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
            " return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )

    def hover(self, selector: str) -> None:
        """Move the mouse pointer to the centre of the element ``selector`` names."""
        x, y = self._centre(selector)
        self.send("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)

    def click(self, selector: str) -> None:
        """A real mouse click (pressed and released) at the centre of the element ``selector`` names."""
        box = self._centre(selector)
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    def screenshot(self, path: Path, full_page: bool = False) -> Path:
        """A PNG of the viewport (or of the whole page)."""
        result = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=full_page)
        path.write_bytes(base64.b64decode(result["data"]))
        return path

    def close(self) -> None:
        self.socket.close()


class Chromium:
    """A headless Chromium with a temporary profile; :meth:`page` gives a tab to drive.

    Example:
        >>> with Chromium() as browser:  # doctest: +SKIP
        ...     page = browser.page()
        ...     page.open(Path("report.html").resolve().as_uri())
    """

    def __init__(self, executable: str | None = None, timeout: float = 60.0) -> None:
        self.executable = executable or find_chromium()
        if self.executable is None:
            raise FileNotFoundError("no chromium on PATH (apt-get install chromium)")
        self.timeout = timeout
        self.profile = Path(tempfile.mkdtemp(prefix="qualiclip-chromium-"))
        arguments = [
            self.executable,
            "--headless",
            "--remote-debugging-port=0",
            f"--user-data-dir={self.profile}",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-gpu",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--allow-file-access-from-files",
            "about:blank",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            arguments.insert(1, "--no-sandbox")  # Chromium's sandbox refuses to run as root
        # Chromium's stderr goes to a file, never a pipe: a pipe nobody reads blocks it once 64 KB are written.
        self.log = Path(tempfile.mkstemp(prefix="qualiclip-chromium-", suffix=".log")[1])
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(arguments, stdout=subprocess.DEVNULL, stderr=log)
        self.port = self._read_port()

    def _read_port(self) -> int:
        """The port Chromium chose, from the ``DevToolsActivePort`` file it writes in its profile."""
        deadline = time.monotonic() + self.timeout
        active = self.profile / "DevToolsActivePort"
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                first = active.read_text().splitlines()[0]
            except (OSError, IndexError):  # not written yet, or half written
                first = ""
            if first.isdigit():
                return int(first)
            time.sleep(0.05)
        seen = self.log.read_text(errors="replace").splitlines()[-20:]
        self.close()
        raise RuntimeError("chromium did not start:\n" + "\n".join(seen))

    def page(self) -> Page:
        """The first page target (``about:blank``)."""
        deadline = time.monotonic() + self.timeout
        while True:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=10) as response:
                targets = [t for t in json.load(response) if t.get("type") == "page"]
            if targets or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        return Page(targets[0]["webSocketDebuggerUrl"], timeout=self.timeout)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.unlink(missing_ok=True)
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

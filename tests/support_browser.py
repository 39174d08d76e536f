"""Test helper: open a page in headless Chromium (Debian's package) over the DevTools protocol.

Chromium is driven through `--remote-debugging-pipe` (JSON messages, NUL-terminated, on file
descriptors 3 and 4), so no websocket client or browser-automation package is needed. The network
is emulated offline and every request that is not `file://` is recorded: a page that needs the
network shows up as requests and console errors. `open_page` returns the console errors, the
uncaught exceptions, the requests, the value of an expression evaluated in the page, and a
screenshot.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def browser() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


@dataclass
class PageVisit:
    console_errors: list[str] = field(default_factory=list)
    exceptions: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)  # anything but file:// and data:
    value: Any = None
    screenshot: bytes = b""


class _Pipe:
    def __init__(self, process: subprocess.Popen[bytes], to_browser: int, from_browser: int) -> None:
        self.process, self.to_browser, self.from_browser = process, to_browser, from_browser
        self.next_id = 0
        self.buffer = b""
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, session: str | None = None, **params: Any) -> int:
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session  # a command to the page, not to the browser
        os.write(self.to_browser, json.dumps(message).encode() + b"\0")
        return self.next_id

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self.buffer:
            if time.monotonic() > deadline:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self.from_browser, 1 << 20)
            if not chunk:
                raise RuntimeError(f"Chromium closed the pipe (exit {self.process.poll()})")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, deadline: float, session: str | None = None, **params: Any) -> dict[str, Any]:
        wanted = self.send(method, session, **params)
        while True:
            message = self._read(deadline)
            if message.get("id") == wanted:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, event: str, deadline: float) -> dict[str, Any]:
        for index, message in enumerate(self.events):
            if message.get("method") == event:
                return self.events.pop(index)
        while True:
            message = self._read(deadline)
            if message.get("method") == event:
                return message
            self.events.append(message)


def open_page(
    path: Path,
    expression: str,
    *,
    width: int = 1280,
    height: int = 2400,
    clip_height: int | None = None,
    clip_top: int = 0,
    timeout_s: float = 90.0,
) -> PageVisit:
    """Load `path` offline, wait for it, evaluate `expression` (awaited), take a screenshot: of the
    whole page, or of `clip_height` pixels from `clip_top` down."""
    executable = browser()
    assert executable is not None, "no Chromium: apt-get install chromium"
    profile = tempfile.mkdtemp(prefix="iotfactory-chromium-")
    to_browser_read, to_browser_write = os.pipe()
    from_browser_read, from_browser_write = os.pipe()

    def pipes_on_3_and_4() -> None:  # Chromium reads commands from fd 3 and writes replies to fd 4
        os.dup2(to_browser_read, 3)
        os.dup2(from_browser_write, 4)

    process = subprocess.Popen(
        [
            executable,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--remote-debugging-pipe",
            "--no-first-run",
            "--no-default-browser-check",
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            "about:blank",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        pass_fds=(3, 4),
        preexec_fn=pipes_on_3_and_4,
    )
    os.close(to_browser_read)
    os.close(from_browser_write)
    pipe = _Pipe(process, to_browser_write, from_browser_read)
    visit = PageVisit()
    deadline = time.monotonic() + timeout_s
    try:
        target = pipe.call("Target.createTarget", deadline, url="about:blank")["targetId"]
        session = pipe.call("Target.attachToTarget", deadline, targetId=target, flatten=True)["sessionId"]

        def call(method: str, **params: Any) -> dict[str, Any]:
            return pipe.call(method, deadline, session=session, **params)

        for domain in ("Page", "Runtime", "Log", "Network"):
            call(f"{domain}.enable")
        call(
            "Network.emulateNetworkConditions",
            offline=True,
            latency=0,
            downloadThroughput=-1,
            uploadThroughput=-1,
        )
        navigated = call("Page.navigate", url=path.resolve().as_uri())
        if navigated.get("errorText"):
            raise AssertionError(f"Chromium could not open {path}: {navigated['errorText']}")
        pipe.wait_for("Page.loadEventFired", deadline)
        answer = call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        visit.value = answer.get("result", {}).get("value")
        clip = {"x": 0, "y": clip_top, "width": width, "height": clip_height, "scale": 1}
        region = {"clip": clip} if clip_height else {}
        shot = call("Page.captureScreenshot", format="png", captureBeyondViewport=True, **region)
        visit.screenshot = base64.b64decode(shot["data"])
        _collect(pipe.events, visit)
    finally:
        process.kill()
        process.wait()
        os.close(pipe.to_browser)
        os.close(pipe.from_browser)
        shutil.rmtree(profile, ignore_errors=True)
    return visit


def _collect(events: list[dict[str, Any]], visit: PageVisit) -> None:
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            arguments = (str(a.get("value", a.get("description"))) for a in params["args"])
            visit.console_errors.append(" ".join(arguments))
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            visit.console_errors.append(params["entry"].get("text", ""))
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            thrown = details.get("exception", {}).get("description") or details.get("text", "")
            visit.exceptions.append(thrown)
        elif method == "Network.requestWillBeSent":
            url = params["request"]["url"]
            if not url.startswith(("file:", "data:", "about:")):
                visit.requests.append(url)

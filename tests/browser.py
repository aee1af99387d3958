"""Headless Chromium driven over its DevTools protocol, for the tests of the HTML report.

Why the DevTools protocol over a pipe (``--remote-debugging-pipe``), not Selenium or
playwright: it needs nothing but the browser and the standard library (no driver binary whose
version must match the browser, no WebSocket package, no port to find or to race for), and the
protocol reports exactly what the tests must see: every request the page attempts, blocked
ones included (``Network.requestWillBeSent``), console messages and uncaught exceptions
(``Runtime``), the browser's own errors such as Content-Security-Policy violations (``Log``),
and dialogs (``Page.javascriptDialogOpening``). Puppeteer and playwright talk to Chromium the
same way.

Messages are JSON, one per NUL-terminated frame: commands go to the browser's fd 3, replies
and events come back on its fd 4.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = (  # headless and offline: without the background-networking flags it tries the network
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--mute-audio", "--hide-scrollbars",
)


def find_browser() -> str | None:
    for name in BROWSER_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    """One Chromium process; ``open_page`` gives a fresh tab with its own event log."""

    def __init__(self, executable: str, user_data_dir: str | os.PathLike, timeout: float = 60.0):
        self.timeout = timeout
        to_browser_r, to_browser_w = os.pipe()
        from_browser_r, from_browser_w = os.pipe()
        # The browser's ends go above fd 10, so placing them on 3 and 4 cannot clobber them.
        child_in = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD_CLOEXEC, 10)
        child_out = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD_CLOEXEC, 10)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (to_browser_r, from_browser_w):
            os.close(fd)
        # posix_spawn, not subprocess's preexec_fn (unsafe with threads, and torch has them):
        # dup2 onto 0-4 clears close-on-exec there, every other fd of ours closes on exec.
        actions = [(os.POSIX_SPAWN_DUP2, devnull, 0), (os.POSIX_SPAWN_DUP2, devnull, 1),
                   (os.POSIX_SPAWN_DUP2, devnull, 2), (os.POSIX_SPAWN_DUP2, child_in, 3),
                   (os.POSIX_SPAWN_DUP2, child_out, 4)]
        argv = [executable, *FLAGS, "--remote-debugging-pipe", f"--user-data-dir={user_data_dir}",
                "about:blank"]
        self.pid = os.posix_spawn(executable, argv, os.environ, file_actions=actions)
        for fd in (child_in, child_out, devnull):
            os.close(fd)
        self._out = os.fdopen(to_browser_w, "wb")
        self._in = os.fdopen(from_browser_r, "rb")
        self._lock = threading.Lock()  # one writer at a time
        self._cv = threading.Condition()
        self._replies: dict[int, dict] = {}
        self._events: dict[str | None, list[dict]] = {}
        self._next_id = 0
        threading.Thread(target=self._read, name="cdp-reader", daemon=True).start()
        self.version = self.send("Browser.getVersion")["product"]

    def _read(self) -> None:
        buf = b""
        while chunk := self._in.read1(1 << 16):
            buf += chunk
            *frames, buf = buf.split(b"\0")
            for frame in frames:
                msg = json.loads(frame)
                if msg.get("method") == "Page.javascriptDialogOpening":
                    # An alert() would block the page: record it, then dismiss it.
                    self._write({"id": -1, "method": "Page.handleJavaScriptDialog",
                                 "params": {"accept": False}, "sessionId": msg["sessionId"]})
                with self._cv:
                    if "id" in msg:
                        self._replies[msg["id"]] = msg
                    else:
                        self._events.setdefault(msg.get("sessionId"), []).append(msg)
                    self._cv.notify_all()
        with self._cv:  # the browser went away: wake every waiter
            self._replies[-2] = {}
            self._cv.notify_all()

    def _write(self, msg: dict) -> None:
        with self._lock:
            self._out.write(json.dumps(msg).encode() + b"\0")
            self._out.flush()

    def send(self, method: str, session: str | None = None, **params) -> dict:
        """Send one command and wait for its reply; raise on a protocol error."""
        with self._cv:
            self._next_id += 1
            msg_id = self._next_id
        msg = {"id": msg_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        self._write(msg)
        with self._cv:
            if not self._cv.wait_for(lambda: msg_id in self._replies or -2 in self._replies,
                                     self.timeout):
                raise TimeoutError(f"no reply to {method} within {self.timeout} s")
            reply = self._replies.pop(msg_id, None)
        if reply is None:
            raise RuntimeError(f"the browser exited while waiting for {method}")
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def events(self, session: str) -> list[dict]:
        with self._cv:
            return list(self._events.get(session, []))

    def wait_for_event(self, session: str, method: str) -> dict:
        def found():
            return next((e for e in self._events.get(session, []) if e["method"] == method), None)

        with self._cv:
            if not self._cv.wait_for(found, self.timeout):
                raise TimeoutError(f"no {method} within {self.timeout} s")
            return found()

    def open_page(self, path: str | os.PathLike, *, width: int, height: int,
                  mobile: bool = False) -> Page:
        """A new tab of ``width`` x ``height`` CSS pixels with ``path`` loaded."""
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        page = Page(self, target, session)
        for domain in ("Page", "Runtime", "Log", "Network"):
            page.send(f"{domain}.enable")
        page.send("Emulation.setDeviceMetricsOverride", width=width, height=height,
                  deviceScaleFactor=1, mobile=mobile)
        page.send("Page.navigate", url=Path(path).resolve().as_uri())
        self.wait_for_event(session, "Page.loadEventFired")
        return page

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.send("Browser.close")
        if not self._exited(10):
            os.kill(self.pid, signal.SIGKILL)
            self._exited(10)
        self._out.close()
        self._in.close()

    def _exited(self, timeout: float) -> bool:
        """Reap the browser within ``timeout`` seconds; False if it is still running."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if os.waitpid(self.pid, os.WNOHANG)[0] == self.pid:
                return True
            time.sleep(0.05)
        return False


class Page:
    """One tab: evaluate script, click, take screenshots, and read what the page did."""

    def __init__(self, browser: Browser, target: str, session: str):
        self.browser, self.target, self.session = browser, target, session

    def send(self, method: str, **params) -> dict:
        return self.browser.send(method, self.session, **params)

    def eval(self, expression: str):
        """The value of a JavaScript expression (JSON-serializable), in the page."""
        reply = self.send("Runtime.evaluate", expression=expression, returnByValue=True,
                          awaitPromise=True)
        if "exceptionDetails" in reply:
            raise RuntimeError(f"{expression!r} threw: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    def click(self, selector: str, index: int = 0) -> None:
        """A real mouse click (pressed + released) at the centre of the index-th match."""
        box = self.eval(f"""(() => {{
            const el = document.querySelectorAll({json.dumps(selector)})[{int(index)}];
            el.scrollIntoView({{block: 'center'}});
            const r = el.getBoundingClientRect();
            return {{x: r.x + r.width / 2, y: r.y + r.height / 2}};
        }})()""")
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=box["x"], y=box["y"],
                      button="left", clickCount=1)

    def screenshot(self) -> bytes:
        """A PNG of the whole page, not only the viewport."""
        data = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        return base64.b64decode(data["data"])

    def pdf(self) -> bytes:
        return base64.b64decode(self.send("Page.printToPDF", printBackground=False)["data"])

    # -- what the page did ---------------------------------------------------------------------

    def _events(self, method: str) -> list[dict]:
        return [e["params"] for e in self.browser.events(self.session) if e["method"] == method]

    def requests(self) -> list[str]:
        """URLs of every request the page attempted (the page itself and data: URIs too)."""
        return [e["request"]["url"] for e in self._events("Network.requestWillBeSent")]

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and browser-side errors (CSP violations)."""
        out = [f"console.{e['type']}: {[a.get('value') for a in e['args']]}"
               for e in self._events("Runtime.consoleAPICalled") if e["type"] in ("error", "assert")]
        out += [f"exception: {e['exceptionDetails'].get('text')} "
                f"{e['exceptionDetails'].get('exception', {}).get('description', '')}"
                for e in self._events("Runtime.exceptionThrown")]
        out += [f"{e['entry']['source']}: {e['entry']['text']}"
                for e in self._events("Log.entryAdded") if e["entry"]["level"] == "error"]
        return out

    def dialogs(self) -> list[str]:
        return [f"{e['type']}: {e['message']}" for e in self._events("Page.javascriptDialogOpening")]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.browser.send("Target.closeTarget", targetId=self.target)

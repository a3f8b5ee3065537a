"""A real browser for the tests: Debian's headless Chromium driven over the DevTools protocol, with
the standard library only (no Playwright, no browser download, no websocket client).

``--remote-debugging-pipe`` gives the protocol on file descriptors 3 (commands in) and 4 (events
and answers out), each message JSON ended by a NUL byte. A page is loaded in a fresh tab, and what
the page logs is kept: console messages, uncaught exceptions, the browser's own log (a resource that
fails to load is an error there) and every request made, so a test can ask for none of them.

Also a PNG reader (zlib and the five PNG row filters), so a screenshot is checked by decoding it
rather than by its size.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import struct
import subprocess
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"  # Debian package chromium (scripts/setup)


@dataclass
class Page:
    url: str
    errors: list[str] = field(default_factory=list)  # console errors, exceptions, browser log errors
    requests: list[str] = field(default_factory=list)  # every URL the page fetched, itself included


class Browser:
    def __init__(self, width: int = 1100, height: int = 900):
        self.width, self.height = width, height
        self.profile = tempfile.mkdtemp(prefix="esxdr-chromium-")
        cmd_r, cmd_w = os.pipe()
        out_r, out_w = os.pipe()
        # The protocol's descriptors are fixed (3 and 4): the shell puts the pipes there, then execs.
        # --no-sandbox: the tests run as root, where Chromium's sandbox refuses to start.
        self.proc = subprocess.Popen(
            ["/bin/bash", "-c", f'exec "$0" "$@" 3<&{cmd_r} 4>&{out_w}', CHROMIUM,  # dash: fds 0-9 only
             "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
             f"--user-data-dir={self.profile}", "--no-first-run", "--no-default-browser-check",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-extensions", "--mute-audio", "--hide-scrollbars", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, pass_fds=(cmd_r, out_w))
        os.close(cmd_r)
        os.close(out_w)
        self._w, self._r = cmd_w, out_r
        self._next = 0
        self._answers: dict[int, dict] = {}
        self.events: list[dict] = []
        self._cv = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._stderr: list[bytes] = []
        threading.Thread(target=lambda: self._stderr.extend(self.proc.stderr), daemon=True).start()  # type: ignore[arg-type]

    # -- the protocol ---------------------------------------------------------
    def _read(self) -> None:
        buf = b""
        while True:
            chunk = os.read(self._r, 1 << 16)
            if not chunk:
                break
            buf += chunk
            *msgs, buf = buf.split(b"\0")
            with self._cv:
                for m in msgs:
                    msg = json.loads(m)
                    if "id" in msg:
                        self._answers[msg["id"]] = msg
                    else:
                        self.events.append(msg)
                self._cv.notify_all()

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30) -> dict:
        self._next += 1
        msg: dict[str, Any] = {"id": self._next, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        try:
            os.write(self._w, json.dumps(msg).encode() + b"\0")
        except BrokenPipeError:
            self.proc.wait(timeout=10)
            raise RuntimeError(f"chromium exited ({self.proc.returncode}): "
                               f"{b''.join(self._stderr)[-2000:]!r}") from None
        with self._cv:
            if not self._cv.wait_for(lambda: self._next in self._answers or self.proc.poll() is not None, timeout):
                raise TimeoutError(f"chromium: no answer to {method} in {timeout}s")
            answer = self._answers.pop(self._next, None)
        if answer is None:
            raise RuntimeError(f"chromium exited ({self.proc.returncode}): {b''.join(self._stderr)[-2000:]!r}")
        if "error" in answer:
            raise RuntimeError(f"{method}: {answer['error']}")
        return answer.get("result", {})

    def _wait_event(self, method: str, session: str, timeout: float = 30) -> dict:
        with self._cv:
            ok = self._cv.wait_for(lambda: any(e["method"] == method and e.get("sessionId") == session
                                               for e in self.events), timeout)
            if not ok:
                raise TimeoutError(f"chromium: no {method} in {timeout}s")
            return next(e for e in self.events if e["method"] == method and e.get("sessionId") == session)

    # -- pages ----------------------------------------------------------------
    def open(self, url: str) -> tuple[Page, str]:
        """Load ``url`` in a new tab; returns what it logged and fetched, and the tab's session."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable", session=session)
        self.send("Emulation.setDeviceMetricsOverride", {"width": self.width, "height": self.height,
                                                         "deviceScaleFactor": 1, "mobile": False}, session=session)
        self.send("Page.navigate", {"url": url}, session=session)
        self._wait_event("Page.loadEventFired", session)
        time.sleep(0.3)  # messages logged during load arrive after the load event
        page = Page(url)
        with self._cv:
            mine = [e for e in self.events if e.get("sessionId") == session]
        for e in mine:
            p = e["params"]
            if e["method"] == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert", "warning"):
                page.errors.append(f"console.{p['type']}: " + " ".join(str(a.get("value", a.get("description")))
                                                                     for a in p["args"]))
            elif e["method"] == "Runtime.exceptionThrown":
                page.errors.append(f"exception: {p['exceptionDetails'].get('text')} "
                                   f"{p['exceptionDetails'].get('exception', {}).get('description', '')}")
            elif e["method"] == "Log.entryAdded" and p["entry"]["level"] in ("error", "warning"):
                page.errors.append(f"log {p['entry']['level']}: {p['entry']['text']} {p['entry'].get('url', '')}")
            elif e["method"] == "Network.requestWillBeSent":
                page.requests.append(p["request"]["url"])
            elif e["method"] == "Network.loadingFailed":
                page.errors.append(f"failed to load: {p.get('errorText')}")
        return page, session

    def eval(self, session: str, expression: str) -> Any:
        r = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=session)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def screenshot(self, session: str, full_page: bool = False) -> bytes:
        if full_page:
            height = int(self.eval(session, "document.documentElement.scrollHeight"))
            self.send("Emulation.setDeviceMetricsOverride", {"width": self.width, "height": height,
                                                             "deviceScaleFactor": 1, "mobile": False}, session=session)
        data = self.send("Page.captureScreenshot", {"format": "png"}, session=session)["data"]
        return base64.b64decode(data)

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._w, self._r):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------- PNG
def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and the unfiltered rows (8-bit RGB or RGBA, not interlaced) of a PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        assert zlib.crc32(kind + body) == struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])[0], kind
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
        pos += 12 + length
    assert header, "no IHDR"
    width, height, depth, colour, _, _, interlace = header
    assert depth == 8 and colour in (2, 6) and interlace == 0, header
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows, prev = [], bytearray(stride)
    for y in range(height):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        if f == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 0xFF
        elif f == 2:
            line = bytearray((a + b) & 0xFF for a, b in zip(line, prev, strict=True))
        elif f == 3:
            for i in range(stride):
                line[i] = (line[i] + ((line[i - bpp] if i >= bpp else 0) + prev[i]) // 2) & 0xFF
        elif f == 4:
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b, c = prev[i], (prev[i - bpp] if i >= bpp else 0)
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        else:
            assert f == 0, f"bad filter {f}"
        rows.append(bytes(line))
        prev = line
    return width, height, rows


def colours(data: bytes) -> tuple[int, int, set[bytes]]:
    """Width, height and the distinct pixel values of a PNG (alpha dropped)."""
    width, height, rows = png_pixels(data)
    bpp = len(rows[0]) // width
    seen: set[bytes] = set()
    for row in rows:
        seen.update(row[i:i + 3] for i in range(0, len(row), bpp))
    return width, height, seen

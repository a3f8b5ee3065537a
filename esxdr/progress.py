"""Progress on stderr: a bar with bytes, rate and ETA on a terminal, periodic lines otherwise."""

from __future__ import annotations

import sys
import threading
import time

from esxdr.fmt import human_bytes, human_duration


class Progress:
    """Byte progress for one labelled transfer (thread-safe; several may run at once)."""

    BAR = 20

    def __init__(self, label: str, total: int | None, *, enabled: bool = True, stream=None,
                 interval: float = 0.25, on_bytes=None):
        self.label = label
        self.total = total
        self.done = 0
        self.started = time.monotonic()
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.interval = interval if self.tty else 5.0
        self._last = 0.0
        self._lock = threading.Lock()
        self.on_bytes = on_bytes

    def __call__(self, n: int) -> None:
        with self._lock:
            self.done += n
            if self.on_bytes:
                self.on_bytes(self.done)
            now = time.monotonic()
            if self.enabled and now - self._last >= self.interval:
                self._last = now
                self._render(final=False)

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = self.done / elapsed
        # Past its estimate a bar would sit at 100% while bytes still flow: bytes and rate only then.
        if self.total and self.done <= self.total:
            frac = min(self.done / self.total, 1.0)
            filled = frac * self.BAR
            bar = "█" * int(filled) + ("▌" if filled - int(filled) >= 0.5 else "")
            eta = (self.total - self.done) / rate if rate > 0 and self.done < self.total else 0
            return (f"{self.label:<12} {bar:<{self.BAR}} {frac * 100:3.0f}%  {human_bytes(self.done)}/"
                    f"{human_bytes(self.total)}  {human_bytes(rate)}/s  ETA {human_duration(eta)}")
        past = f"  (estimate was {human_bytes(self.total)})" if self.total else ""
        return f"{self.label:<12} {human_bytes(self.done)}  {human_bytes(rate)}/s{past}"

    def _render(self, final: bool) -> None:
        text = self.line()
        if self.tty:
            self.stream.write("\r\x1b[2K" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled:
            with self._lock:
                self._render(final=True)

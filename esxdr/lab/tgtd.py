"""Lifecycle of one tgtd instance for the lab and the tests.

Each site gets its own tgtd, selected by its control port (``tgtadm -C``) and
listening on its own portal. tgtd ignores SIGTERM while targets exist, so stop
deletes every target with --force and then asks the daemon to exit.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from esxdr.lab.netns import netns_prefix
from esxdr.util import pid_running


@dataclass
class Tgtd:
    control_port: int
    portal: str  # "127.0.0.1:3260"
    pid: int
    log_path: str

    @property
    def address(self) -> str:
        return self.portal.rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.portal.rsplit(":", 1)[1])

    def tgtadm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["tgtadm", "-C", str(self.control_port), "--lld", "iscsi", *args],
                              capture_output=True, text=True, check=check)

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except OSError:
            return False
        return True

    def target_ids(self) -> list[int]:
        out = self.tgtadm("--op", "show", "--mode", "target", check=False).stdout
        return [int(m) for m in re.findall(r"^Target (\d+):", out, re.M)]

    def stop(self, timeout: float = 10.0) -> None:
        if not self.alive():
            return
        for tid in self.target_ids():
            self.tgtadm("--op", "delete", "--mode", "target", "--tid", str(tid), "--force", check=False)
        subprocess.run(["tgtadm", "-C", str(self.control_port), "--op", "delete", "--mode", "system"],
                       capture_output=True, check=False)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not pid_running(self.pid):
                return
            time.sleep(0.05)
        os.kill(self.pid, signal.SIGKILL)
        pid_running(self.pid)


def start(control_port: int, address: str, port: int, log_path: str, timeout: float = 10.0,
          netns: str | None = None) -> Tgtd:
    """Start tgtd in the foreground (as a child we own) and wait until it answers; with ``netns``,
    in that network namespace (its control socket is a file, reachable from anywhere)."""
    log = open(log_path, "ab")
    proc = subprocess.Popen(
        netns_prefix(netns) + ["tgtd", "-f", "-C", str(control_port), "--iscsi", f"portal={address}:{port}"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
    )
    log.close()
    t = Tgtd(control_port=control_port, portal=f"{address}:{port}", pid=proc.pid, log_path=log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"tgtd exited with {proc.returncode}; see {log_path}")
        r = t.tgtadm("--op", "show", "--mode", "target", check=False)
        if r.returncode == 0 and _port_open(address, port, netns):
            return t
        time.sleep(0.1)
    t.stop()
    raise RuntimeError(f"tgtd on {address}:{port} did not come up within {timeout}s; see {log_path}")


def _port_open(address: str, port: int, netns: str | None = None) -> bool:
    from esxdr.lab.netns import port_open

    return port_open(address, port, netns)


def free_control_port() -> int:
    """A tgtd control port (tgtd accepts 0..32767) that no other tgtd instance uses."""
    import random

    for _ in range(200):
        n = random.randint(2000, 32000)
        if not Path(f"/var/run/tgtd/socket.{n}").exists():
            return n
    raise RuntimeError("no free tgtd control port")


def free_port(address: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]

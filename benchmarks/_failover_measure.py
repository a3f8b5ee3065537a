"""What the failover benchmark measures around one `esxdr failover --disaster` run: its report,
its journal's start time (to place the steps on the clock), and the CPU seconds esxsim and esxdr
spent in each step (sampled from /proc while it runs)."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _failover_lab import ESXDR

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process (all its threads, not its children)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / TICK


class CpuSampler:
    """Samples the CPU seconds of some processes every ``interval`` s, with wall-clock times."""

    def __init__(self, interval: float = 0.25):
        self.interval = interval
        self.pids: dict[str, int] = {}
        self.samples: dict[str, list[tuple[float, float]]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def watch(self, name: str, pid: int) -> None:
        self.pids[name] = pid
        self.samples.setdefault(name, [])
        self._sample(name, pid)

    def _sample(self, name: str, pid: int) -> None:
        c = cpu_seconds(pid)
        if c is not None:
            self.samples[name].append((time.time(), c))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for name, pid in list(self.pids.items()):
                self._sample(name, pid)

    def start(self) -> CpuSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        for name, pid in list(self.pids.items()):
            self._sample(name, pid)
        self._stop.set()
        self._thread.join()

    def between(self, name: str, t0: float, t1: float) -> float:
        """CPU seconds of ``name`` from t0 to t1 (wall clock), from the nearest samples."""
        s = self.samples.get(name) or []
        if not s:
            return 0.0

        def at(t: float) -> float:
            before = [c for ts, c in s if ts <= t]
            return before[-1] if before else s[0][1]

        return max(0.0, at(t1) - at(t0))


@dataclass
class FailoverRun:
    """One measured `esxdr failover GROUP --disaster`."""

    report: dict[str, Any] = field(default_factory=dict)
    wall: float = 0.0  # the command, start to exit
    started: float = 0.0  # the run's own start (journal), wall clock
    error: str | None = None
    cpu: dict[str, dict[str, float]] = field(default_factory=dict)  # step kind -> process -> CPU s

    def steps(self) -> list[dict[str, Any]]:
        return [s for s in self.report.get("steps", []) if s.get("end") is not None]

    def by_kind(self) -> dict[str, float]:
        """Wall seconds per step kind, summed (20 promotes are one row)."""
        out: dict[str, float] = {}
        for s in self.steps():
            out[s["kind"]] = out.get(s["kind"], 0.0) + s["end"] - s["start"]
        return out

    def power_steps(self) -> list[tuple[str, float, int]]:
        """(step id, seconds, VMs) of each priority group's power-on."""
        prios: dict[int, int] = {}
        for v in self.report.get("vms", []):
            prios[int(v["priority"])] = prios.get(int(v["priority"]), 0) + 1
        return [(s["id"], s["end"] - s["start"], prios.get(int(s["id"].split(":")[1]), 0))
                for s in self.steps() if s["kind"] == "power"]


def run_failover(site: str, state_dir: str, pids: dict[str, int], group: str = "core",
                 timeout: float = 1800) -> FailoverRun:
    run = FailoverRun()
    sampler = CpuSampler()
    for name, pid in pids.items():
        sampler.watch(name, pid)
    sampler.start()
    t0 = time.time()
    p = subprocess.Popen([ESXDR, "--site", site, "--json", "failover", group, "--disaster"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler.watch("esxdr", p.pid)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        run.error = f"did not finish in {timeout:.0f}s"
    run.wall = time.time() - t0
    sampler.stop()
    if p.returncode != 0 and run.error is None:
        run.error = f"exit {p.returncode}: {(err or out).strip().splitlines()[-1:] or ['no output']}"[:400]
    try:
        run.report = json.loads(out)
    except ValueError:
        if run.error is None:
            run.error = f"no JSON report: {(err or out).strip()[-300:]}"
        return run
    journal = Path(state_dir) / "failover" / f"{group}.failover.json"
    try:
        run.started = float(json.loads(journal.read_text())["started"])
    except (OSError, ValueError, KeyError):
        run.started = t0
    for s in run.steps():
        a, b = run.started + s["start"], run.started + s["end"]
        kind = run.cpu.setdefault(s["kind"], {})
        for name in sampler.samples:
            kind[name] = kind.get(name, 0.0) + sampler.between(name, a, b)
    run.cpu["whole command"] = {name: sampler.between(name, t0, t0 + run.wall) for name in sampler.samples}
    return run

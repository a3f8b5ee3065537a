"""What every benchmark prints above its table: the exact command line, the date, the machine and
the versions, so that each figure in RESULTS.md can be traced to the run that produced it; and
--append, which adds the block to RESULTS.md."""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from esxdr.util import mem_total_kib  # every script puts the checkout first on sys.path before importing this

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"


def first_line(argv: list[str], env: dict | None = None) -> str:
    """The first line a command prints (stdout, else stderr); "" when it cannot run."""
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=30, env={**os.environ, **(env or {})})
    except (OSError, subprocess.SubprocessError):
        return ""
    text = r.stdout.strip() or r.stderr.strip()
    return text.splitlines()[0] if text else ""


def machine() -> str:
    """hostname, cores, CPU model, RAM (what the figures were measured on)."""
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor() or "?")
    kib = mem_total_kib()
    return f"{platform.node()}, {os.cpu_count()} cores, {cpu}, {kib / 1024 / 1024:.1f} GiB RAM"


def esxdr_version() -> str:
    """The commit measured, and whether the tree differed from it."""
    commit = first_line(["git", "-C", str(ROOT), "rev-parse", "--short=10", "HEAD"]) or "unknown commit"
    dirty = first_line(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"])
    return f"esxdr {commit}" + (" + uncommitted changes" if dirty else "")


def header(title: str, versions: Iterable[str]) -> str:
    return (f"## {title}\n\n"
            f"Command: `{shlex.join(sys.orig_argv)}`  \n"
            f"Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  \n"
            f"Machine: {machine()}  \n"
            f"Versions: {', '.join([esxdr_version(), *versions, f'Python {platform.python_version()}'])}\n")


def table(head: Iterable[str], rows: Iterable[Iterable[object]]) -> str:
    head = list(head)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def append(block: str) -> None:
    with open(RESULTS, "a") as f:
        f.write("\n" + block.rstrip() + "\n")


def lane_accel(run_dir: str = "/run/esxdr-openzfs") -> str:
    """How the OpenZFS lane's guest runs: read from the running qemu's command line."""
    try:
        pid = Path(run_dir, "qemu.pid").read_text().strip()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (OSError, ValueError):
        return "guest accelerator unknown"
    return "guest under KVM" if "kvm" in cmdline else "guest under TCG (emulated, no KVM)"

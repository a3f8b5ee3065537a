"""Small process- and file-level helpers that several layers need, one copy each."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def atomic_write(path: str | os.PathLike[str], text: str, *, mode: int = 0o666, fsync: bool = True,
                 dir_mode: int | None = None) -> Path:
    """Write ``text`` to ``path`` so that a reader sees the old file or the new one, never a torn one.

    A temporary file beside it (unique per process, so two writers cannot share one), fsynced,
    then renamed over the target. ``mode`` is the new file's permission before the umask (0o600 for
    anything secret: it is never readable by others, not even between create and rename).
    ``dir_mode`` creates missing parent directories with that mode.
    """
    p = Path(path)
    if dir_mode is not None:
        p.parent.mkdir(parents=True, exist_ok=True, mode=dir_mode)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return p


def write_json(path: str | os.PathLike[str], data: Any, *, indent: int = 1, mode: int = 0o666,
               dir_mode: int | None = 0o777) -> Path:
    """``data`` as JSON, atomically (:func:`atomic_write`); values JSON lacks are written as text."""
    return atomic_write(path, json.dumps(data, indent=indent, default=str), mode=mode, dir_mode=dir_mode)


def mem_total_kib(meminfo: str = "/proc/meminfo") -> int:
    """The machine's RAM in KiB (MemTotal), 0 where the kernel does not say."""
    try:
        lines = Path(meminfo).read_text().splitlines()
    except OSError:
        return 0
    return next((int(ln.split()[1]) for ln in lines if ln.startswith("MemTotal:")), 0)


def pid_running(pid: int) -> bool:
    """Whether process ``pid`` is alive: reaped if it is our exited child, and a zombie counts as gone."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    # A zombie that is not our child still answers kill(0); look at its state.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        return state != "Z"
    except OSError:
        return False  # gone between the two looks

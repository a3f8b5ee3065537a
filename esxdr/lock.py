"""Per-group run locks: flock on a file holding the holder's pid.

flock is released by the kernel when the holder dies, even by SIGKILL, so a
crashed run never leaves a lock behind that a person must remove by hand.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from esxdr.errors import LockHeld


class GroupLock:
    def __init__(self, state_dir: str, group: str):
        self.path = Path(state_dir) / "locks" / f"{group}.lock"
        self.group = group
        self.fd: int | None = None

    def __enter__(self) -> GroupLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = int(os.pread(fd, 32, 0).decode().strip() or 0) or None
            except ValueError:
                holder = None
            os.close(fd)
            raise LockHeld(
                f"protection group {self.group} is being replicated by another esxdr run (pid {holder})",
                pid=holder, hint="wait for it to finish; the lock is released automatically when it exits",
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

"""Reading replicas in tests: they mount nowhere by themselves."""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

ZFS_TIMEOUT = 120  # as the fixtures' zfs calls: a hung zfs-fuse fails the test, not the run


@contextlib.contextmanager
def replica_mounted(dataset: str, where: Path):
    """Mount a replica at ``where`` for a read, then back to the DR root's mountpoint=none.

    Replicas mount nowhere by themselves (no receive may mount one), so a test that reads DR
    data gives the replica an explicit, temporary mountpoint, as an operator would.
    """
    subprocess.run(["zfs", "set", f"mountpoint={where}", dataset], check=True, capture_output=True, timeout=ZFS_TIMEOUT)
    try:
        subprocess.run(["zfs", "mount", dataset], check=True, capture_output=True, timeout=ZFS_TIMEOUT)
        try:
            yield where
        finally:
            subprocess.run(["zfs", "unmount", dataset], check=True, capture_output=True, timeout=ZFS_TIMEOUT)
    finally:
        subprocess.run(["zfs", "inherit", "mountpoint", dataset], check=True, capture_output=True, timeout=ZFS_TIMEOUT)

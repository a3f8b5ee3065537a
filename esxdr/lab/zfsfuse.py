"""The lab's zfs-fuse daemon: start it, tell a hung one from a stopped one, and restart it.

zfs-fuse (pool v23) serves every pool of the lab from one userspace daemon. Now and then it
stops answering: a `zfs unmount` or `zfs create` then waits forever, and so does every later
command. A stopped daemon is started; a hung one is killed with the commands waiting on it,
its dead FUSE mounts are detached, and it is started again. The pools come back from the
daemon's cache, or from their file vdevs when the caller names the directories.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from esxdr.errors import UsageError
from esxdr.util import mem_total_kib, pid_running

PIDFILE = Path("/var/run/zfs-fuse.pid")
# Long enough for a loaded two-core machine; a healthy daemon answers `zpool list` in milliseconds.
ANSWER_TIMEOUT = 30.0
# Where the daemon publishes its kstats (unless started with --no-kstat-mount).
ARCSTATS = Path("/zfs-kstat/zfs/arcstats")


def arc_max_mib(mem_kib: int | None = None) -> int:
    """The ARC ceiling the lab starts the daemon with: a quarter of RAM, at most 2 GiB and at least
    Debian's 100 MiB.

    zfs-fuse holds its ARC under --max-arc-size, 100 MiB in Debian's /etc/zfs/zfsrc. A few hundred
    mounted filesystems need more than that for their metadata alone; the daemon's reclaim threads
    then spin on every core and a write to any of its datasets waits forever. Measured here: 600
    filesystems, 16 KiB appended to each and `zfs snapshot -r` a round, hung in the 5th round at
    100 MiB (the 300x20 scale benchmark, 603 filesystems, in its 2nd); at 1 GiB 25 rounds went
    through with the ARC at 456 MiB.
    """
    if mem_kib is None:
        mem_kib = mem_total_kib()
    return max(100, min(2048, mem_kib // 1024 // 4))


def daemon_argv() -> list[str]:
    # on the command line, so it holds whatever /etc/zfs/zfsrc says
    return ["zfs-fuse", "--pidfile", str(PIDFILE), "--max-arc-size", str(arc_max_mib())]


def pool_names(timeout: float = ANSWER_TIMEOUT) -> list[str] | None:
    """`zpool list -H -o name`: the pool names, None when the daemon does not run or answer."""
    try:
        r = subprocess.run(["zpool", "list", "-H", "-o", "name"], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    return r.stdout.split() if r.returncode == 0 else None


def daemon_pid() -> int | None:
    for pid in _pids_named("zfs-fuse"):
        return pid
    return None


def check(timeout: float = ANSWER_TIMEOUT) -> tuple[str, list[str]]:
    """The daemon's state and, when it answers, its pools (one `zpool list` for both)."""
    names = pool_names(timeout)
    if names is not None:
        return "up", names
    return ("hung" if daemon_pid() is not None else "down"), []


def state(timeout: float = ANSWER_TIMEOUT) -> str:
    """"up" (answers), "down" (no daemon) or "hung" (a daemon that does not answer)."""
    return check(timeout)[0]


def running() -> bool:
    return state() == "up"


def ensure(timeout: float = 20.0, vdev_dirs: tuple[Path, ...] = ()) -> str:
    """Start the daemon unless it answers; restart it when it is hung. Returns what it found."""
    st = state()
    if st == "hung":
        restart(vdev_dirs, timeout)
    elif st == "down":
        _start(timeout)
    return st


def _start(timeout: float) -> None:
    Path("/var/run/zfs").mkdir(parents=True, exist_ok=True)
    PIDFILE.unlink(missing_ok=True)
    # Mounts of a daemon that died are dead ("Transport endpoint is not connected"): the new
    # daemon could not mount anything on those paths again.
    _detach_mounts()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # It exits 1 at once while the control socket is still held (a daemon that is still exiting).
        started = subprocess.run(daemon_argv(), capture_output=True).returncode == 0
        while time.monotonic() < deadline:
            if pool_names(5.0) is not None:
                return
            if not started or daemon_pid() is None:
                break
            time.sleep(0.2)
        time.sleep(0.5)
        PIDFILE.unlink(missing_ok=True)
    raise UsageError("zfs-fuse did not start", hint="is /dev/fuse available? (modprobe fuse)")


def waiting_commands() -> list[str]:
    """The zfs and zpool commands now running, with their age and kernel wait channel."""
    r = subprocess.run(["ps", "-C", "zfs,zpool", "-o", "pid=,etimes=,wchan:32=,args="],
                       capture_output=True, text=True)
    return [line.strip() for line in r.stdout.splitlines() if line.strip()]


def probe(dataset: str, timeout: float = ANSWER_TIMEOUT) -> bool:
    """Create and destroy `dataset`: what a hung daemon stops doing first (a list may still answer).

    True when both commands finish in time, whatever they say: a refusal (a faulted pool, no
    space) is an answer, a hang is not.
    """
    try:
        for verb in ("create", "destroy"):
            subprocess.run(["zfs", verb, dataset], capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False
    return True


def restart(vdev_dirs: list[Path] | tuple[Path, ...] = (), timeout: float = 20.0) -> list[str]:
    """Kill the daemon and its waiting commands, detach its mounts, start it, bring the pools back.

    Returns what was waiting on the daemon when it was killed (for the report of whoever asked).
    """
    waiting = waiting_commands()
    for client in _pids_named("zfs") + _pids_named("zpool"):
        _signal(client, signal.SIGKILL)
    daemon = daemon_pid()
    if daemon is not None:
        _signal(daemon, signal.SIGKILL)
        _wait_gone(daemon, 10)
        # Detached even while the killed daemon is still exiting: requests pending on its mounts
        # can hold its exit, and a lazy unmount ends them.
        _detach_mounts(force=True)
        _wait_gone(daemon, 20)
    _start(timeout)
    imported = set(pool_names() or [])
    for d in vdev_dirs:
        for img in sorted(Path(d).glob("*.img")):
            if img.stem not in imported:
                subprocess.run(["zpool", "import", "-f", "-d", str(d), img.stem], capture_output=True,
                               timeout=120)
    # The daemon imports from its cache without mounting (the init script's `zfs mount -a`).
    subprocess.run(["zfs", "mount", "-a"], capture_output=True, timeout=120)
    return waiting


def _wait_gone(pid: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not _gone(pid) and time.monotonic() < deadline:
        time.sleep(0.1)


def _gone(pid: int) -> bool:
    """Every thread has exited. A killed daemon's main thread turns zombie first while its other
    threads still hold the control socket and the FUSE device; a new daemon then fails to start."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return True
    for t in tasks:
        try:
            state = (t / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state not in ("Z", "X"):
            return False
    return True


def _detach_mounts(force: bool = False) -> None:
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return
    if not force and daemon_pid() is not None:
        return  # a live daemon owns these mounts
    paths = [f[1] for f in (m.split() for m in mounts) if len(f) > 2 and f[2] == "fuse.zfs"]
    # deepest first; lazily, since nothing can answer for them any more
    for p in sorted(paths, key=lambda p: p.count("/"), reverse=True):
        subprocess.run(["umount", "-l", p.replace("\\040", " ")], capture_output=True)


def _pids_named(comm: str) -> list[int]:
    """Live processes named `comm` (a killed daemon stays a zombie where nothing reaps it)."""

    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if (d / "comm").read_text().strip() == comm and pid_running(int(d.name)):
                pids.append(int(d.name))
        except OSError:
            continue
    return pids


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except OSError:
        pass

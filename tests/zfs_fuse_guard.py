"""What keeps a hung zfs-fuse from stalling a test run.

zfs-fuse, the lab's stand-in for a ZFS kernel module, now and then stops answering (on pool v23
several mount changes at once have done it), and then every zfs command and every read on its
mounts waits. pytest-timeout fails a test at its limit with SIGALRM, once, and a signal does not
end a wait on a hung FUSE mount: a test or teardown stuck there would hold the run until CI's own
limit, printing nothing.

- `watch(item)` arms a watchdog for one run of a test. Past the test's timeout plus a margin, it
  restarts a hung daemon (which ends the waits: the test then fails and is run again by
  tests/integration/conftest.py); if the daemon answers, or the test is still stuck a margin
  later, it stops the run with every thread's stack and the zfs commands running.
- `restart_if_hung(item, then)` restarts a hung daemon and notes it for the end of the session.
"""

from __future__ import annotations

import faulthandler
import os
import sys
import threading
from pathlib import Path

import pytest

MARGIN = 240
NOTES = pytest.StashKey[list]()  # on the config: every restart, listed at the end of the session
RERUNS = pytest.StashKey[list]()  # on the config: the node ids run a second time
WAITING = pytest.StashKey[list]()  # on the item: what waited on the daemon when it was restarted
# A hang with one of these in flight is laid to esxdr's own sequence, not to the daemon: both
# hangs seen in CI were an unmount of a replica that a pool-v23 receive had just mounted.
OWN_SEQUENCE = (" mount ", " unmount ", " umount ")


def esxdrs_own(waiting: list[str]) -> list[str]:
    """The waiting commands that make a hang esxdr's own (a mount or unmount in flight)."""
    return [w for w in waiting if any(v in f" {w} " for v in OWN_SEQUENCE)]


def zfs_fuse_hung() -> bool:
    """Not answering, or answering but unable to create and destroy (what a hung daemon stops first)."""
    from esxdr.lab import zfsfuse

    st, pools = zfsfuse.check()
    if st == "hung":
        return True
    return bool(pools) and not zfsfuse.probe(f"{pools[0]}/esxdr-probe-{os.getpid()}")


def restart_if_hung(item, then: str) -> bool:
    from esxdr.lab import zfsfuse

    if not zfs_fuse_hung():
        return False
    waiting = zfsfuse.restart(sorted(Path("/var/lib").glob("esxdr-*/vdevs")))
    item.stash[WAITING] = waiting
    _note(item, f"{item.nodeid}: zfs-fuse was hung; restarted it, {then}. Waiting on it: "
          + ("; ".join(waiting) or "nothing"))
    return True


def _note(item, text: str) -> None:
    item.config.stash.setdefault(NOTES, []).append(text)
    tr = item.config.pluginmanager.get_plugin("terminalreporter")
    if tr is not None:
        tr.write_line("\n" + text, yellow=True)


class watch:  # noqa: N801 - used as a function: watch(item) ... .cancel()
    def __init__(self, item):
        self.item = item
        self.cancelled = False
        marker = item.get_closest_marker("timeout")
        self.limit = float((marker.args[0] if marker and marker.args else None)
                           or item.config.getoption("timeout", None) or item.config.getini("timeout") or 0)
        self.timer: threading.Timer | None = None
        self.restarting = False
        self.done = threading.Event()
        if self.limit > 0:
            self._arm(self.limit + MARGIN, self._first)

    def _arm(self, after: float, fn) -> None:
        self.timer = threading.Timer(after, fn)
        self.timer.daemon = True
        self.timer.start()

    def cancel(self) -> None:
        self.cancelled = True
        if self.timer is not None:
            self.timer.cancel()

    def _first(self) -> None:
        if self.cancelled:
            return
        try:
            hung = zfs_fuse_hung()
        except Exception:  # noqa: BLE001 - whatever went wrong, the stop below still comes
            hung = False
        if not hung:
            self._stop()
            return
        # Said before the restart: killing the daemon ends the test's wait at once, and the
        # runner then asks restarted() whether to run the test again.
        self.restarting = True
        try:
            restart_if_hung(self.item, f"the test was still running {self.limit + MARGIN:.0f} s in; "
                                       "it fails and runs again")
        except Exception:  # noqa: BLE001
            pass
        finally:
            self.done.set()
        self._arm(MARGIN, self._stop)

    def restarted(self) -> bool:
        """Whether this watchdog restarted the daemon during the run (waiting for it to finish)."""
        if self.restarting:
            self.done.wait(300)
        return self.restarting

    def _stop(self) -> None:
        if self.cancelled:
            return
        item = self.item
        capman = item.config.pluginmanager.get_plugin("capturemanager")
        if capman is not None:
            capman.suspend_global_capture(in_=True)
        err = sys.stderr
        err.write(f"\n\n{item.nodeid} still running past its timeout (its setup, call and teardown): "
                  "stopping the run\n")
        try:
            from esxdr.lab import zfsfuse

            err.write("zfs commands running:\n  " + "\n  ".join(zfsfuse.waiting_commands() or ["(none)"]) + "\n")
        except Exception as e:  # noqa: BLE001 - the report must not stop the exit
            err.write(f"(could not list zfs commands: {e})\n")
        err.flush()
        faulthandler.dump_traceback(file=err, all_threads=True)
        err.flush()
        os._exit(3)

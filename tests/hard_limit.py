"""A last stop for a test run that hangs where pytest-timeout cannot help.

pytest-timeout fails a test at its limit with SIGALRM, once: a teardown that then hangs (a zfs
command waiting on a hung zfs-fuse) would hold the run until CI's own limit, with nothing to
show. Past this margin the run stops, printing every thread's stack and what zfs was doing.
"""

from __future__ import annotations

import faulthandler
import os
import sys
import threading

HARD_LIMIT_MARGIN = 240


def hard_limit(item) -> threading.Timer | None:
    """Arm the stop for one run of `item` (its setup, call and teardown); the caller cancels it."""
    marker = item.get_closest_marker("timeout")
    limit = float((marker.args[0] if marker and marker.args else None) or item.config.getoption("timeout", None)
                  or item.config.getini("timeout") or 0)
    if limit <= 0:
        return None
    timer = threading.Timer(limit + HARD_LIMIT_MARGIN, _stop_the_run, args=(item, limit + HARD_LIMIT_MARGIN))
    timer.daemon = True
    timer.start()
    return timer


def _stop_the_run(item, after: float) -> None:
    capman = item.config.pluginmanager.get_plugin("capturemanager")
    if capman is not None:
        capman.suspend_global_capture(in_=True)
    err = sys.stderr
    err.write(f"\n\n{item.nodeid} still running after {after:.0f} s (its setup, call and teardown): "
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

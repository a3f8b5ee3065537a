"""Named crash and failure points for the reliability tests.

With ESXDR_FAULT_KILL=<point> in the environment, esxdr SIGKILLs itself when
it reaches that point, exactly as a power cut or an OOM kill would; the tests
then re-run and check that nothing was left half-done. With
ESXDR_FAULT_FAIL=<point>, esxdr raises :class:`InjectedFailure` there instead (a
step that fails as a remote error would: the run's error handling, post-callouts
and report are exercised). With ESXDR_FAULT_PAUSE=<point> and ESXDR_FAULT_PAUSE_FILE=<path>,
esxdr creates that file when it first reaches the point and waits there until the file is removed: a
test does something to the world at that exact moment (cuts the network between two boxes, say).
Unset, a checkpoint is two dictionary lookups.

Recovery runbooks check ``<prefix>-after-<step kind>`` after every step and
``<prefix>-in-<step kind>`` (fail) at the start of every step, with prefix
``drill`` (test start) or ``failover`` (failover, failback).
"""

from __future__ import annotations

import os
import signal

from esxdr.errors import RemoteError

POINTS = (
    "before-snapshot", "after-snapshot", "after-plan", "mid-stream", "after-receive",
    "after-hold", "after-release", "before-prune", "mid-prune", "before-record",
)


class InjectedFailure(RemoteError):
    """A failure injected by ESXDR_FAULT_FAIL (tests only)."""


def checkpoint(name: str) -> None:
    if os.environ.get("ESXDR_FAULT_KILL") == name:
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get("ESXDR_FAULT_PAUSE") == name and name not in _paused:
        # once per run: a step's point by kind and by id may be the same name
        _paused.add(name)
        _pause(name, os.environ["ESXDR_FAULT_PAUSE_FILE"])


_paused: set[str] = set()


def _pause(name: str, path: str, timeout: float = 600.0) -> None:
    import time

    with open(path, "w") as f:
        f.write(name + "\n")
    deadline = time.monotonic() + timeout
    while os.path.exists(path):
        if time.monotonic() > deadline:
            raise InjectedFailure(f"paused at {name} for {timeout:.0f}s: {path} was never removed")
        time.sleep(0.05)


def fail_point(name: str) -> None:
    if os.environ.get("ESXDR_FAULT_FAIL") == name:
        raise InjectedFailure(f"injected failure at {name} (ESXDR_FAULT_FAIL)",
                              hint="unset ESXDR_FAULT_FAIL and run the same command again")

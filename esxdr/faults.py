"""Named crash and failure points for the reliability tests.

With ESXDR_FAULT_KILL=<point> in the environment, esxdr SIGKILLs itself when
it reaches that point, exactly as a power cut or an OOM kill would; the tests
then re-run and check that nothing was left half-done. With
ESXDR_FAULT_FAIL=<point>, esxdr raises :class:`InjectedFailure` there instead (a
step that fails as a remote error would: the run's error handling, post-callouts
and report are exercised). Unset, a checkpoint is one dictionary lookup.

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


def fail_point(name: str) -> None:
    if os.environ.get("ESXDR_FAULT_FAIL") == name:
        raise InjectedFailure(f"injected failure at {name} (ESXDR_FAULT_FAIL)",
                              hint="unset ESXDR_FAULT_FAIL and run the same command again")

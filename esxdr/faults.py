"""Named crash points for the reliability tests.

With ESXDR_FAULT_KILL=<point> in the environment, esxdr SIGKILLs itself when
it reaches that point, exactly as a power cut or an OOM kill would; the tests
then re-run and check that nothing was left half-done. Unset, a checkpoint is
one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

POINTS = (
    "before-snapshot", "after-snapshot", "after-plan", "mid-stream", "after-receive",
    "after-hold", "after-release", "before-prune", "mid-prune", "before-record",
)


def checkpoint(name: str) -> None:
    if os.environ.get("ESXDR_FAULT_KILL") == name:
        os.kill(os.getpid(), signal.SIGKILL)

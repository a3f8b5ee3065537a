"""Runbook callouts: what runs before and after a step (site file ``protection_groups.*.callouts``).

Each kind of callout is an entry point of the ``esxdr.callouts`` group: a callable
``(env, args, timeout) -> (exit code, output)``. ``env`` says where the run is (ESXDR_SITE,
ESXDR_GROUP, ESXDR_RUN, ESXDR_STEP, ESXDR_STEP_KIND, ESXDR_PHASE, ESXDR_OUTCOME,
ESXDR_SNAPSHOT, ESXDR_VMS); ``args`` is what the site file gave it. esxdr's own kind,
``command`` (a program run with that environment), is registered like a third party's
(docs/plugins.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from esxdr import plugins
from esxdr.errors import EsxdrError, UsageError

GROUP = "esxdr.callouts"
Callout = Callable[[Mapping[str, str], Mapping[str, Any], float], tuple[int | None, str]]


def load(name: str) -> Callout:
    fn = plugins.load(GROUP, name, "callout plugin")
    if not callable(fn):
        raise UsageError(f"callout plugin {name!r} ({plugins.registry(GROUP)[name].value}) is not callable")
    return fn


def run(spec: Mapping[str, Any], env: Mapping[str, str]) -> tuple[int | None, str]:
    """Run one callout of a runbook step: (exit code, or None when it did not run; its output)."""
    name, args = ("command", {"argv": list(spec["argv"])}) if "argv" in spec else (spec["plugin"], spec.get("args") or {})
    try:
        fn = load(name)
        rc, text = fn(env, args, float(spec.get("timeout", 300)))
    except EsxdrError as e:  # not installed, timed out
        return None, e.message
    except Exception as e:  # noqa: BLE001 - a plugin's bug fails its callout, not the run's bookkeeping
        return None, f"{name}: {type(e).__name__}: {e}"
    return rc, text


def command(env: Mapping[str, str], args: Mapping[str, Any], timeout: float) -> tuple[int | None, str]:
    """The built-in kind: ``args["argv"]`` run on this host with ``env`` added (through the local
    transport: logged, timed, secrets masked)."""
    from esxdr.transport import LocalTransport

    argv = ["env", *(f"{k}={v}" for k, v in env.items()), *args["argv"]]
    r = LocalTransport("callout").run(argv, timeout=timeout, check=False)
    return r.returncode, (r.stdout + (("\n" if r.stdout and r.stderr else "") + r.stderr if r.stderr else "")).strip()

"""Wait for tasks and property conditions with WaitForUpdatesEx, never by sleep-polling.

One property filter covers every object being waited for (forty power-on tasks are one
filter and a handful of WaitForUpdatesEx calls, not forty polling loops), and the server
holds each call open until something changes, so a wait costs a few requests whatever
its length.

A real host holds WaitForUpdatesEx open until something changes or ``maxWaitSeconds``
passes. A wait therefore asks for the session's long-poll length (below its socket timeout,
:func:`esxdr.vsphere.session.long_poll_seconds`) and loops until its own deadline: a guest
whose heartbeat turns green two minutes after power-on is a few empty answers, never a
socket timeout. Each caller's deadline is named where it is decided; the defaults here:

- :data:`TASK_TIMEOUT_S`: a host task (register, reconfigure, power, resignature) that has
  not ended after ten minutes is stuck.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any

from pyVmomi import vim, vmodl

from esxdr.errors import TransientError
from esxdr.vsphere.session import Session, translate

PC = vmodl.query.PropertyCollector
State = dict[str, dict[str, Any]]  # moid → property path → value

_locks: dict[int, threading.Lock] = {}


TASK_TIMEOUT_S = 600.0


class WaitTimeout(TransientError):
    pass


def _lock(session: Session) -> threading.Lock:
    # The session's PropertyCollector keeps one update version: one waiter at a time.
    return _locks.setdefault(id(session), threading.Lock())


def watch(session: Session, objects: list[Any], paths: list[str] | dict[Any, list[str]],
          until: Callable[[State], bool], *,
          timeout: float, what: str, on_change: Callable[[State], None] | None = None) -> State:
    """Wait until ``until(state)`` holds for the watched properties of ``objects``.

    ``on_change`` sees every update first (the power-on runbook answers VM questions there).
    ``paths``: the property paths for every object, or per object type (type -> paths): a real
    host refuses a filter that asks a type for a path it does not have (InvalidProperty), such
    as ``runtime.question`` of a Task.
    Raises :class:`WaitTimeout` naming ``what`` when ``timeout`` passes.
    """
    if not objects:
        return {}
    pc = session.content.propertyCollector
    by_type: dict[Any, None] = {type(o): None for o in objects}
    spec = PC.FilterSpec(objectSet=[PC.ObjectSpec(obj=o, skip=False) for o in objects],
                         propSet=[PC.PropertySpec(type=t, pathSet=paths[t] if isinstance(paths, dict) else paths)
                                  for t in by_type])
    state: State = {o._moId: {} for o in objects}
    deadline = time.monotonic() + timeout
    poll = session.long_poll_s
    with _lock(session), session.errors(f"waiting for {what}"):
        flt = pc.CreateFilter(spec, partialUpdates=False)
        try:
            version = ""
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WaitTimeout(f"timed out after {timeout:.0f}s waiting for {what}",
                                      hint="the host is slow or stuck: look at its recent tasks and events")
                # Never longer than the long poll (the socket would give up first), never past
                # the deadline by more than the rounding up to a whole second.
                wait_s = min(poll, max(1, math.ceil(left)))
                upd = pc.WaitForUpdatesEx(version, PC.WaitOptions(maxWaitSeconds=wait_s))
                if upd is None:
                    continue  # maxWaitSeconds passed without a change: ask again until the deadline
                version = upd.version
                for fs in upd.filterSet or ():
                    for oc in fs.objectSet or ():
                        props = state.setdefault(oc.obj._moId, {})
                        for ch in oc.changeSet or ():
                            if ch.op == "remove":
                                props.pop(ch.name, None)
                            else:
                                props[ch.name] = ch.val
                if on_change is not None:
                    on_change(state)
                if until(state):
                    return state
        finally:
            try:
                flt.DestroyPropertyFilter()
            except Exception:  # noqa: BLE001 - the filter dies with the session anyway
                pass


TASK_PATHS = ["info.state", "info.error", "info.result"]


def task_states(session: Session, tasks: list[Any]) -> State:
    """moid -> the TASK_PATHS of each task, read now in ONE RetrievePropertiesEx (never
    ``task.info``: a lazy read per task, a ``Fetch`` on pyVmomi >= 8.0.1)."""
    if not tasks:
        return {}
    from esxdr.vsphere.inventory import retrieve

    spec = PC.FilterSpec(objectSet=[PC.ObjectSpec(obj=t, skip=False) for t in tasks],
                         propSet=[PC.PropertySpec(type=vim.Task, pathSet=TASK_PATHS)])
    return {oc.obj._moId: {p.name: p.val for p in oc.propSet or ()} for oc in retrieve(session, spec)}


def _task_done(props: dict[str, Any]) -> bool:
    return str(props.get("info.state")) in ("success", "error")


def wait_tasks(session: Session, tasks: list[Any], *, timeout: float = TASK_TIMEOUT_S, what: str = "tasks",
               on_change: Callable[[State], None] | None = None, raise_first: bool = True,
               extra: list[Any] | None = None, extra_paths: list[str] | None = None,
               settle: float = 0.0) -> list[Any]:
    """Wait for all ``tasks``; return their results in order (or the translated errors).

    ``extra`` objects (e.g. the VMs being powered on) are watched in the same filter with
    ``extra_paths`` so that ``on_change`` can react to them (answer a question). ``settle``: for a
    batch issued together, the completions gather that long between WaitForUpdatesEx calls
    (forty tasks ending within a second are then a few requests, not one per task).
    """
    if not tasks:
        return []
    objects = list(tasks) + list(extra or [])
    # Per type: the tasks get task paths, the extra objects (VMs) theirs, never each other's.
    paths: dict[Any, list[str]] = {type(t): TASK_PATHS for t in tasks}
    for o in extra or ():
        paths[type(o)] = list(extra_paths or [])
    ids = [t._moId for t in tasks]

    def done(state: State) -> bool:
        return all(_task_done(state.get(i, {})) for i in ids)

    def changed(state: State) -> None:
        if on_change is not None:
            on_change(state)
        if settle and not done(state):
            time.sleep(settle)

    state = watch(session, objects, paths, done, timeout=timeout, what=what, on_change=changed)
    out: list[Any] = []
    for i in ids:
        props = state[i]
        if str(props.get("info.state")) == "success":
            out.append(props.get("info.result"))
            continue
        e = task_error(session, props.get("info.error"), what)
        if raise_first:
            raise e
        out.append(e)
    return out


def task_error(session: Session, err: Any, what: str) -> Exception:
    """A task's ``info.error`` as esxdr's error for ``what`` (the fault's own message kept)."""
    # pyVmomi may hand info.error over already unwrapped: the fault itself, no `.fault`.
    fault = getattr(err, "fault", None) or (err if isinstance(err, vmodl.MethodFault)
                                            else vmodl.fault.SystemError(reason=str(getattr(err, "localizedMessage",
                                                                                            None) or "task failed")))
    if err is not None and getattr(err, "localizedMessage", None) and not getattr(fault, "msg", None):
        fault.msg = err.localizedMessage
    return translate(fault, what, endpoint=session.name)


def wait_task(session: Session, task: Any, *, timeout: float = TASK_TIMEOUT_S, what: str = "a task") -> Any:
    return wait_tasks(session, [task], timeout=timeout, what=what)[0]


def is_task(obj: Any) -> bool:
    return isinstance(obj, vim.Task)

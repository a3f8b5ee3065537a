"""Application-consistent protection groups: quiesced VMware snapshots around the ZFS snapshot.

``Engine._consistency()`` (esxdr/replication/engine.py) wraps the atomic ZFS snapshot of a group
whose ``consistency: application`` in :func:`quiesced`::

    with quiesced(site, group, say=...) as c:       # quiesced VMware snapshots taken
        take_snapshot(..., props={"esxdr:consistency": c.level})
    # VMware snapshots removed here, always (also when the body raised)

On enter, through the group's PRODUCTION vSphere endpoint:

1. find the group's datastores — the ``datastore`` names of its LUNs in the site file, and
   the datastores whose VMFS extents are the NAAs of its LUNs — and the VMs on them
   (one RetrievePropertiesEx: Datastore → vm);
2. by rule: a powered-off VM is consistent as it is (nothing to quiesce); a running VM
   without VMware Tools cannot be quiesced and is crash-consistent, and the summary says so;
3. CreateSnapshot_Task(memory=False, quiesce=True) on every other running VM, all issued
   first and awaited together on one property filter (WaitForUpdatesEx), with a timeout;
   a VM whose quiesce fails or times out falls back to crash-consistent with a warning.

On exit every VMware snapshot it created is removed (RemoveSnapshot_Task, in parallel),
including those whose task finished only after the timeout. A removal that fails is a loud
warning in the summary (a leftover snapshot grows until removed), never an exception that
would hide the ZFS result.

Level: "application" when every in-scope (running) VM was quiesced, "crash" when none was,
"mixed" otherwise. It is stored on the ZFS snapshot as ``esxdr:consistency``; read it back
with :func:`snapshot_consistency` / :func:`consistency_by_snapshot`.

If the production vSphere endpoint cannot be reached, the snapshot is taken anyway,
crash-consistent, with a warning: replication (the RPO) matters more than quiescing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from esxdr.errors import EsxdrError

PROPERTY = "esxdr:consistency"
LEVELS = ("application", "mixed", "crash")
# How long the quiesced snapshots may take before the ZFS snapshot is taken without them
# (crash-consistent). VMware Tools run the guest's VSS writers or freeze scripts first: on a
# busy database server that is minutes, not seconds. Longer delays replication (the RPO).
QUIESCE_TIMEOUT_S = 300.0
# Snapshot removal consolidates the changes written meanwhile: minutes on a busy VM.
REMOVE_TIMEOUT_S = 300.0
# A snapshot task still running at the quiesce deadline is cancelled; how long to wait for it
# to end (cancelled, or finished after all) before warning that it may leave a snapshot.
LATE_TIMEOUT_S = 120.0
SNAPSHOT_PREFIX = "esxdr-quiesce"

# Per-VM outcomes
QUIESCED = "quiesced"
FALLBACK = "crash-fallback"  # quiesce attempted and failed / timed out
SKIPPED_OFF = "skipped-powered-off"  # by rule: consistent
SKIPPED_NO_TOOLS = "skipped-no-tools"  # by rule: crash-consistent


# --------------------------------------------------------------------------- pure parts
@dataclass
class VmOutcome:
    name: str
    moid: str
    datastores: tuple[str, ...] = ()
    outcome: str = QUIESCED
    reason: str = ""
    snapshot: str | None = None  # moid of the VMware snapshot taken
    removed: bool | None = None  # None: nothing to remove
    seconds: float = 0.0

    @property
    def in_scope(self) -> bool:
        """Counts for the level: a running VM (powered-off ones are consistent by rule)."""
        return self.outcome != SKIPPED_OFF

    @property
    def consistency(self) -> str:
        return {QUIESCED: "application", SKIPPED_OFF: "consistent (powered off)"}.get(self.outcome, "crash")

    def to_dict(self) -> dict[str, object]:
        return {"vm": self.name, "outcome": self.outcome, "consistency": self.consistency, "reason": self.reason,
                "datastores": list(self.datastores), "snapshot_removed": self.removed,
                "seconds": round(self.seconds, 3)}


def level_of(outcomes: Iterable[VmOutcome]) -> str:
    """application if every in-scope VM was quiesced, crash if none was, mixed otherwise.

    No running VM at all is "application": nothing was writing, the disks are at rest."""
    scope = [o for o in outcomes if o.in_scope]
    quiesced_n = sum(1 for o in scope if o.outcome == QUIESCED)
    if quiesced_n == len(scope):
        return "application"
    if quiesced_n == 0:
        return "crash"
    return "mixed"


def group_datastore_filter(group: Any) -> tuple[set[str], set[str]]:
    """(datastore names, NAA hex digits) the site file gives for the group's LUNs."""
    names: set[str] = set()
    naas: set[str] = set()
    for ds in getattr(group, "datasets", ()):
        spec = (getattr(group, "luns", None) or {}).get(ds)
        if spec is None:
            continue
        if spec.datastore:
            names.add(spec.datastore)
        if spec.naa:
            naas.add(spec.naa.lower().removeprefix("naa."))
    return names, naas


def matches_group(ds_name: str, extents: Iterable[str], names: set[str], naas: set[str]) -> bool:
    return ds_name in names or any(e.lower().removeprefix("naa.") in naas for e in extents)


def snapshot_consistency(snapshot: Any) -> str | None:
    """The level recorded on a ZFS snapshot (:class:`esxdr.model.Snapshot`), or None (not recorded:
    taken before esxdr recorded it, or a DR copy received without properties)."""
    v = snapshot.prop(PROPERTY) if hasattr(snapshot, "prop") else None
    return v if v in LEVELS else None


def consistency_by_snapshot(observed: dict[str, Any], datasets: Iterable[str] | None = None) -> dict[str, str]:
    """Snapshot name → recorded level, over a group's observed datasets (``Zfs.observe`` output).

    A group snapshot is atomic across its datasets, so the level found on any of them holds
    for the snapshot name (useful on DR, where only some datasets may carry the property)."""
    out: dict[str, str] = {}
    for name, ds in observed.items():
        if datasets is not None and name not in set(datasets):
            continue
        for s in ds.snapshots:
            level = snapshot_consistency(s)
            if level and s.name not in out:
                out[s.name] = level
    return out


def describe(result: dict[str, Any]) -> list[str]:
    """Summary lines for a ``Quiesced.to_dict()`` (the run summary and reports)."""
    lines = [f"consistency: {result.get('level')}" + (f" via {result['endpoint']}" if result.get("endpoint") else "")]
    for vm in result.get("vms", []):
        extra = f" — {vm['reason']}" if vm.get("reason") else ""
        lines.append(f"  {vm['vm']}: {vm['outcome']} ({vm['consistency']}){extra}")
    for w in result.get("warnings", []):
        lines.append(f"  warning: {w}")
    return lines


# --------------------------------------------------------------------------- the context manager
@dataclass
class Quiesced:
    """The value of ``with quiesced(...)``: ``level`` and ``to_dict()``."""

    group: str
    endpoint: str | None = None
    datastores: list[str] = field(default_factory=list)
    vms: list[VmOutcome] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    reason: str = ""
    _level: str | None = None  # forced (e.g. vSphere unreachable)

    @property
    def level(self) -> str:
        return self._level or level_of(self.vms)

    def to_dict(self) -> dict[str, object]:
        return {"level": self.level, "endpoint": self.endpoint, "reason": self.reason,
                "datastores": self.datastores, "vms": [v.to_dict() for v in self.vms], "warnings": self.warnings,
                "quiesced": [v.name for v in self.vms if v.outcome == QUIESCED],
                "crash_consistent": [v.name for v in self.vms if v.outcome in (FALLBACK, SKIPPED_NO_TOOLS)],
                "leftover_snapshots": [v.name for v in self.vms if v.removed is False]}


class _QuiescedContext:
    def __init__(self, site: Any, group: Any, say: Callable[[str], None], timeout: float,
                 password: str | None, session: Any = None):
        self.site = site
        self.group = group
        self.say = say
        self.timeout = timeout
        self.password = password
        self.session = session
        self._own_session = session is None
        self.result = Quiesced(group=group.name, endpoint=group.vsphere_production)
        self._pending: dict[str, Any] = {}  # vm moid → CreateSnapshot task not finished at the timeout
        self._snapshots: dict[str, Any] = {}  # vm moid → snapshot ref

    # -- enter ---------------------------------------------------------------------
    def __enter__(self) -> Quiesced:
        r = self.result
        name = self.group.vsphere_production
        if not name or name not in self.site.vsphere:
            r._level, r.reason = "crash", f"no production vSphere endpoint {name!r} in the site file"
            self._warn(f"{self.group.name}: {r.reason}; the snapshot is crash-consistent")
            return r
        try:
            if self.session is None:
                from esxdr.vsphere.session import connect

                self.session = connect(self.site.vsphere[name], password=self.password)
            self._take()
        except EsxdrError as e:
            self._cleanup()
            r._level, r.reason = "crash", f"quiescing through {name} failed: {e.message}"
            self._warn(f"{self.group.name}: {r.reason}; the snapshot is crash-consistent")
        except BaseException:
            self._cleanup()
            raise
        return r

    def _warn(self, text: str) -> None:
        self.result.warnings.append(text)
        self.say(f"warning: {text}")

    def _take(self) -> None:
        from esxdr.vsphere.tasks import WaitTimeout, wait_tasks

        s, r, g = self.session, self.result, self.group
        names, naas = group_datastore_filter(g)
        if not names and not naas:
            r._level = "crash"
            r.reason = "the site file names no datastore or NAA for the group's LUNs"
            self._warn(f"{g.name}: {r.reason} (add naa:/datastore: to its datasets); crash-consistent")
            return
        datastores, vms = find_group_vms(s, names, naas)
        r.datastores = sorted(datastores)
        if not datastores:
            r._level = "crash"
            r.reason = f"none of the group's datastores ({', '.join(sorted(names | naas))}) is seen by {s.name}"
            self._warn(f"{g.name}: {r.reason}; crash-consistent")
            return
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        tasks: list[tuple[VmOutcome, Any]] = []
        for vm in sorted(vms, key=lambda v: v["name"]):
            o = VmOutcome(name=vm["name"], moid=vm["moid"], datastores=tuple(sorted(vm["datastores"])))
            r.vms.append(o)
            if vm["power_state"] != "poweredOn":
                o.outcome, o.reason = SKIPPED_OFF, f"{vm['power_state']}: its disks are at rest (consistent)"
                continue
            if not vm["tools_running"]:
                o.outcome, o.reason = SKIPPED_NO_TOOLS, "VMware Tools not running: cannot quiesce (crash-consistent)"
                self._warn(f"{o.name}: VMware Tools are not running; crash-consistent in this snapshot")
                continue
            ref = s.ref("VirtualMachine", vm["moid"])
            try:
                with s.errors(f"creating a quiesced snapshot of {o.name}"):
                    task = ref.CreateSnapshot_Task(
                        name=f"{SNAPSHOT_PREFIX}-{g.name}-{stamp}",
                        description=f"esxdr: quiesced for the ZFS snapshot of protection group {g.name}; "
                                    "removed right after (safe to delete if left over)",
                        memory=False, quiesce=True)
            except EsxdrError as e:
                o.outcome, o.reason = FALLBACK, e.message
                self._warn(f"{o.name}: quiesce failed ({e.message}); crash-consistent in this snapshot")
                continue
            tasks.append((o, task))
        if not tasks:
            return
        self.say(f"{g.name}: quiescing {len(tasks)} VM(s) through {s.name}: " + ", ".join(o.name for o, _ in tasks))
        started = time.monotonic()
        try:
            results = wait_tasks(s, [t for _, t in tasks], timeout=self.timeout,
                                 what=f"quiesced snapshots of {len(tasks)} VM(s)", raise_first=False)
        except WaitTimeout:
            results = self._after_timeout([t for _, t in tasks])
        except EsxdrError as e:
            # The wait itself failed (the connection dropped): the host goes on taking the
            # snapshots, so every task is handed to the cleanup, which waits for them and
            # removes what they made, instead of leaving snapshots on production VMs.
            for o, task in tasks:
                self._pending[o.moid] = task
                o.outcome, o.reason = FALLBACK, f"the wait for its quiesce failed: {_short(e.message)}"
            raise
        elapsed = time.monotonic() - started
        for (o, task), res in zip(tasks, results, strict=True):
            o.seconds = elapsed
            if res is _PENDING:
                self._pending[o.moid] = task
                o.outcome, o.reason = FALLBACK, f"quiesce did not finish within {self.timeout:.0f}s"
                self._warn(f"{o.name}: quiesce timed out after {self.timeout:.0f}s; crash-consistent in this snapshot")
            elif isinstance(res, EsxdrError):
                o.outcome, o.reason = FALLBACK, _short(res.message)
                self._warn(f"{o.name}: quiesce failed ({o.reason}); crash-consistent in this snapshot")
            else:
                self._snapshots[o.moid] = res
                o.snapshot = getattr(res, "_moId", None)
                o.outcome = QUIESCED

    def _after_timeout(self, tasks: list[Any]) -> list[Any]:
        """Results of tasks read once (one property read) after the wait timed out (_PENDING
        for unfinished ones, and for all when that read fails: the cleanup waits for them)."""
        from esxdr.vsphere.tasks import task_error, task_states

        try:
            states = task_states(self.session, tasks)
        except EsxdrError:
            states = {}
        out: list[Any] = []
        for t in tasks:
            props = states.get(t._moId) or {}
            state = str(props.get("info.state"))
            if state == "success":
                out.append(props.get("info.result"))
            elif state == "error":
                out.append(task_error(self.session, props.get("info.error"), "quiesced snapshot"))
            else:
                try:
                    t.CancelTask()
                except Exception:  # noqa: BLE001 - not every task is cancellable
                    pass
                out.append(_PENDING)
        return out

    # -- exit ----------------------------------------------------------------------
    def __exit__(self, *exc: object) -> None:
        self._cleanup()
        return None

    def _cleanup(self) -> None:
        """Remove every VMware snapshot this created; never raises."""
        s = self.session
        if s is None:
            return
        try:
            self._adopt_late_snapshots()
            if self._snapshots:
                self._remove()
        except Exception as e:  # noqa: BLE001 - cleanup reports, it must not mask the caller's outcome
            for o in self.result.vms:
                if o.moid in self._snapshots and o.removed is None:
                    o.removed = False
            self._warn(f"removing the quiesce snapshots failed: {getattr(e, 'message', e)}; remove the "
                       f"'{SNAPSHOT_PREFIX}-…' snapshots by hand")
        finally:
            self._snapshots.clear()
            if self._own_session:
                s.close()
                self.session = None

    def _adopt_late_snapshots(self) -> None:
        """A CreateSnapshot that finished after the timeout still made a snapshot: remove it too."""
        from esxdr.vsphere.tasks import WaitTimeout, wait_tasks

        if not self._pending:
            return
        moids = list(self._pending)
        try:
            results = wait_tasks(self.session, [self._pending[m] for m in moids], timeout=LATE_TIMEOUT_S,
                                 what="late quiesced snapshots", raise_first=False)
        except WaitTimeout:
            names = [o.name for o in self.result.vms if o.moid in self._pending]
            self._warn("snapshot tasks still running after the timeout for " + ", ".join(names) +
                       f"; check for '{SNAPSHOT_PREFIX}-…' snapshots on them")
            results = [None] * len(moids)
        for moid, res in zip(moids, results, strict=True):
            if res is not None and not isinstance(res, EsxdrError):
                self._snapshots[moid] = res
        self._pending.clear()

    def _remove(self) -> None:
        from esxdr.vsphere.tasks import WaitTimeout, wait_tasks

        s = self.session
        by_moid = {o.moid: o for o in self.result.vms}
        tasks, owners = [], []
        for moid, snap in self._snapshots.items():
            o = by_moid.get(moid)
            try:
                with s.errors(f"removing the quiesce snapshot of {o.name if o else moid}"):
                    tasks.append(snap.RemoveSnapshot_Task(removeChildren=False, consolidate=True))
                owners.append(o)
            except EsxdrError as e:
                if o:
                    o.removed = False
                self._warn(f"{o.name if o else moid}: could not remove its quiesce snapshot: {e.message}; "
                           "remove it by hand (it grows until removed)")
        if not tasks:
            return
        try:
            results = wait_tasks(s, tasks, timeout=REMOVE_TIMEOUT_S, what=f"removing {len(tasks)} quiesce snapshot(s)",
                                 raise_first=False)
        except WaitTimeout as e:
            results = [e] * len(tasks)
        for o, res in zip(owners, results, strict=True):
            ok = not isinstance(res, EsxdrError)
            if o:
                o.removed = ok
            if not ok:
                self._warn(f"{o.name if o else '?'}: removing its quiesce snapshot failed ({_short(res.message)}); "
                           "remove it by hand (it grows until removed)")
        self.say(f"{self.group.name}: removed {sum(1 for o in owners if o and o.removed)} quiesce snapshot(s)")


class _Pending:
    def __repr__(self) -> str:
        return "<pending>"


_PENDING = _Pending()


def _short(msg: str) -> str:
    # task errors read "quiesced snapshots of 2 VM(s) on esx: ApplicationQuiesceFault: …": keep the cause
    for marker in (": ",):
        parts = msg.split(marker)
        if len(parts) > 2:
            return marker.join(parts[-2:])
    return msg


def find_group_vms(session: Any, names: set[str], naas: set[str]) -> tuple[list[str], list[dict[str, Any]]]:
    """(the group's datastores by name or NAA, the VMs on them), from one property read."""
    from esxdr.vsphere.inventory import datastore_vms

    return datastore_vms(session, lambda name, extents: matches_group(name, extents, names, naas))


def quiesced(site: Any, group: Any, *, say: Callable[[str], None] = lambda s: None,
             timeout: float = QUIESCE_TIMEOUT_S, password: str | None = None, session: Any = None) -> _QuiescedContext:
    """The context manager ``Engine._consistency()`` uses for ``consistency: application`` groups.

    ``session`` (an open :class:`esxdr.vsphere.session.Session`, left open) and ``password``
    are for tests and callers that already hold a session; otherwise the production
    endpoint is connected with the site's password reference and logged out on exit."""
    return _QuiescedContext(site, group, say, timeout, password, session)

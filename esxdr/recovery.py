"""Apply recovery runbooks (drill start and cleanup) with a journal, and write their reports.

Control flow: drill lock → observe (DR datasets, DR target, DR host: one read each) →
pure plan (:mod:`esxdr.plan.runbook`) → walk the steps. Dry-run stops after the plan,
so dry-run and apply share everything up to the first side effect.

The journal (``<state_dir>/drills/<group>.json``) is written before and after every
step and before every object is created (intent first). A run killed anywhere is
re-run with the same command: completed steps are skipped, and each step checks what
exists before acting, so a step cut in the middle is finished rather than repeated.
``test cleanup`` uses the journal when it exists AND observes (clones under the test
container, the drill's target IQNs, VMs on the drill datastores), so it finishes
even when the journal is gone or half-written.

The drill takes its own lock (``<group>.drill``), not the replication lock:
replication into the DR datasets goes on while the clones are in use.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from esxdr.errors import ConflictError, EsxdrError, LockHeld, UsageError
from esxdr.faults import checkpoint, fail_point
from esxdr.fmt import clock, human_duration
from esxdr.lock import GroupLock
from esxdr.plan import runbook as rb
from esxdr.targets.manifest import Manifest, Naa
from esxdr.util import write_json
from esxdr.zfs import Zfs

Say = Callable[[str], None]


class CalloutFailed(ConflictError):
    """A pre-callout said no: the run stops before the step (exit 3, a decision is needed)."""

    @classmethod
    def of(cls, group: str, step: rb.Step, ran: dict[str, Any]) -> CalloutFailed:
        last = (ran.get("output") or "").strip().splitlines()
        why = f"exit {ran['rc']}" if ran.get("rc") is not None else (last[-1] if last else "did not run")
        return cls(f"pre-callout of step {step.id} failed ({why}): {ran['command']}"
                   + (f"\n  {last[-1]}" if last and ran.get("rc") is not None else "")
                   + f"\nthe run stopped before {step.id}; completed steps stay done",
                   hint=f"fix what the callout checks (or protection_groups.{group}.callouts.{ran.get('key')} "
                        "in the site file), then run the same command again: it continues at this step")


# --------------------------------------------------------------------------- where things come from
def target_transport(server):  # StorageServer -> Transport
    """Where the DR target's admin commands (tgtadm) run.

    The DR service account's forced command (`esxdr serve`) allows zfs only, so the
    target is administered locally when it runs here: the server is ``local``, or its
    portal is a loopback address (a target listening on loopback is on this machine).
    Otherwise through the server's own transport (an account allowed to run the
    target's admin tool).
    """
    from esxdr.transport import LocalTransport, for_server
    from esxdr.vsphere.session import is_loopback

    if server.local or (server.target and is_loopback(server.target.portal_address)):
        return LocalTransport(server.name)
    return for_server(server)


def resolve_manifest(site, group, dr_zfs=None, explicit: str | None = None, *,
                     pin_first_use: bool = True) -> tuple[Manifest, str]:
    """The production identities of the group's LUNs, and where they came from. Precedence:

    1. ``--manifest FILE`` (the user said so; its LUN files must still lie inside their datasets);
    2. the manifest pinned on this box (``<state_dir>/pins/<group>.manifest.json``), checked against
       the one replication shipped to the DR root (``esxdr:manifest.*``): a shipped manifest is
       untrusted input (production's key can write it), so it is validated field by field, pinned
       the first time it is used here, and a later change of identity or paths is refused until
       ``esxdr target accept`` (:func:`esxdr.replication.shipping.trusted`; ``pin_first_use=False`` for read-only
       commands that may run off the DR box). A shipped manifest that fails validation is refused,
       never skipped for a weaker source;
    3. the production manifest named in the lab's state (``lab.json`` beside the site file);
    4. the site file's ``datasets[].naa`` with the LUN file convention ``<mountpoint>/lun.img``
       (product ids unknown: a volume whose header names another product id will not mount as-is).
    """
    from esxdr.errors import ManifestError, RemoteError
    from esxdr.replication import shipping
    from esxdr.targets import manifest as mf

    if explicit:
        return shipping.check_for_group(mf.load(explicit), group, explicit, untrusted=False), explicit
    shipped = None
    if dr_zfs is not None:
        try:
            shipped = shipping.read(dr_zfs, group.dr_root, group)
        except RemoteError:
            shipped = None  # DR unreadable: the pin (if any) still says what production served
        except ManifestError as e:
            raise ManifestError(e.message, hint=shipping.refusal_hint(site.state_dir, group.name)) from None
    if shipped is not None and not shipped.logical_units:
        shipped = None
    found = shipping.trusted(site.state_dir, group, shipped, pin_first_use=pin_first_use)
    if found is not None:
        return found
    lab = Path(site.path).parent / "lab.json"
    try:
        path = json.loads(lab.read_text()).get("production_manifest")
    except (OSError, ValueError):
        path = None
    if path and Path(path).exists():
        m = shipping.for_group(mf.load(path), list(group.datasets))
        if m.logical_units:
            return m, path
    return site_manifest(group), "site file (datasets[].naa)"


def site_manifest(group) -> Manifest:
    from esxdr.targets.manifest import Backing, LogicalUnit, Target, View

    units = []
    for i, ds in enumerate(group.datasets):
        spec = group.luns.get(ds)
        if not spec or not spec.naa:
            continue
        units.append(LogicalUnit(naa=Naa.parse(spec.naa), backing=Backing(kind="file", path=f"/{ds}/lun.img",
                                                                           dataset=ds),
                                 size_bytes=0, alias=ds.rsplit("/", 1)[-1], views=[View(lun=i + 1)]))
    if not units:
        raise UsageError(f"no target manifest for {group.name}: nothing shipped with the replica and no "
                         "datasets[].naa in the site file", hint="pass one with --manifest FILE (esxdr target export)")
    return Manifest(targets=[Target(iqn=f"iqn.2024-01.io.esxdr:{rb.safe_name(group.name)}")], logical_units=units)


# --------------------------------------------------------------------------- journal
class Journal:
    def __init__(self, state_dir: str, group: str):
        self.path = Path(state_dir) / "drills" / f"{group}.json"
        self.data: dict[str, Any] = {}

    def load(self) -> dict[str, Any] | None:
        try:
            self.data = json.loads(self.path.read_text())
            return self.data
        except (OSError, ValueError):
            self.data = {}
            return None

    def save(self) -> None:
        write_json(self.path, self.data)

    def forget(self) -> None:
        self.path.unlink(missing_ok=True)

    def step(self, sid: str) -> dict[str, Any]:
        return self.data.setdefault("steps", {}).setdefault(sid, {})

    def done(self, sid: str) -> bool:
        return self.data.get("steps", {}).get(sid, {}).get("outcome") == "done"

    def intend(self, key: str, value: str) -> None:
        """Record an object BEFORE creating it, so a kill right after creation cannot orphan it."""
        items = self.data.setdefault("created", {}).setdefault(key, [])
        if value not in items:
            items.append(value)
            self.save()


# --------------------------------------------------------------------------- result
@dataclass
class RunRecord:
    kind: str
    group: str
    site: str
    started: float
    dry_run: bool = False
    runbook: rb.Runbook | None = None
    steps: list[dict[str, Any]] = field(default_factory=list)
    datastores: list[dict[str, Any]] = field(default_factory=list)
    vms: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    snapshot: str | None = None
    snapshot_created: float | None = None
    last_heartbeat: float | None = None
    finished: float | None = None
    outcome: str = "running"
    error: str | None = None
    resumed: bool = False
    requests: dict[str, int] = field(default_factory=dict)
    requests_by_method: dict[str, int] = field(default_factory=dict)  # vSphere SOAP, by method (budgeting)
    manifest_origin: str | None = None
    new_naa: bool = False
    consistency: str | None = None  # of the recovered snapshot, as recorded by replication
    report_json: str | None = None
    report_html: str | None = None

    @property
    def rpo_seconds(self) -> float | None:
        return (self.started - self.snapshot_created) if self.snapshot_created else None

    @property
    def rto_seconds(self) -> float | None:
        return (self.last_heartbeat - self.started) if self.last_heartbeat else None

    def to_dict(self) -> dict[str, Any]:
        def iso(t: float | None) -> str | None:
            return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds") if t else None

        return {"kind": self.kind, "group": self.group, "site": self.site, "dry_run": self.dry_run,
                "outcome": self.outcome, "error": self.error, "resumed": self.resumed,
                "started": iso(self.started), "finished": iso(self.finished),
                "duration_seconds": round(self.finished - self.started, 1) if self.finished else None,
                "snapshot": self.snapshot, "snapshot_created": iso(self.snapshot_created),
                "rpo_seconds": round(self.rpo_seconds) if self.rpo_seconds is not None else None,
                "rto_seconds": round(self.rto_seconds, 1) if self.rto_seconds is not None else None,
                "new_naa": self.new_naa, "manifest": self.manifest_origin, "consistency": self.consistency,
                "steps": self.steps, "datastores": self.datastores, "vms": self.vms, "notes": self.notes,
                "requests": self.requests, "requests_by_method": self.requests_by_method,
                "runbook": self.runbook.to_dict() if self.runbook else None,
                "report": {"json": self.report_json, "html": self.report_html}}


# --------------------------------------------------------------------------- the drill
class Drill:
    """``esxdr test start`` and ``esxdr test cleanup`` for one protection group."""

    fault_prefix = "drill"  # ESXDR_FAULT_KILL=<prefix>-after-<step kind>

    def __init__(self, site, group_name: str | None, *, say: Say = lambda s: None):
        self.site = site
        self.g = site.group(group_name)
        self.say = say
        self.journal = Journal(site.state_dir, self.g.name)
        self.dst: Any = None  # replication Side of the DR storage server
        self.session: Any = None
        self.host_state: Any = None
        self.members: dict[str, Any] = {}  # a vCenter DR endpoint: its hosts (HostState) by name
        self.manifest_origin: str | None = None
        self.server = site.storage_server(self.g.destination)
        self._tgt_transport = None
        self._verified: Any = None  # the host as the verify step of this run read it
        self._vm_cache: dict[str, tuple[str, str, str | None]] = {}  # name -> (moid, power, question) this run
        self.http_requests = 0  # datastore HTTP (.vmx files)

    # -- connections --------------------------------------------------------
    def _dr(self):
        if self.dst is None:
            from esxdr.replication.sides import open_side

            self.dst = open_side(self.site, self.g.destination)
        return self.dst

    def _target(self):
        if self.server.target is None:
            raise UsageError(f"storage server {self.server.name} has no target: section",
                             hint="add target: {stack: tgt, portal: ADDR:PORT, control_port: N} to the site file")
        if self.server.target.stack != "tgt":
            raise UsageError(f"drills present clones through tgt only so far; {self.server.name} runs "
                             f"{self.server.target.stack}")
        if self._tgt_transport is None:
            self._tgt_transport = target_transport(self.server)
        return self._tgt_transport

    def _vsphere(self):
        if self.g.vsphere_dr is None:
            return None
        if self.session is None:
            from esxdr.vsphere.session import connect

            self.session = connect(self.site.endpoint(self.g.vsphere_dr))
        return self.session

    def _host(self, *, with_vms: bool = True):
        s = self._vsphere()
        if s is None:
            return None
        from esxdr.vsphere.recovery import read_dr

        # One property read, whatever the number of hosts; a vCenter's hosts are merged into one
        # view for the cluster-wide steps and kept apart in self.members for the per-host ones.
        self.host_state, self.members = read_dr(s, self.site.endpoint(self.g.vsphere_dr), with_vms=with_vms)
        return self.host_state

    def _view(self, h):  # HostState -> HostView
        from esxdr.vsphere.recovery import view_of

        return view_of(h, self.members)

    def _dr_network(self, h):
        if self.members:
            return {n: self.site.dr_network.get(n) for n in self.members}
        return self.site.dr_network.get(h.name) or self.site.dr_network.get(self.g.vsphere_dr or "")

    def close(self) -> None:
        for t in (self.dst.transport if self.dst else None, self._tgt_transport):
            if t is not None:
                try:
                    t.close()
                except Exception:  # noqa: BLE001 - closing is best effort
                    pass
        if self.session is not None:
            self.session.close()

    def _served(self) -> tuple[list[rb.ServedLun], list]:
        from esxdr.targets import tgt

        targets, _ = tgt.observe_native(self._target(), self.server.target.control_port)  # type: ignore[union-attr]
        served = []
        for t in targets:
            for n, lu in t.luns.items():
                if lu.device_type == "controller" or not lu.path:
                    continue
                served.append(rb.ServedLun(naa=tgt.naa_from_scsi_id(lu.scsi_id, t.tid, n).hex, target=t.iqn,
                                           tid=t.tid, lun=n, path=lu.path))
        return served, targets

    def _lock(self) -> GroupLock:
        return GroupLock(self.site.state_dir, f"{self.g.name}.drill")

    # -- test start ---------------------------------------------------------
    def plan_start(self, point: str = "latest", new_naa: bool = False, manifest_path: str | None = None,
                   storage_only: bool = False, initiators: tuple[str, ...] = ()) -> rb.Runbook:
        dst = self._dr()
        dr_obs = dst.zfs.observe([self.g.dr_root])
        manifest, origin = resolve_manifest(self.site, self.g, dst.zfs, manifest_path)
        self.manifest_origin = origin
        served, _ = self._served()
        # Storage only (esxdr target present-clone): without a host the runbook ends at "present".
        h = None if storage_only else self._host()
        if storage_only and not initiators and self.g.vsphere_dr:
            # The presentation admits named initiators only: without --allow-initiator, the DR hosts'
            # own (one property read, no VMs).
            v = self._host(with_vms=False)
            initiators = tuple(x.iqn for x in self._view(v).hosts if x.iqn) if v else ()
        return rb.plan_test_start(rb.DrillInputs(
            initiators=tuple(initiators),
            group=self.g, manifest=manifest, dr_obs=dr_obs, point=point, new_naa=new_naa,
            host=self._view(h) if h else None, served=served, dr_portal=self.server.target.portal,  # type: ignore[union-attr]
            dr_network=self._dr_network(h) if h else None, manifest_origin=origin,
            dr_mount_base=dr_mount_base(dst.zfs, self.g.dr_root, dr_obs)))

    def start(self, point: str = "latest", new_naa: bool = False, dry_run: bool = False,
              manifest_path: str | None = None, storage_only: bool = False,
              initiators: tuple[str, ...] = ()) -> RunRecord:
        rec = RunRecord(kind="test-start", group=self.g.name, site=self.site.name, started=time.time(), dry_run=dry_run)
        return self._guarded(rec, lambda: self.plan_start(point, new_naa, manifest_path, storage_only, initiators),
                             lambda: self._start(rec, point, new_naa, manifest_path, storage_only, initiators),
                             busy=f"another drill of {self.g.name} is running",
                             hint="wait for it, or stop it and run esxdr test cleanup")

    def _guarded(self, rec: RunRecord, plan: Callable[[], rb.Runbook], walk: Callable[[], None], *,
                 busy: str, hint: str) -> RunRecord:
        """The frame of every run: --dry-run plans and describes; otherwise ``walk`` under the
        group's lock; either way the record is finished (report, journal) and connections closed."""
        try:
            if rec.dry_run:
                rec.runbook = plan()
                rec.snapshot, rec.snapshot_created = rec.runbook.snapshot, rec.runbook.snapshot_created
                rec.consistency = rec.runbook.consistency
                rec.manifest_origin = self.manifest_origin
                rec.outcome = "dry-run"
                return rec
            try:
                with self._lock():
                    walk()
            except LockHeld as e:
                raise LockHeld(f"{busy} (pid {e.pid})", pid=e.pid, hint=hint) from None
        finally:
            self._finish(rec)
            self.close()
        return rec

    def _start(self, rec: RunRecord, point: str, new_naa: bool, manifest_path: str | None,
               storage_only: bool = False, initiators: tuple[str, ...] = ()) -> None:
        j = self.journal
        prev = j.load()
        if prev and prev.get("kind") == "test":
            if point not in ("latest", prev.get("snapshot")) or new_naa != prev.get("new_naa", False) \
                    or storage_only != prev.get("storage_only", False):
                raise ConflictError(f"a drill of {self.g.name} at {prev.get('snapshot')} is already set up "
                                    f"(started {datetime.fromtimestamp(prev['started'], UTC):%Y-%m-%d %H:%M:%S}Z)",
                                    hint=f"clean it up first: esxdr test cleanup {self.g.name}")
            point, new_naa = prev["snapshot"], prev.get("new_naa", False)
            storage_only = prev.get("storage_only", False)
            rec.started = prev["started"]
            rec.resumed = True
            self.say(f"resuming the drill of {self.g.name} started "
                     f"{datetime.fromtimestamp(prev['started'], UTC):%H:%M:%S}Z at @{point}")
        plan = self.plan_start(point, new_naa, manifest_path, storage_only, initiators)
        rec.runbook = plan
        rec.snapshot, rec.snapshot_created, rec.new_naa = plan.snapshot, plan.snapshot_created, new_naa
        rec.consistency = plan.consistency
        rec.manifest_origin = self.manifest_origin
        rec.notes += plan.notes
        if not prev:
            j.data = {"kind": "test", "group": self.g.name, "started": rec.started, "snapshot": plan.snapshot,
                      "snapshot_created": plan.snapshot_created, "new_naa": new_naa,
                      "storage_only": storage_only,
                      "luns": next(s.params["luns"] for s in plan.steps if s.kind == "present"),
                      "held": [], "created": {}, "steps": {}, "vms": {}, "datastores": []}
            j.save()
        self._walk(rec, plan, START_STEPS)
        j.data["complete"] = True
        j.save()
        rec.datastores = j.data.get("datastores", [])
        rec.vms = [{"name": n, **v, "heartbeat_after_s": round(v["heartbeat_at"] - rec.started, 1)
                    if v.get("heartbeat_at") else None} for n, v in j.data.get("vms", {}).items()]
        beats = [v["heartbeat_at"] for v in j.data.get("vms", {}).values() if v.get("heartbeat_at")]
        rec.last_heartbeat = max(beats) if beats else None

    # -- walking ------------------------------------------------------------
    def _walk(self, rec: RunRecord, plan: rb.Runbook, table: dict[str, Callable]) -> None:
        j = self.journal
        for step in plan.steps:
            entry: dict[str, Any] = {"id": step.id, "kind": step.kind, "title": step.title, "reason": step.reason, "evidence": []}
            if j.done(step.id):
                old = j.step(step.id)
                entry.update({k: old.get(k) for k in ("start", "end", "evidence")}, outcome="done earlier")
                rec.steps.append(entry)
                continue
            t0 = time.time()
            js: dict[str, Any] = j.step(step.id)
            js.update(title=step.title, start=t0 - rec.started, outcome="running")
            j.save()
            entry.update(start=t0 - rec.started)
            rec.steps.append(entry)
            callouts = step.params.get("callouts") or {}
            ran: list[dict[str, Any]] = []
            try:
                for c in callouts.get("pre", ()):
                    ran.append(self._callout(rec, step, "pre", c, "running"))
                    if ran[-1]["outcome"] != "ok":
                        raise CalloutFailed.of(self.g.name, step, ran[-1])
                fail_point(f"{self.fault_prefix}-in-{step.kind}")
                evidence = table[step.kind](self, step, rec) or []
            except BaseException as e:
                entry.update(end=time.time() - rec.started, outcome="failed",
                             evidence=[getattr(e, "message", None) or str(e) or type(e).__name__])
                # Post-callouts run whatever happened (they notify, release, undo what a pre did).
                for c in callouts.get("post", ()):
                    ran.append(self._callout(rec, step, "post", c, "failed"))
                entry["callouts"] = ran
                js.update(end=entry["end"], outcome="failed", evidence=entry["evidence"], callouts=ran)
                j.save()
                raise
            for c in callouts.get("post", ()):
                ran.append(self._callout(rec, step, "post", c, "done"))
            end = time.time() - rec.started
            entry.update(end=end, outcome="done", evidence=evidence)
            js.update(end=end, outcome="done", evidence=evidence)
            if ran:
                entry["callouts"] = js["callouts"] = ran
            j.save()
            line = f"[{clock(t0 - rec.started)}] {step.title}"
            if evidence:
                line += f"    evidence: {evidence[0]}"
            self.say(line)
            for more in evidence[1:4]:
                self.say(f"        {more}")
            checkpoint(f"{self.fault_prefix}-after-{step.kind}")
            checkpoint(f"{self.fault_prefix}-after-{step.id}")  # every step by its id (the kill-chain tests)

    def _callout(self, rec: RunRecord, step: rb.Step, phase: str, c: dict[str, Any], outcome: str) -> dict[str, Any]:
        """Run one callout on this host (through the local transport: logged, timed, secrets masked).
        It learns where it is from the environment: ESXDR_GROUP, ESXDR_RUN, ESXDR_STEP, ESXDR_STEP_KIND,
        ESXDR_PHASE, ESXDR_OUTCOME (post: done or failed), ESXDR_SNAPSHOT, ESXDR_VMS (power steps)."""
        from esxdr.transport import LocalTransport
        from esxdr.transport.base import mask

        env = {"ESXDR_SITE": self.site.name, "ESXDR_GROUP": self.g.name, "ESXDR_RUN": rec.kind,
               "ESXDR_STEP": step.id, "ESXDR_STEP_KIND": step.kind, "ESXDR_PHASE": phase,
               "ESXDR_OUTCOME": outcome, "ESXDR_SNAPSHOT": rec.snapshot or self.journal.data.get("snapshot") or "",
               "ESXDR_VMS": " ".join(step.params.get("vms") or ())}
        argv = ["env", *(f"{k}={v}" for k, v in env.items()), *c["argv"]]
        shown = shlex.join(c["argv"])
        t0 = time.time()
        out: dict[str, Any] = {"phase": phase, "command": mask(shown), "key": c.get("key")}
        try:
            r = LocalTransport("callout").run(argv, timeout=c.get("timeout", 300), check=False)
            text = (r.stdout + (("\n" if r.stdout and r.stderr else "") + r.stderr if r.stderr else "")).strip()
            out.update(rc=r.returncode, outcome="ok" if r.returncode == 0 else "failed")
        except EsxdrError as e:  # not installed, timed out
            text = e.message
            out.update(rc=None, outcome="failed")
        out.update(seconds=round(time.time() - t0, 2), output=mask(text[-4000:]))
        last = text.splitlines()[-1] if text else ""
        self.say(f"        {phase}-callout {shown}: " + ("ok" if out["outcome"] == "ok" else
                                                         f"FAILED (exit {out['rc']})") + (f" — {last}" if last else ""))
        if phase == "post" and out["outcome"] != "ok":
            rec.notes.append(f"post-callout of {step.id} failed (exit {out['rc']}): {mask(shown)}"
                             + (f" — {mask(last)}" if last else ""))
        return out

    def _finish(self, rec: RunRecord) -> None:
        import sys

        rec.finished = time.time()
        if self.session is not None:
            rec.requests["vsphere"] = self.session.requests
            rec.requests_by_method = dict(sorted(self.session.by_method().items()))
        if self.http_requests:
            rec.requests["vsphere datastore http"] = self.http_requests
        if self.dst is not None:
            rec.requests[f"{self.dst.name} commands"] = self.dst.transport.stats.commands
        if rec.outcome == "running":
            exc = sys.exc_info()[1]
            rec.outcome = "failed" if exc else "ok"
            if exc is not None:
                rec.error = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        if rec.dry_run or (rec.kind == "test-cleanup" and rec.runbook is not None and rec.runbook.empty):
            return  # nothing happened: no evidence to keep
        from esxdr import report

        try:
            rec.report_json, rec.report_html = report.write(self.site.state_dir, rec.to_dict())
        except OSError as e:  # a report that cannot be written must not hide the run's own outcome
            rec.notes.append(f"report not written: {e}")

    # -- test cleanup -------------------------------------------------------
    def plan_cleanup(self) -> rb.Runbook:
        dst = self._dr()
        dr_obs = dst.zfs.observe([self.g.dr_root])
        served, _ = self._served()
        h = self._host()
        return rb.plan_test_cleanup(rb.CleanupInputs(group=self.g, dr_obs=dr_obs, served=served,
                                                     host=self._view(h) if h else None, journal=self.journal.load()))

    def cleanup(self, dry_run: bool = False) -> RunRecord:
        rec = RunRecord(kind="test-cleanup", group=self.g.name, site=self.site.name, started=time.time(),
                        dry_run=dry_run)

        def walk() -> None:
            plan = self.plan_cleanup()
            rec.runbook = plan
            prev = self.journal.data
            rec.snapshot = prev.get("snapshot")
            # Cleanup steps are idempotent and re-planned from observation each run, so
            # their journal is this run's only: a previous cleanup's "done" means nothing now.
            self.journal.data = {**prev, "steps": {}} if prev else {"kind": "cleanup", "steps": {}}
            self._walk(rec, plan, CLEANUP_STEPS)
            self.journal.forget()

        return self._guarded(rec, self.plan_cleanup, walk, busy=f"a drill of {self.g.name} is running",
                             hint="wait for it to finish (or stop it), then clean up")


# --------------------------------------------------------------------------- start steps
def _zfs_mounted(zfs, dataset: str) -> bool:
    r = zfs.t.run([*zfs.cmd, "get", "-Hp", "-o", "value", "mounted", dataset], check=False)
    return r.returncode == 0 and r.stdout.strip() == "yes"


def _s_hold(d: Drill, step: rb.Step, rec: RunRecord) -> list[str]:
    dst = d._dr()
    obs = dst.zfs.observe([d.g.dr_root])
    d.journal.data["held"] = list(step.params["snapshots"])
    d.journal.save()
    done = []
    for snap in step.params["snapshots"]:
        ds, _, name = snap.partition("@")
        # `zfs hold` fails when this tag already holds it (a resumed run): that is the goal anyway.
        r = dst.transport.run([*dst.zfs.cmd, "hold", step.params["tag"], snap], check=False)
        if r.returncode == 0 or "tag already exists" in r.stderr:
            done.append(snap)
        elif ds in obs and not any(s.name == name for s in obs[ds].snapshots):
            raise UsageError(f"snapshot {snap} vanished (pruned?) before the drill could hold it",
                             hint="run the drill again with --point latest")
    return [f"{len(done)} snapshot(s) held with tag {step.params['tag']}"]


def _s_container(d: Drill, step: rb.Step, rec: RunRecord) -> list[str]:
    dst = d._dr()
    ds = step.params["dataset"]
    if ds not in dst.zfs.observe([ds]):
        dst.zfs.create(ds)
    return []


def dr_mount_base(zfs: Zfs, dr_root: str, dr_obs: dict) -> str | None:
    """Where the DR root would mount, asked of the pool only when the root mounts nowhere itself
    (replication sets it to mountpoint=none so that no receive mounts a replica)."""
    root = dr_obs.get(dr_root)
    if root is not None and (root.mountpoint or "").startswith("/"):
        return None
    return zfs.natural_mountpoint(dr_root)


def _s_clone(d: Drill, step: rb.Step, rec: RunRecord) -> list[str]:
    dst = d._dr()
    clone = step.params["clone"]
    if clone not in dst.zfs.observe([clone]):
        props = {"readonly": "off", "canmount": "on", "esxdr:drill": d.g.name}
        if step.params.get("mountpoint"):
            # explicit: the clone's parent inherits mountpoint=none from the DR root
            props["mountpoint"] = step.params["mountpoint"]
        dst.zfs.clone(step.params["snapshot"], clone, props)
    if step.params.get("mount") and not _zfs_mounted(dst.zfs, clone):
        dst.zfs.mount(clone)
    return [f"{clone} from {step.params['snapshot']}" + (f", LUN file {step.params['path']}"
                                                          if step.params.get("path") else "")]


def _s_present(d: Drill, step: rb.Step, rec: RunRecord) -> list[str]:
    from esxdr import vmfs
    from esxdr.targets import tgt
    from esxdr.targets.manifest import manifest_from_dict
    from esxdr.targets.probe import Session

    m = manifest_from_dict(step.params["manifest"], origin="drill manifest")
    t = d._target()
    tgt.apply(t, m, control_port=d.server.target.control_port)  # type: ignore[union-attr]
    # Evidence from the wire, as the DR host will see it: log in as its initiator and read VPD 0x83.
    from esxdr.targets.probe import DEFAULT_INITIATOR

    initiator = next((g.members[0] for g in m.initiator_groups if g.members), DEFAULT_INITIATOR)
    portal = d.server.target  # type: ignore[union-attr]
    seen: dict[str, str] = {}
    headers: list = []  # (naa, VMFS header) of each LU presented
    for target in m.targets:
        with Session(portal.portal_address, portal.portal_port, target=target.iqn, initiator=initiator) as s:
            for n in s.report_luns():
                ident = s.identify(n)
                if ident.device_type == 0 and ident.naa:
                    seen[ident.naa] = f"{ident.vendor}/{ident.product}"
                    h = vmfs.try_read_header(s.reader(n, ident.block_size), ident.size_bytes, ident.block_size,
                                             source=f"naa.{ident.naa}") if ident.size_bytes else None
                    if h is not None:
                        headers.append((ident.naa, h))
    want = [lu["naa"] for lu in step.params["luns"]]
    missing = [n for n in want if n not in seen]
    if missing:
        raise ConflictError(f"the DR target does not serve {', '.join('naa.' + n for n in missing)} after the import",
                            hint="look at the tgtd log; esxdr target verify shows what it serves")
    # A datastore spanning LUNs mounts only with every extent: refuse before ESXi is asked (docs/vmfs.md).
    spans = vmfs.incomplete(headers)
    if spans:
        raise ConflictError("; ".join(spans),
                            hint=f"put the dataset of every LUN of that datastore in protection group {d.g.name} "
                                 "(esxdr vmfs inspect on the LUNs shows their extents)")
    return [f"naa.{n} on the wire ({seen[n]})" for n in want]


def _s_network(d: Drill, step: rb.Step, rec: RunRecord) -> list[str]:
    from esxdr.vsphere import recovery as vr

    s = d._vsphere()
    h = d._host(with_vms=False)
    if not d.members:
        out = []
        for c in step.params["create"]:
            if c["create_vswitch"] and c["vswitch"] not in h.vswitches:
                d.journal.intend("vswitches", c["vswitch"])
                vr.add_vswitch(s, h, c["vswitch"])
                out.append(f"vSwitch {c['vswitch']} (no uplinks)")
            if c["name"] not in h.port_groups:
                d.journal.intend("port_groups", c["name"])
                vr.add_port_group(s, h, c["name"], c["vswitch"], c["vlan"])
                out.append(f"port group {c['name']} on {c['vswitch']}" + (f" VLAN {c['vlan']}" if c["vlan"] else ""))
        return out
    # A cluster: every host gets its own port groups (standard switches are per host). Intent is
    # journaled per host first, then the hosts are configured in parallel, each in plan order.
    per: dict[str, list[dict]] = {}
    for c in step.params["create"]:
        m = d.members.get(c.get("host", ""))
        if m is None:
            raise ConflictError(f"host {c.get('host')} of the plan is not managed by {d.g.vsphere_dr} any more",
                                hint="run the same command again: it plans from what the vCenter shows now")
        if c["create_vswitch"] and c["vswitch"] not in m.vswitches:
            d.journal.intend(f"vswitches@{m.name}", c["vswitch"])
        if c["name"] not in m.port_groups:
            d.journal.intend(f"port_groups@{m.name}", c["name"])
        per.setdefault(m.name, []).append(c)

    def one(host: str, items: list[dict]) -> list[str]:
        m = d.members[host]
        said = []
        for c in items:
            if c["create_vswitch"] and c["vswitch"] not in m.vswitches:
                vr.add_vswitch(s, m, c["vswitch"])
                said.append(f"{host}: vSwitch {c['vswitch']} (no uplinks)")
            if c["name"] not in m.port_groups:
                vr.add_port_group(s, m, c["name"], c["vswitch"], c["vlan"])
                said.append(f"{host}: port group {c['name']} on {c['vswitch']}"
                            + (f" VLAN {c['vlan']}" if c["vlan"] else ""))
        return said

    done = vr.on_hosts(one, per)
    return [x for host in per for x in done[host]]


def _s_rescan(d: Drill, step: rb.Step, rec: RunRecord) -> list[str]:
    from esxdr.vsphere.storage import rescan

    # The plan's read of the host (this run) names its storage system: no need to read it again.
    h = d.host_state if d.host_state is not None else d._host(with_vms=False)
    if d.members:
        from esxdr.vsphere.recovery import rescan_hosts

        rescan_hosts(d._vsphere(), list(d.members.values()))
        return [f"{', '.join(d.members)} rescanned in parallel"]
    rescan(d._vsphere(), h)
    return []


def _s_verify(d: Drill, step: rb.Step, rec: RunRecord) -> list[str]:
    from esxdr.plan.host import ExpectedLun
    from esxdr.vsphere.storage import VERIFY_TIMEOUT_S, raise_for, verify_storage

    exp = [ExpectedLun(naa=e["naa"], target=e.get("target"), datastore=e.get("datastore"),
                       vmfs_uuid=None if step.params.get("resolve") else e.get("vmfs_uuid"))
           for e in step.params["expected"]]
    if d.members or step.params.get("hosts"):
        # Every host of the cluster must see every LUN and mount every volume (DRS may put a VM
        # anywhere): one property read per round for all hosts, rescans in parallel where missing.
        from esxdr.vsphere.host import verify_hosts
        from esxdr.vsphere.storage import VerifyResult

        names = list(d.members) if d.members else list(step.params["hosts"])
        # A real rescan takes from seconds to minutes: the deadline allows a few (and always one).
        multi, _rescans, _done = verify_hosts(d._vsphere(), names, exp, timeout=VERIFY_TIMEOUT_S,
                                              resolve=step.params.get("resolve"))
        for r in multi.reports:
            raise_for(VerifyResult(report=r))
        res = VerifyResult(report=multi.reports[0])
    else:
        res = verify_storage(d._vsphere(), d.g.vsphere_dr, exp, timeout=VERIFY_TIMEOUT_S,
                             resolve=step.params.get("resolve"))
        raise_for(res)
    by_naa = {e["naa"]: e for e in step.params["expected"]}
    h = d._verified = d._host()  # with the VMs: register goes on from this read
    out, rows = [], []
    for c in res.report.checks:
        e = by_naa[c.naa]
        ds = h.datastores.get(c.datastore or "")
        extents = [x.removeprefix("naa.") for x in (ds.extents if ds else ())]
        same = e.get("vmfs_uuid") == c.vmfs_uuid
        rows.append({"name": c.datastore, "naa": c.naa, "production_naa": e.get("production_naa"),
                     "extent": extents, "vmfs_uuid": c.vmfs_uuid, "vmfs_uuid_production": e.get("vmfs_uuid"),
                     "uuid_unchanged": same, "naa_matches_extent": c.naa in extents,
                     "status": "mounted as-is" if same else ("resignatured" if step.params.get("resolve") else
                                                              "mounted")})
        out.append(f"{c.datastore}: uuid {c.vmfs_uuid} {'unchanged' if same else 'new'}, extent naa.{c.naa}"
                   + (f", mounted on {', '.join(d.members)}" if d.members else ""))
        if d.members:
            rows[-1]["hosts"] = [n for n, m in d.members.items() if c.datastore in m.datastores]
    d.journal.data["datastores"] = rows
    d.journal.save()
    return out


def _s_register(d: Drill, step: rb.Step, rec: RunRecord) -> list[str]:
    from esxdr.vsphere import recovery as vr
    from esxdr.vsphere import vms as vv

    s = d._vsphere()
    # The host as verify just read it (same run): datastores mounted, VMs listed. Else read it.
    h = d._verified if d._verified is not None else d._host()
    d._verified = None
    stores = step.params["datastores"] or [r["name"] for r in d.journal.data.get("datastores", []) if r.get("name")]
    cluster = bool(d.members)
    where = vv.placement_info(s, h, stores, cluster=cluster)
    wanted = list(step.params["vms"])
    # Where production keeps each .vmx (vms.*.vmx, written by esxdr plan discover): no search needed.
    # The datastore names are production's, as the volumes are mounted as-is.
    known = {n: p for n, p in (step.params.get("vmx") or {}).items() if rb._vmx_datastore(p) in h.datastores}
    found: dict[str, str] = {}
    searched = not wanted or any(n not in known for n in wanted)
    if searched:
        found = vr.find_vmx(s, h, stores, browsers=where.browsers)
        wanted = wanted or sorted(found)
    else:
        found = {n: known[n] for n in wanted}
    lacking = [n for n in wanted if n not in found]
    if lacking:
        # What each datastore held, so that the message tells a wrong site file from a volume
        # that came up empty or not at all.
        held = {ds: sorted(n for n, p in found.items() if rb._vmx_datastore(p) == ds) for ds in stores}
        seen = "; ".join(f"{ds}: " + ("not mounted" if ds not in h.datastores else
                                       (", ".join(held[ds]) if held[ds] else "no .vmx")) for ds in stores)
        raise ConflictError(f"VM(s) {', '.join(lacking)} not found on the drill datastores ({seen})",
                            hint="check protection_groups.*.vms in the site file against the datastores' contents")
    registered = {rb.norm_vmx(v.vmx_path): n for n, v in h.vms.items()}
    todo = [n for n in wanted if rb.norm_vmx(found[n]) not in registered]
    answer = step.params.get("answer", "copied")
    said = []
    if todo and step.params.get("prepare_vmx", True):
        # NICs and the UUID decided in the .vmx before registering: no ReconfigVM_Task, and on a
        # real ESXi no msg.uuid.altered question (uuid.action). Both are still checked later.
        files = vv.DatastoreFiles(s, where.datacenter)
        prepared, failed = vv.prepare_vmx_files(files, [found[n] for n in todo], step.params.get("map") or {},
                                                rb.UUID_ACTIONS.get(answer))
        stale = [n for n in todo if found[n] in failed and n in known and found[n] == known[n]]
        if stale:  # the site's vms.*.vmx is out of date (VM moved?): find those by searching
            searched = True
            by_search = vr.find_vmx(s, h, stores, browsers=where.browsers)
            for n in stale:
                if n not in by_search:
                    raise ConflictError(f"VM {n} is not at {known[n]} (vms.{n}.vmx) nor anywhere on "
                                        f"{', '.join(stores)}", hint="esxdr plan discover shows where it is")
                found[n] = by_search[n]
                said.append(f"{n}: not at {known[n]} (site file), found at {found[n]}")
            more, failed2 = vv.prepare_vmx_files(files, [found[n] for n in stale], step.params.get("map") or {},
                                                 rb.UUID_ACTIONS.get(answer))
            prepared.update(more)
            failed = {k: v for k, v in failed.items() if k not in {known[n] for n in stale}} | failed2
            todo = [n for n in wanted if rb.norm_vmx(found[n]) not in registered]
        d.http_requests += files.requests
        changed = sum(1 for c in prepared.values() if c)
        said.append(f"{changed} .vmx file(s) prepared over datastore HTTP (NICs mapped, uuid.action = "
                    f"{rb.UUID_ACTIONS.get(answer)})" + (f"; {len(failed)} not: {next(iter(failed.values()))}"
                                                          if failed else ""))
    said.append("paths from the site file (vms.*.vmx): no datastore search" if not searched
                else f".vmx files found by searching {len(stores)} datastore(s)")
    on_hosts: list[Any] | None = None
    if cluster:
        if where.drs:
            on_hosts = [None] * len(todo)  # the cluster's resource pool: DRS places each VM
            said.append(f"registered into the resource pool of the cluster of {', '.join(d.members)}: DRS places them")
        else:
            # DRS off: vCenter wants a host per VM; esxdr spreads them itself (pure, deterministic).
            prio = step.params.get("priorities") or {}
            spread = rb.spread_vms([(n, int(prio.get(n, 0)), rb._vmx_datastore(found[n])) for n in todo],
                                   {n: ({ds for ds in m.datastores}, len(m.vms)) for n, m in d.members.items()})
            on_hosts = [s.ref("HostSystem", d.members[spread[n]].moid) for n in todo]
            for n in todo:
                d.journal.data.setdefault("vms", {}).setdefault(n, {"vmx": found[n]})["host"] = spread[n]
            said.append("DRS is off: esxdr spreads the VMs (least loaded per priority group among the hosts "
                        "mounting the datastore): " + ", ".join(f"{n} → {spread[n]}" for n in todo))
    refs = vv.register_vms(s, h, [found[n] for n in todo], where=where, hosts=on_hosts,
                           after_issue=lambda: checkpoint(f"{d.fault_prefix}-mid-register"))
    for n, ref in zip(todo, refs, strict=True):
        d._vm_cache[n] = (ref._moId, "poweredOff", None)
    for n in wanted:
        d.journal.data.setdefault("vms", {}).setdefault(n, {"vmx": found[n]})
    d.journal.save()
    return [f"{len(wanted)} VM(s) registered ({len(wanted) - len(todo)} already were); power-on answers: "
            f"{ANSWER_TEXT.get(answer, 'I copied it')}"] + said


def _vm_refs(d: Drill, names: list[str]) -> list[Any]:
    s = d._vsphere()
    if all(n in d._vm_cache for n in names):  # read by an earlier step of this run
        return [s.ref("VirtualMachine", d._vm_cache[n][0]) for n in names]
    h = d._host()
    missing = [n for n in names if n not in h.vms]
    if missing:
        raise ConflictError(f"VM(s) {', '.join(missing)} are not registered on {h.name}",
                            hint=f"run esxdr test cleanup {d.g.name}, then start again")
    for n in names:
        v = h.vms[n]
        d._vm_cache[n] = (v.moid, v.power_state, v.question_id)
    return [s.ref("VirtualMachine", h.vms[n].moid) for n in names]


def _s_nics(d: Drill, step: rb.Step, rec: RunRecord) -> list[str]:
    from esxdr.vsphere import recovery as vr

    s = d._vsphere()
    names = step.params["vms"] or sorted(d.journal.data.get("vms", {}))
    refs = _vm_refs(d, names)
    read = vr.read_vms(s, refs)  # devices, power state, question: one read serves the moves and the evidence
    moves = vr.nic_moves(s, refs, step.params["map"], read)
    if moves:
        vr.move_nics(s, moves)
        read = vr.read_vms(s, refs)  # evidence is what the host says now, not what was asked
    for moid, props in read.items():
        q = props.get("runtime.question")
        d._vm_cache[str(props.get("name"))] = (moid, str(props.get("runtime.powerState")),
                                                q.id if q is not None else None)
    nets = vr.nic_networks(s, refs, read)
    for n, pgs in nets.items():
        d.journal.data.setdefault("vms", {}).setdefault(n, {})["networks"] = pgs
    # Where each VM is (DRS placed it, or esxdr spread it): from the same read, for the report.
    host_names = {m.moid: n for n, m in d.members.items()} or \
        ({d.host_state.moid: d.host_state.name} if d.host_state is not None else {})
    placed: dict[str, list[str]] = {}
    for props in read.values():
        ref = props.get("runtime.host")
        where_ = host_names.get(getattr(ref, "_moId", ""), getattr(ref, "_moId", None))
        if where_:
            d.journal.data.setdefault("vms", {}).setdefault(str(props.get("name")), {})["host"] = where_
            placed.setdefault(where_, []).append(str(props.get("name")))
    d.journal.save()
    test_pgs = set(step.params["map"].values())
    stray = [f"{n}: {pg}" for n, pgs in nets.items() for pg in pgs if test_pgs and pg not in test_pgs]
    if stray:
        which = "test" if d.journal.data.get("kind") == "test" else "failover"
        raise ConflictError(f"VM NICs outside the {which} port groups: " + ", ".join(stray),
                            hint=f"map every production port group to a {which} one (vms.*.networks)")
    said = [x for _, _, ss in moves for x in ss]
    said = said or [f"{len(nets)} VM(s) on {', '.join(sorted(test_pgs)) or 'no network'}"
                    + (" (set in the .vmx before registering: no reconfiguration)" if nets else "")]
    if d.members:
        said.append("placement: " + "; ".join(f"{hn}: {', '.join(sorted(vs))}" for hn, vs in sorted(placed.items())))
    return said


def _s_power(d: Drill, step: rb.Step, rec: RunRecord) -> list[str]:
    from esxdr.vsphere import vms as vv

    s = d._vsphere()
    names = step.params["vms"]
    refs = _vm_refs(d, names)
    states = {d._vm_cache[n][0]: d._vm_cache[n][1:] for n in names}
    answer = step.params.get("answer", "copied")
    answered = vv.boot(s, refs, states, uuid_answer=answer, timeout=step.params["timeout"],
                       after_issue=lambda: checkpoint(f"{d.fault_prefix}-mid-power"))
    now = time.time()
    for n, r in zip(names, refs, strict=True):
        d._vm_cache[n] = (r._moId, "poweredOn", None)
        v = d.journal.data.setdefault("vms", {}).setdefault(n, {})
        v.update(priority=step.params["priority"], power="poweredOn", heartbeat="green",
                 heartbeat_at=v.get("heartbeat_at") or now)
    d.journal.save()
    return [f"{', '.join(names)} powered on, heartbeat ok"
            + (f" ({len(answered)} answered: {ANSWER_TEXT.get(answer)})" if answered else "")]


ANSWER_TEXT = {"copied": "I copied it", "moved": "I moved it"}

START_STEPS: dict[str, Callable] = {
    "hold": _s_hold, "container": _s_container, "clone": _s_clone, "present": _s_present,
    "network": _s_network, "rescan": _s_rescan, "verify": _s_verify, "register": _s_register,
    "nics": _s_nics, "power": _s_power,
}


# --------------------------------------------------------------------------- cleanup steps
def _c_poweroff(d: Drill, step: rb.Step, rec: RunRecord) -> list[str]:
    from esxdr.vsphere import recovery as vr
    from esxdr.vsphere import vms as vv

    s = d._vsphere()
    h = d._host()
    todo = []
    for n in step.params["vms"]:
        v = h.vms.get(n)
        if v is None:
            continue
        ref = s.ref("VirtualMachine", v.moid)
        if v.question_id:
            vr.cancel_question(s, ref, v.question_id)
        todo.append(ref)
    h = d._host()
    vv.power_off(s, [r for r in todo if h.vms.get(_name_of(h, r), None) and
                     h.vms[_name_of(h, r)].power_state == "poweredOn"])
    return [f"{len(todo)} VM(s) off"]


def _name_of(h, ref) -> str:
    return next((n for n, v in h.vms.items() if v.moid == ref._moId), "")


def _c_unregister(d: Drill, step: rb.Step, rec: RunRecord) -> list[str]:
    from esxdr.vsphere import vms as vv

    s = d._vsphere()
    h = d._host()
    refs = [s.ref("VirtualMachine", h.vms[n].moid) for n in step.params["vms"] if n in h.vms]
    vv.unregister(s, refs)
    return [f"{len(refs)} VM(s) unregistered"]


def _c_unpresent(d: Drill, step: rb.Step, rec: RunRecord) -> list[str]:
    from esxdr.targets.tgt import Tgtadm

    t = d._target()
    adm = Tgtadm(d.server.target.control_port)  # type: ignore[union-attr]
    _, targets = d._served()
    live = {x.iqn: x.tid for x in targets}
    for item in step.params["targets"]:
        tid = live.get(item["iqn"])
        if tid is None:
            continue  # gone already (a previous cleanup got this far)
        # --force: the DR host may still hold a session; the LUNs are unused by now.
        t.run(adm("--op", "delete", "--mode", "target", "--tid", str(tid), "--force"))
    return [f"{item['iqn']} removed" for item in step.params["targets"]]


def _c_rescan(d: Drill, step: rb.Step, rec: RunRecord) -> list[str]:
    from esxdr.vsphere.storage import rescan

    s = d._vsphere()
    h = d._host(with_vms=False)
    if d.members:
        from esxdr.vsphere.recovery import rescan_hosts

        rescan_hosts(s, list(d.members.values()))
    else:
        rescan(s, h)
    h = d._host(with_vms=False)
    for m in (d.members or {h.name: h}).values():
        left = [n for n in step.params["naas"] if f"naa.{n}" in m.luns]
        if left:
            raise ConflictError(f"{m.name} still sees {', '.join('naa.' + n for n in left)} after the rescan",
                                hint="run esxdr test cleanup again in a moment")
    return [f"{len(step.params['naas'])} drill LUN(s) gone from {', '.join(d.members) if d.members else h.name}"]


def _c_network(d: Drill, step: rb.Step, rec: RunRecord) -> list[str]:
    from esxdr.vsphere import recovery as vr

    s = d._vsphere()
    h = d._host(with_vms=False)
    for pg in step.params["port_groups"]:
        vr.remove_port_group(s, h, pg)
    for vs in step.params["vswitches"]:
        vr.remove_vswitch(s, h, vs)
    per = step.params.get("hosts") or {}
    if per:
        def one(host: str, what: dict) -> None:
            m = d.members.get(host)
            if m is None:
                return  # the vCenter does not manage it any more: nothing of ours to remove there
            for pg in what["port_groups"]:
                vr.remove_port_group(s, m, pg)
            for vs in what["vswitches"]:
                vr.remove_vswitch(s, m, vs)

        vr.on_hosts(one, per)
        return [f"{host}: removed " + ", ".join(what["port_groups"] + what["vswitches"]) for host, what in per.items()]
    return []


def _destroy(dst, ds: str) -> None:
    for attempt in range(10):
        if ds not in dst.zfs.observe([ds]):
            return
        try:
            if _zfs_mounted(dst.zfs, ds):
                dst.zfs.unmount(ds, force=attempt > 2)
            dst.zfs.destroy_clone(ds)
        except EsxdrError:
            # zfs-fuse reports "dataset is busy" for a moment after tgtd let go of the file.
            if attempt == 9:
                raise
            time.sleep(0.5)


def _c_destroy(d: Drill, step: rb.Step, rec: RunRecord) -> list[str]:
    ds = step.params["dataset"]
    root = rb.test_root(d.g)
    if not ds.startswith(root + "/"):  # belt and braces: serve refuses too
        raise UsageError(f"refusing to destroy {ds}: not under {root}")
    _destroy(d._dr(), ds)
    return [f"{ds} destroyed"]


def _c_uncontainer(d: Drill, step: rb.Step, rec: RunRecord) -> list[str]:
    ds = step.params["dataset"]
    if ds != rb.test_root(d.g):
        raise UsageError(f"refusing to destroy {ds}: not the drill container")
    _destroy(d._dr(), ds)
    return [f"{ds} destroyed"]


def _c_release(d: Drill, step: rb.Step, rec: RunRecord) -> list[str]:
    dst = d._dr()
    n = 0
    for snap in step.params["snapshots"]:
        # Fails harmlessly where this tag holds nothing (other tools' holds are untouched).
        r = dst.transport.run([*dst.zfs.cmd, "release", step.params["tag"], snap], check=False)
        n += r.returncode == 0
    return [f"{n} hold(s) released"]


CLEANUP_STEPS: dict[str, Callable] = {
    "poweroff": _c_poweroff, "unregister": _c_unregister, "unpresent": _c_unpresent, "rescan": _c_rescan,
    "network": _c_network, "destroy": _c_destroy, "uncontainer": _c_uncontainer, "release": _c_release,
}


def summary(rec: RunRecord) -> str:
    """The last line of a run, as the drill's admin reads it."""
    if rec.kind == "test-start":
        level = {"application": "app-consistent", "mixed": "partly app-consistent"}.get(rec.consistency or "",
                                                                                     "crash-consistent")
        return (f"RTO {human_duration(rec.rto_seconds)}, RPO {human_duration(rec.rpo_seconds)} "
                f"({level} snapshot {rec.snapshot}) — report: {rec.report_html}")
    return f"{rec.group}: drill cleaned up in {human_duration((rec.finished or rec.started) - rec.started)} " \
           f"— report: {rec.report_html}"

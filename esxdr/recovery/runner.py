"""The runner every recovery shares: it walks a runbook's steps with a journal, and writes the report.

Drill, Failover, HandOff are siblings over it; each brings its own plan and step table.

Control flow: lock → observe (DR datasets, DR target, DR host: one read each) →
pure plan (:mod:`esxdr.plan.runbook`) → walk the steps. Dry-run stops after the plan,
so dry-run and apply share everything up to the first side effect.

The journal (``<state_dir>/drills/<group>.json``) is written before and after every
step and before every object is created (intent first). A run killed anywhere is
re-run with the same command: completed steps are skipped, and each step checks what
exists before acting, so a step cut in the middle is finished rather than repeated.
``test cleanup`` uses the journal when it exists AND observes (clones under the test
container, the drill's target IQNs, VMs on the drill datastores), so it finishes
even when the journal is gone or half-written.

A drill takes its own lock (``<group>.drill``), not the replication lock:
replication into the DR datasets goes on while the clones are in use. Failover, failback
and the hand-offs share ``<group>.failover``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from esxdr.errors import (
    ConflictError,
    EsxdrError,
    LockHeld,
    UsageError,
)
from esxdr.faults import checkpoint, fail_point
from esxdr.fmt import clock
from esxdr.lock import GroupLock
from esxdr.plan import runbook as rb
from esxdr.recovery import callouts, report
from esxdr.recovery.record import Journal, RunRecord
from esxdr.recovery.sources import target_transport
from esxdr.replication import sides
from esxdr.targets import tgt

if TYPE_CHECKING:
    from esxdr.site.model import ProtectionGroup, Site


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


# --------------------------------------------------------------------------- the runner
class Runner:
    """What a recovery run holds: its site view, group view, journal and connections (the DR
    storage server, its target, the DR vSphere endpoint), opened when a step first needs them."""

    fault_prefix = "drill"  # ESXDR_FAULT_KILL=<prefix>-after-<step kind>
    lock_suffix = "drill"  # the run's lock: <group>.<suffix>

    def __init__(self, site: Site, group: ProtectionGroup, journal: Journal, *, say: Say = lambda s: None):
        self.site = site
        self.g = group
        self.say = say
        self.journal = journal
        self.dst: Any = None  # replication Side of the DR storage server
        self.session: Any = None
        self.host_state: Any = None
        self.members: dict[str, Any] = {}  # a vCenter DR endpoint: its hosts (HostState) by name
        self.manifest_origin: str | None = None
        self.server = site.storage_server(self.g.destination)
        self._tgt_transport = None
        self.verified: Any = None  # the host as the verify step of this run read it
        self.vm_cache: dict[str, tuple[str, str, str | None]] = {}  # name -> (moid, power, question) this run
        self.http_requests = 0  # datastore HTTP (.vmx files)

    # -- connections --------------------------------------------------------
    def dr(self):
        if self.dst is None:

            self.dst = sides.open_side(self.site, self.g.destination)
        return self.dst

    def target(self):
        if self.server.target is None:
            raise UsageError(f"storage server {self.server.name} has no target: section",
                             hint="add target: {stack: tgt, portal: ADDR:PORT, control_port: N} to the site file")
        if self.server.target.stack != "tgt":
            raise UsageError(f"drills present clones through tgt only so far; {self.server.name} runs "
                             f"{self.server.target.stack}")
        if self._tgt_transport is None:
            self._tgt_transport = target_transport(self.server)
        return self._tgt_transport

    def vsphere(self):
        if self.g.vsphere_dr is None:
            return None
        if self.session is None:
            from esxdr.vsphere.session import connect

            self.session = connect(self.site.endpoint(self.g.vsphere_dr))
        return self.session

    def host(self, *, with_vms: bool = True):
        s = self.vsphere()
        if s is None or self.g.vsphere_dr is None:
            return None
        from esxdr.vsphere.recovery import read_dr

        # One property read, whatever the number of hosts; a vCenter's hosts are merged into one
        # view for the cluster-wide steps and kept apart in self.members for the per-host ones.
        self.host_state, self.members = read_dr(s, self.site.endpoint(self.g.vsphere_dr), with_vms=with_vms)
        return self.host_state

    def view(self, h):  # HostState -> HostView
        from esxdr.vsphere.recovery import view_of

        return view_of(h, self.members)

    def dr_network(self, h):
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

    def served(self) -> tuple[list[rb.ServedLun], list]:
        targets, _ = tgt.observe_native(self.target(), self.server.target.control_port)  # type: ignore[union-attr]
        served = []
        for t in targets:
            for n, lu in t.luns.items():
                if lu.device_type == "controller" or not lu.path:
                    continue
                served.append(rb.ServedLun(naa=tgt.naa_from_scsi_id(lu.scsi_id, t.tid, n).hex, target=t.iqn,
                                           tid=t.tid, lun=n, path=lu.path))
        return served, targets

    def _lock(self) -> GroupLock:
        return GroupLock(self.site.state_dir, f"{self.g.name}.{self.lock_suffix}")

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
        """Run one callout (:mod:`esxdr.recovery.callouts`: a command, or a plugin's kind). It learns
        where it is from ``env``: ESXDR_GROUP, ESXDR_RUN, ESXDR_STEP, ESXDR_STEP_KIND, ESXDR_PHASE,
        ESXDR_OUTCOME (post: done or failed), ESXDR_SNAPSHOT, ESXDR_VMS (power steps)."""
        from esxdr.transport.base import mask

        env = {"ESXDR_SITE": self.site.name, "ESXDR_GROUP": self.g.name, "ESXDR_RUN": rec.kind,
               "ESXDR_STEP": step.id, "ESXDR_STEP_KIND": step.kind, "ESXDR_PHASE": phase,
               "ESXDR_OUTCOME": outcome, "ESXDR_SNAPSHOT": rec.snapshot or self.journal.data.get("snapshot") or "",
               "ESXDR_VMS": " ".join(step.params.get("vms") or ())}
        shown = rb.describe_callout(c)
        t0 = time.time()
        out: dict[str, Any] = {"phase": phase, "command": mask(shown), "key": c.get("key")}
        rc, text = callouts.run(c, env)
        out.update(rc=rc, outcome="ok" if rc == 0 else "failed")
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

        try:
            rec.report_json, rec.report_html = report.write(self.site.state_dir, rec.to_dict(), site=self.site)
        except OSError as e:  # a report that cannot be written must not hide the run's own outcome
            rec.notes.append(f"report not written: {e}")


def retry(fn: Callable[..., Any], attempts: int = 10) -> None:
    """zfs-fuse reports "dataset is busy" for a moment after tgtd let go of a file."""
    for i in range(attempts):
        try:
            fn()
            return
        except EsxdrError:
            if i == attempts - 1:
                raise
            time.sleep(0.5)

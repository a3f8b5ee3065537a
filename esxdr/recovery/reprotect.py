"""`esxdr reprotect`: production becomes the replica of the failed-over DR datasets."""

from __future__ import annotations

import dataclasses
import json
import time
from typing import TYPE_CHECKING, Any

from esxdr.errors import (
    ConflictError,
    UsageError,
)
from esxdr.fmt import human_bytes
from esxdr.lock import GroupLock
from esxdr.model.manifest import Naa
from esxdr.plan import runbook as rb
from esxdr.plan.replication import common_snapshot
from esxdr.recovery import report
from esxdr.recovery.failover import need_send_only_dr, unpresent_production
from esxdr.recovery.record import ReprotectRecord, state_path
from esxdr.recovery.runner import Say, retry
from esxdr.recovery.sources import resolve_manifest
from esxdr.replication import Engine, Options, sides
from esxdr.replication.sides import both, failover_marker, on_dr_box
from esxdr.util import write_json

if TYPE_CHECKING:
    from esxdr.site.model import ProtectionGroup, Site


# --------------------------------------------------------------------------- reprotect
@dataclasses.dataclass
class ReprotectPlan:
    group: str
    rollbacks: list[dict[str, Any]]  # production dataset, common snapshot, snapshots discarded
    notes: list[str] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"group": self.group, "rollbacks": self.rollbacks, "notes": self.notes}

    def render(self) -> str:
        lines = [f"{self.group}: reprotect rolls production back to the newest snapshot it shares with DR, "
                 "then replicates DR → production"]
        for r in self.rollbacks:
            lost = ", ".join("@" + n for n in r["discards"]) or "no snapshots"
            lines.append(f"  {r['dataset']}: roll back to @{r['common']}; discards {lost} and any write since "
                         f"@{r['common']} ({r['written']})")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def plan_reprotect(g: ProtectionGroup, prod_obs: dict, dr_obs: dict) -> ReprotectPlan:
    """Pure: per production dataset, the newest snapshot in common with its DR dataset (by guid) and
    what rolling back to it discards (the evidence shown before --yes)."""

    out, missing = [], []
    for ds in g.datasets:
        dr_ds = g.dr_dataset(ds)
        p, r = prod_obs.get(ds), dr_obs.get(dr_ds)
        if p is None or r is None:
            missing.append(ds if p is None else dr_ds)
            continue
        pair = common_snapshot(r, p)
        if pair is None:
            raise ConflictError(f"{ds} and {dr_ds} have no snapshot in common",
                                hint="production's copy cannot be reused: a full send DR → production is needed "
                                     "(not automated: destroy or rename the production dataset first)")
        _dr_common, prod_common = pair
        discards = [s.name for s in p.snapshots if s.createtxg > prod_common.createtxg]
        written = "unknown on this zfs" if p.written is None else human_bytes(p.written)
        out.append({"dataset": ds, "dr_dataset": dr_ds, "common": prod_common.name, "discards": discards,
                    "written": written})
    if missing:
        raise UsageError(f"missing dataset(s): {', '.join(missing)}", hint="reprotect needs both copies")
    return ReprotectPlan(g.name, out)


class Reprotect:
    """``esxdr reprotect``: production becomes the replica of the failed-over DR datasets."""

    def __init__(self, site: Site, group_name: str | None, *, say: Say = lambda s: None, pull: bool = False):
        self.g = site.group(group_name)
        # Pull mode (--pull): on production, DR read through its send-only account; production pulls.
        self.pull = pull
        if pull:
            need_send_only_dr(site, self.g, "reprotect --pull")
        if self.pull and site.storage_server(self.g.source).behind_serve:
            raise UsageError(f"in pull mode, reprotect runs on production, and {self.g.source} is reached here "
                             "through esxdr serve", hint="run it on production, with a site file in which "
                             f"storage.{self.g.source} is local and storage.{self.g.destination} is DR's send-only "
                             "account")
        self.site = site if self.pull else on_dr_box(site, self.g.destination)
        self.say = say

    def _sides(self):
        return both(lambda: sides.open_side(self.site, self.g.source), lambda: sides.open_side(self.site, self.g.destination))

    def plan(self) -> ReprotectPlan:
        done = state_path(self.site.state_dir, self.g.name, "hand-off" if self.pull else "failover")
        try:
            fo = json.loads(done.read_text())
        except (OSError, ValueError):
            fo = {}
        if not fo.get("complete") and not self.pull:
            raise ConflictError(f"{self.g.name} is not failed over (no completed failover in {done.parent})",
                                hint=f"reprotect follows esxdr failover {self.g.name}")
        prod, dr = self._sides()
        try:

            prod_obs, dr_obs = both(lambda: prod.zfs.observe([self.g.source_root]),
                                    lambda: dr.zfs.observe([self.g.dr_root]))
        finally:
            prod.transport.close()
            dr.transport.close()
        if self.pull:
            # The failover's journal is on the DR box. What production can see through the send-only
            # account: DR's datasets are live (promoted: readonly off) only after a failover.
            sealed = [ds for ds in self.g.dr_datasets if ds in dr_obs and dr_obs[ds].readonly is not False]
            if sealed:
                raise ConflictError(f"{self.g.name} is not failed over: {sealed[0]} on {self.g.destination} is still "
                                    "a sealed replica (readonly)", hint=f"reprotect follows esxdr failover {self.g.name}")
        p = plan_reprotect(self.g, prod_obs, dr_obs)
        if fo.get("mode") == "disaster" or (self.pull and not fo.get("complete")):
            p.notes.append("after a disaster failover, whatever production wrote after the common snapshot is lost "
                           "with the rollback")
        return p

    def run(self, *, yes: bool = False, dry_run: bool = False) -> dict[str, Any]:
        started = time.time()
        p = self.plan()
        if dry_run:
            return {"plan": p.to_dict(), "dry_run": True}
        if not yes:
            raise UsageError("reprotect rolls production back and discards what is listed:\n" + p.render(),
                             hint=f"confirm with: esxdr reprotect {self.g.name} --yes")
        # Its report (RPO of the replication point, the steps' timeline) is written whatever happens.
        rec = ReprotectRecord(kind="reprotect", group=self.g.name, site=self.site.name, started=started,
                              direction=f"{self.g.destination} → {self.g.source}", notes=list(p.notes))
        try:
            out = self._reprotect(p, rec)
            rec.outcome = "ok"
        except BaseException as e:
            rec.outcome, rec.error = "failed", getattr(e, "message", None) or str(e) or type(e).__name__
            raise
        finally:
            rec.finished = time.time()
            try:
                rec.report_json, rec.report_html = report.write(self.site.state_dir, rec.to_dict(), site=self.site)
            except OSError as e:  # a report that cannot be written must not hide the run's own outcome
                self.say(f"report not written: {e}")
        return {**out, "report": rec.report_html}

    def _reprotect(self, p: ReprotectPlan, rec: ReprotectRecord) -> dict[str, Any]:
        started = rec.started
        with GroupLock(self.site.state_dir, f"{self.g.name}.failover"):
            marker = failover_marker(self.site.state_dir, self.g.name)
            if self.pull and not marker.exists():
                # After a disaster, production comes back without its hand-off's marker: its scheduled
                # --snapshot-only would snapshot the replica it becomes now, and the next pull from DR
                # would find it diverged. The marker stops those runs until failback brings it home.
                write_json(marker, {"group": self.g.name, "since": time.time(), "by": "reprotect"})
                self.say(f"{self.g.source}: its snapshots stop until failback (marker {marker})")
            with rec.step("unpresent-production", "unpresent-production", f"take {self.g.source}'s stale LUNs off",
                          "a production back from the dead may serve its stale LUNs again") as ev:
                ev += self._stop_production_target()
            prod, _dr = self._sides()
            try:
                for r in p.rollbacks:
                    ds = r["dataset"]
                    with rec.step(f"rollback:{ds}", "rollback", f"roll {ds} back to @{r['common']}",
                                  "the newest snapshot it shares with DR; production becomes DR's replica") as ev:
                        if prod.zfs.is_mounted(ds):
                            retry(lambda ds=ds: prod.zfs.unmount(ds, force=True))
                        retry(lambda ds=ds, r=r: prod.zfs.rollback(f"{ds}@{r['common']}", destroy_newer=True))
                        # A replica now: never written, never mounted (as on DR before the failover).
                        prod.zfs.set_props(ds, {"readonly": "on", "canmount": "noauto"})
                        line = f"{ds}: rolled back to @{r['common']}" + (
                            f", discarded {', '.join('@' + n for n in r['discards'])}" if r["discards"] else "")
                        ev.append(line)
                        self.say(line)
            finally:
                prod.transport.close()
                _dr.transport.close()

            rev = rb.reversed_group(self.g)
            with rec.step("replicate", "replicate", f"replicate {rec.direction}",
                          "production's copy catches up with DR's writes") as ev:
                res = Engine(self.site.with_group(rev), rev.name,
                             Options(take_snapshot=True, prune=False, progress=False, say=self.say,
                                     failed_over=True, pull=self.pull)).run()
                rec.snapshot, rec.bytes, rec.consistency = res.snapshot, res.bytes, (res.consistency or {}).get("level")
                rec.snapshot_created = self._created(res.snapshot)
                ev.append(f"@{res.snapshot}: {len(res.datasets)} dataset(s), {res.bytes} bytes in {res.seconds:.1f}s")
        out = {"group": self.g.name, "plan": p.to_dict(), "snapshot": res.snapshot, "bytes": res.bytes,
               "seconds": round(time.time() - started, 1), "direction": f"{self.g.destination} → {self.g.source}"}
        write_json(state_path(self.site.state_dir, self.g.name, "reprotect"), {**out, "finished": time.time()})
        return out

    def _stop_production_target(self) -> list[str]:
        """A production back from the dead may serve its stale LUNs again: take them off first."""
        lines = [f"{self.g.source}: {line}" for line in unpresent_production(self.site, self.g,
                                                                              _group_naas(self.site, self.g))]
        for line in lines:
            self.say(line)
        return lines

    def _created(self, snapshot: str | None) -> float | None:
        """When the replication point was taken, as production (its replica now) holds it: the RPO's start."""
        if not snapshot:
            return None
        prod = sides.open_side(self.site, self.g.source)
        try:
            obs = prod.zfs.observe([self.g.datasets[0]]).get(self.g.datasets[0])
        finally:
            prod.transport.close()
        snap = obs.snapshot(snapshot) if obs else None
        return snap.creation if snap else None


def _group_naas(site: Site, g: ProtectionGroup) -> set[str]:
    dr = sides.open_side(site, g.destination)
    try:
        m, _ = resolve_manifest(site, g, dr.zfs)
    finally:
        dr.transport.close()
    return {lu.naa.hex for lu in m.logical_units} | {Naa.parse(s.naa).hex for s in g.luns.values() if s.naa}


def reprotect_summary(out: dict[str, Any]) -> str:
    if out.get("dry_run"):
        return ReprotectPlan(out["plan"]["group"], out["plan"]["rollbacks"], out["plan"]["notes"]).render()
    return (f"{out['group']}: reprotected — production rolled back, replicated {out['direction']} to "
            f"@{out['snapshot']} ({out['bytes']} bytes in {out['seconds']}s); next: esxdr failback "
            f"{out['group']} --planned" + (f" — report: {out['report']}" if out.get("report") else ""))

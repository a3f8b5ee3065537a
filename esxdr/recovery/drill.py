"""`esxdr test start` and `esxdr test cleanup` for one protection group."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from esxdr.errors import (
    ConflictError,
)
from esxdr.fmt import human_duration
from esxdr.plan import runbook as rb
from esxdr.recovery.cleanup import CLEANUP_STEPS
from esxdr.recovery.record import Journal, RunRecord
from esxdr.recovery.runner import Runner, Say
from esxdr.recovery.sources import dr_mount_base, resolve_manifest
from esxdr.recovery.steps import START_STEPS

if TYPE_CHECKING:
    from esxdr.site.model import Site


class Drill(Runner):
    """``esxdr test start`` and ``esxdr test cleanup`` for one protection group."""

    fault_prefix = "drill"
    lock_suffix = "drill"

    def __init__(self, site: Site, group_name: str | None, *, say: Say = lambda s: None):
        g = site.group(group_name)
        super().__init__(site, g, Journal.of_drill(site.state_dir, g.name), say=say)

    # -- test start ---------------------------------------------------------
    def plan_start(self, point: str = "latest", new_naa: bool = False, manifest_path: str | None = None,
                   storage_only: bool = False, initiators: tuple[str, ...] = ()) -> rb.Runbook:
        dst = self.dr()
        dr_obs = dst.zfs.observe([self.g.dr_root])
        manifest, origin = resolve_manifest(self.site, self.g, dst.zfs, manifest_path)
        self.manifest_origin = origin
        served, _ = self.served()
        # Storage only (esxdr target present-clone): without a host the runbook ends at "present".
        h = None if storage_only else self.host()
        if storage_only and not initiators and self.g.vsphere_dr:
            # The presentation admits named initiators only: without --allow-initiator, the DR hosts'
            # own (one property read, no VMs).
            v = self.host(with_vms=False)
            initiators = tuple(x.iqn for x in self.view(v).hosts if x.iqn) if v else ()
        return rb.plan_test_start(rb.DrillInputs(
            initiators=tuple(initiators),
            group=self.g, manifest=manifest, dr_obs=dr_obs, point=point, new_naa=new_naa,
            host=self.view(h) if h else None, served=served, dr_portal=self.server.target.portal,  # type: ignore[union-attr]
            dr_network=self.dr_network(h) if h else None, manifest_origin=origin,
            dr_mount_base=dr_mount_base(dst.zfs, self.g.dr_root, dr_obs)))

    def start(self, point: str = "latest", new_naa: bool = False, dry_run: bool = False,
              manifest_path: str | None = None, storage_only: bool = False,
              initiators: tuple[str, ...] = ()) -> RunRecord:
        rec = RunRecord(kind="test-start", group=self.g.name, site=self.site.name, started=time.time(), dry_run=dry_run)
        return self._guarded(rec, lambda: self.plan_start(point, new_naa, manifest_path, storage_only, initiators),
                             lambda: self._start(rec, point, new_naa, manifest_path, storage_only, initiators),
                             busy=f"another drill of {self.g.name} is running",
                             hint="wait for it, or stop it and run esxdr test cleanup")

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
        rec.take_outcome(j.data)

    # -- test cleanup -------------------------------------------------------
    def plan_cleanup(self) -> rb.Runbook:
        dst = self.dr()
        dr_obs = dst.zfs.observe([self.g.dr_root])
        served, _ = self.served()
        h = self.host()
        return rb.plan_test_cleanup(rb.CleanupInputs(group=self.g, dr_obs=dr_obs, served=served,
                                                     host=self.view(h) if h else None, journal=self.journal.load()))

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


def summary(rec: RunRecord) -> str:
    """The last line of a run, as the drill's admin reads it."""
    if rec.kind == "test-start":
        level = {"application": "app-consistent", "mixed": "partly app-consistent"}.get(rec.consistency or "",
                                                                                     "crash-consistent")
        return (f"RTO {human_duration(rec.rto_seconds)}, RPO {human_duration(rec.rpo_seconds)} "
                f"({level} snapshot {rec.snapshot}) — report: {rec.report_html}")
    return f"{rec.group}: drill cleaned up in {human_duration((rec.finished or rec.started) - rec.started)} " \
           f"— report: {rec.report_html}"

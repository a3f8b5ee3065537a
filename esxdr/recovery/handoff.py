"""Pull mode's hand-off: the side that holds no key to the other stops, snapshots and publishes."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from esxdr.errors import (
    ConflictError,
    UsageError,
)
from esxdr.plan import runbook as rb
from esxdr.recovery.failover import _f_shutdown, _f_stop, _f_unpresent_production, forget_on_dr_host
from esxdr.recovery.record import FailoverRecord, Journal, RunRecord, state_path
from esxdr.recovery.runner import Runner, Say, retry
from esxdr.recovery.sources import live_manifest
from esxdr.replication import Engine, Options, sides
from esxdr.replication.sides import failover_marker, on_dr_box
from esxdr.util import write_json

if TYPE_CHECKING:
    from esxdr.site.model import Site


class HandOff(Runner):
    """``esxdr failover GROUP --planned --hand-off``, on production, in pull mode.

    DR holds only a send-only key to production, so it cannot stop production's VMs, snapshot
    them or remove production's LUNs. Production does those itself (the runbook of
    :func:`esxdr.plan.runbook.plan_handoff`) and publishes the final snapshot on the source
    root; DR's ``esxdr failover GROUP --planned`` then pulls exactly that snapshot and goes on
    as in push mode. Resumable like a failover: a re-run continues where it stopped."""

    fault_prefix = "hand-off"
    lock_suffix = "failover"

    def __init__(self, site: Site, group_name: str | None, *, say: Say = lambda s: None, reverse: bool = False):
        g = site.group(group_name)
        view = g
        self.reverse = reverse
        if reverse:
            # The DR box hands back (esxdr failback --planned --hand-off): its half of the way home.
            if not site.storage_server(g.source).behind_serve:
                raise UsageError(f"--hand-off is the DR box's half of a failback in pull mode, and this site file "
                                 f"reaches {g.source} with its own privileges (no serve_prefix)",
                                 hint=f"in push mode the DR box does all of it: esxdr failback {g.name} --planned")
            site = on_dr_box(site, g.destination, what="--hand-off", refused="seal DR's datasets")
            if not failover_marker(site.state_dir, g.name).exists():
                raise ConflictError(f"{g.name} is not failed over to {g.destination} (no marker in "
                                    f"{failover_marker(site.state_dir, g.name).parent})",
                                    hint=f"the failback hand-off follows esxdr failover {g.name}")
            view = rb.reversed_group(g)
        else:
            if not site.storage_server(g.destination).pulls:
                raise UsageError(f"--hand-off is production's half of a planned failover in pull mode, and "
                                 f"storage.{g.destination} does not pull (no pulls: true in {site.path})",
                                 hint=f"in push mode the DR box does all of it: esxdr failover {g.name} --planned, "
                                      "there")
            if site.storage_server(g.source).behind_serve:
                raise UsageError(f"--hand-off runs on production itself, and {g.source} is reached here through "
                                 "esxdr serve", hint="run it on production, with production's site file")
        self.kind, self.mode = ("failback-hand-off" if reverse else "hand-off"), "planned"
        super().__init__(site, view, Journal.of(site.state_dir, g.name, self.kind), say=say)
        self.original = g

    def plan(self) -> rb.Runbook:
        server = self.site.storage_server(self.g.source)
        m = live_manifest(server, self.g)
        return rb.plan_handoff(rb.HandOffInputs(group=self.g, naas=[lu.naa.hex for lu in m.logical_units] if m else [],
                                                target=server.target.stack if server.target else None,
                                                reverse=self.reverse))

    def run(self, dry_run: bool = False) -> FailoverRecord:
        rec = FailoverRecord(kind=self.kind, group=self.g.name, site=self.site.name, started=time.time(),
                             dry_run=dry_run, mode="planned")
        self._guarded(rec, self.plan, lambda: self._run(rec), busy=f"a failover or hand-off of {self.g.name} is running",
                      hint="wait for it, or stop it and run the same command again")
        return rec

    def _run(self, rec: FailoverRecord) -> None:
        j = self.journal
        prev = j.load()
        if prev and prev.get("complete") and not self.reverse \
                and not failover_marker(self.site.state_dir, self.g.name).exists():
            prev = None  # the group came home since (its marker is gone): this is a new hand-off
            j.forget()
        if prev:
            rec.started, rec.resumed = prev["started"], True
            self.say(f"{self.g.name} is handed off at @{prev.get('snapshot')}: nothing left to do" if prev.get("complete")
                     else f"resuming the hand-off of {self.g.name} started "
                          f"{datetime.fromtimestamp(prev['started'], UTC):%H:%M:%S}Z")
        plan = self.plan()
        rec.runbook = plan
        if not prev:
            j.data = {"kind": self.kind, "group": self.g.name, "mode": "planned", "started": rec.started,
                      "snapshot": None, "snapshot_created": None, "steps": {}}
            j.save()
        self._walk(rec, plan, HANDOFF_STEPS)
        j.data["complete"] = True
        j.save()
        rec.snapshot, rec.snapshot_created = j.data.get("snapshot"), j.data.get("snapshot_created")
        rec.consistency = j.data.get("consistency")


def _h_snapshot(d: HandOff, step: rb.Step, rec: RunRecord) -> list[str]:
    # failback: the reversed view, past DR's own marker (DR has been live since the failover)
    res = Engine(d.site.with_group(d.g), d.g.name, Options(snapshot_only=True, prune=False, progress=False,
                                                            say=d.say, failed_over=d.reverse)).run()
    side = sides.open_side(d.site, d.g.source)
    try:
        obs = side.zfs.observe([d.g.datasets[0]]).get(d.g.datasets[0])
    finally:
        side.transport.close()
    snap = obs.snapshot(res.snapshot) if obs and res.snapshot else None
    d.journal.data.update(snapshot=res.snapshot, snapshot_created=snap.creation if snap else time.time(),
                          consistency=(res.consistency or {}).get("level"))
    d.journal.save()
    return [f"@{res.snapshot}: {len(d.g.datasets)} dataset(s), atomic"
            + (f"; target manifest published ({res.manifest})" if res.manifest else "")]


def _h_publish(d: HandOff, step: rb.Step, rec: RunRecord) -> list[str]:
    snap = d.journal.data.get("snapshot")
    if not snap:
        raise ConflictError(f"{d.g.name}: no final snapshot recorded", hint="run the hand-off again")
    side = sides.open_side(d.site, d.g.source)
    try:
        side.zfs.set_props(d.g.source_root, {rb.HANDOFF_PROP: snap})
    finally:
        side.transport.close()
    nxt = (f"now on production: esxdr failback {d.g.name} --planned --pull" if d.reverse else
           f"now on the DR box: esxdr failover {d.g.name} --planned")
    return [f"{d.g.source_root}: {rb.HANDOFF_PROP}={snap}", f"{nxt} (it pulls @{snap})"]


def _h_seal(d: HandOff, step: rb.Step, rec: RunRecord) -> list[str]:
    """DR hands back: its datasets become replicas again at the final snapshot, the DR host
    forgets the stopped VMs, and failover's journals go. The marker stays, naming the snapshot:
    DR's pull refuses until production holds it as its live copy, and then removes the marker
    itself (esxdr.replication.Engine)."""

    snap = d.journal.data.get("snapshot")
    if not snap:
        raise ConflictError(f"{d.g.name}: no final snapshot recorded", hint="run the hand-off again")
    g = d.original
    dst = sides.open_side(d.site, g.destination)
    try:
        kinds = {name: x.type for name, x in dst.zfs.observe([g.dr_root]).items()}
        for ds in g.dr_datasets:
            if dst.zfs.is_mounted(ds):
                retry(lambda ds=ds: dst.zfs.unmount(ds))
            retry(lambda ds=ds: dst.zfs.rollback(f"{ds}@{snap}", destroy_newer=True))
            dst.zfs.set_props(ds, {"readonly": "on", "canmount": "noauto"})
            if kinds.get(ds) == "filesystem":
                dst.zfs.inherit(ds, "mountpoint")  # back to the DR root's (none: receives never mount)
    finally:
        dst.transport.close()
    out = [f"{g.dr_root}: {len(g.dr_datasets)} dataset(s) sealed at @{snap}"]
    if g.vsphere_dr:
        forget_on_dr_host(d.site, g, d.say)
        out.append(f"{g.vsphere_dr}: the stopped VMs unregistered")
    for kind in ("failover", "reprotect", "failback"):
        state_path(d.site.state_dir, g.name, kind).unlink(missing_ok=True)
    write_json(failover_marker(d.site.state_dir, g.name),
                {"group": g.name, "since": time.time(), "by": d.kind, "snapshot": snap})
    return out + [f"replication stays stopped until production is home at @{snap}"]


HANDOFF_STEPS: dict[str, Callable[..., list[str]]] = {
    "shutdown": _f_shutdown, "snapshot": _h_snapshot, "stop-replication": _f_stop,
    "unpresent-production": _f_unpresent_production, "seal": _h_seal, "publish-handoff": _h_publish,
}


def handoff_summary(rec: RunRecord) -> str:
    if rec.kind == "failback-hand-off":
        return (f"{rec.group}: handed back at @{rec.snapshot} — DR's VMs are stopped, its LUNs removed and its "
                f"datasets sealed; now on production: esxdr failback {rec.group} --planned --pull — report: {rec.report_html}")
    return (f"{rec.group}: handed off at @{rec.snapshot} — production's VMs are stopped and its LUNs removed; "
            f"now on the DR box: esxdr failover {rec.group} --planned — report: {rec.report_html}")

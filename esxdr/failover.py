"""Failover, reprotect and failback: the drill's machinery pointed at the replicas themselves.

``esxdr failover GROUP --planned|--disaster`` walks the runbook of
:func:`esxdr.plan.runbook.plan_failover` with the journal and step functions of
:mod:`esxdr.recovery` (present, rescan, verify, register, NICs, power-on) plus its own
steps: shut production down, final replication, stop replication, remove production's
presentation, the split-brain guard and the promotion of the DR datasets.

Where it acts: failover changes the DR datasets with the DR box's own privileges (the DR
service account behind ``esxdr serve`` may not promote replicas, and must not: a stolen
production key would otherwise be able to take the DR copy live). So esxdr runs ON the DR
box, where the DR storage server is ``local: true``. A DR server reached at a loopback
address is this machine too (the lab), and is treated as local. Anything else is refused
with the advice to run esxdr on the DR box. See docs/recovery.md.

``esxdr reprotect`` rolls production back to the newest snapshot it shares with DR (with
evidence and --yes) and replicates DR → production through the same
:class:`esxdr.replication.Engine`, given the group's reversed view
(:func:`esxdr.plan.runbook.reversed_group`). ``esxdr failback --planned`` is a planned
failover of that reversed view, then the DR datasets are sealed again and replication
production → DR may resume.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from esxdr.errors import (
    CommandFailed,
    ConflictError,
    EsxdrError,
    IdentityConflict,
    TransientError,
    UsageError,
)
from esxdr.faults import checkpoint
from esxdr.fmt import human_bytes, human_duration
from esxdr.lock import GroupLock
from esxdr.plan import runbook as rb
from esxdr.recovery import (
    START_STEPS,
    Drill,
    Journal,
    RunRecord,
    Say,
    _zfs_mounted,
    dr_mount_base,
    resolve_manifest,
    target_transport,
)
from esxdr.replication import failover_marker
from esxdr.util import write_json


# --------------------------------------------------------------------------- where it runs
def on_dr_box(site, server_name: str, *, what: str = "failover", refused: str = "promote replicas",
              dataset: str | None = None):  # Site -> Site
    """The site as seen from the DR box: ``server_name`` is local (its own zfs, its own tgtadm).

    A loopback address counts as this machine only where ``dataset``'s pool is here too: a port
    forwarded to a VM (the OpenZFS lane) is also 127.0.0.1, and its pools are not this machine's."""
    from esxdr.vsphere.session import is_loopback

    server = site.storage_server(server_name)
    if server.local:
        return site
    here = bool(server.address and is_loopback(server.address))
    if here and dataset:
        import subprocess

        pool = dataset.split("/", 1)[0]
        try:
            here = subprocess.run(["zfs", "list", "-H", "-o", "name", pool], capture_output=True,
                                  timeout=60).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            here = False
    if not here:
        raise UsageError(f"{what} acts on {server_name} with its own privileges, and esxdr reaches it through "
                         f"{server.user or 'an account'}@{server.address} (esxdr serve may not {refused})",
                         hint=f"run esxdr on {server_name} itself, with a site file in which storage.{server_name} "
                              "has local: true")
    storage = {**site.storage, server_name: dataclasses.replace(server, local=True, zfs_command=("zfs",))}
    return dataclasses.replace(site, storage=storage)


def with_group(site, group):
    """A site whose protection group of that name is ``group`` (the reversed view, for the Engine)."""
    return dataclasses.replace(site, protection_groups={**site.protection_groups, group.name: group})


def state_path(state_dir: str, group: str, kind: str = "failover") -> Path:
    return Path(state_dir) / "failover" / f"{group}.{kind}.json"


# --------------------------------------------------------------------------- split-brain probe
def probe_served(portal: str, initiators: list[str], *, timeout: float = 3.0) -> tuple[dict[str, str], str | None]:
    """What a target serves, as an initiator at this site sees it: naa hex -> "portal target LUN n".
    Returns ({}, why) when nothing answers (refused, timed out, no login allowed)."""
    from esxdr.targets.probe import Session, discover

    addr, _, port = portal.rpartition(":")
    addr = addr.strip("[]")
    seen: dict[str, str] = {}
    why = None
    for init in initiators:
        try:
            targets = discover(addr, int(port), initiator=init, timeout=timeout)
        except (TransientError, CommandFailed, OSError) as e:
            why = getattr(e, "message", None) or str(e)
            continue
        for iqn, _addrs in targets:
            try:
                with Session(addr, int(port), target=iqn, initiator=init, timeout=timeout) as s:
                    for n in s.report_luns():
                        ident = s.identify(n)
                        if ident.device_type == 0 and ident.naa:
                            seen.setdefault(ident.naa, f"{portal} {iqn} LUN {n}")
            except (TransientError, CommandFailed, OSError) as e:
                why = getattr(e, "message", None) or str(e)
        if seen:
            break
    return seen, (None if seen else why)


# --------------------------------------------------------------------------- the record
@dataclasses.dataclass
class FailoverRecord(RunRecord):
    mode: str = "disaster"
    # Pull mode: the VMs went down at the other side's hand-off, before this run started. From the
    # hand-off's final snapshot (created after they stopped) to the last heartbeat here: a lower
    # bound of the outage, which this run's RTO (from its own start) does not show.
    outage_at_least_seconds: float | None = None

    @property
    def rpo_seconds(self) -> float | None:
        if self.mode == "planned" and self.snapshot_created:
            return 0.0  # the VMs were stopped before the final snapshot: nothing is lost
        return super().rpo_seconds

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "mode": self.mode, "outage_at_least_seconds": self.outage_at_least_seconds}


class Failover(Drill):
    """``esxdr failover`` (and, with ``reverse=True``, ``esxdr failback``) for one protection group."""

    fault_prefix = "failover"

    def __init__(self, site, group_name: str | None, *, say: Say = lambda s: None,
                 reverse: bool = False, pull: bool = False):
        g = site.group(group_name)
        self.reverse = reverse
        self.kind = "failback" if reverse else "failover"
        view = rb.reversed_group(g) if reverse else g
        # Pull mode's way home runs on production: the site file reaches DR only through its
        # send-only account, DR sealed its datasets when it handed back (esxdr failback --planned
        # --hand-off there), and production pulls DR's final snapshot with its own privileges.
        home_pull = reverse and pull
        if pull and not reverse:
            raise UsageError("--pull is for the way home (failback on production); a failover in pull mode "
                             "follows from the site file")
        if home_pull:
            _need_send_only_dr(site, g, "failback --pull")
            if site.storage_server(g.source).behind_serve:
                raise UsageError(f"in pull mode, failback completes on production, and {g.source} is reached here "
                                 "through esxdr serve", hint="run it on production, with a site file in which "
                                 f"storage.{g.source} is local and storage.{g.destination} is DR's send-only account")
            local = site
        else:
            # Otherwise both directions run on the DR box, where failover's journal and marker live:
            # failback reaches production as the site file says (as planned failover does to unpresent
            # it); the DR datasets it sends from and seals afterwards are local there.
            local = on_dr_box(site, g.destination)
        super().__init__(local, group_name, say=say)
        self.g = view
        self.original = g
        self.server = local.storage_server(view.destination)
        self.journal = Journal(local.state_dir, g.name)
        self.journal.path = state_path(local.state_dir, g.name, self.kind)
        self.mode = "disaster"
        # Pull mode: this box reaches the other only through esxdr serve (a send-only account),
        # which cannot stop its VMs or remove its LUNs; the other side hands off first.
        src = local.storage.get(g.source)
        self.pull = home_pull or (not reverse and src is not None and src.behind_serve)

    # -- where things are -------------------------------------------------------
    def _lock(self) -> GroupLock:
        return GroupLock(self.site.state_dir, f"{self.g.name}.failover")

    def plan(self, mode: str, point: str = "latest", force: bool = False,
             manifest_path: str | None = None) -> rb.Runbook:
        dst = self._dr()
        dr_obs = dst.zfs.observe([self.g.dr_root])
        if self.reverse:
            manifest, origin = self._home_manifest(manifest_path)
        else:
            manifest, origin = resolve_manifest(self.site, self.g, dst.zfs, manifest_path)
        self.manifest_origin = origin
        served, _ = self._served()
        h = self._host()
        prod = self.site.storage.get(self.g.source)
        return rb.plan_failover(rb.FailoverInputs(
            group=self.g, manifest=manifest, dr_obs=dr_obs, mode=mode, point=point, force=force,
            host=self._view(h) if h else None, served=served, dr_portal=self.server.target.portal,  # type: ignore[union-attr]
            production_portal=prod.target.portal if prod and prod.target else None, manifest_origin=origin,
            kind=self.kind, dr_mount_base=dr_mount_base(dst.zfs, self.g.dr_root, dr_obs),
            pull=self.pull, handoff=self._handoff() if self.pull and mode == "planned" else None))

    def _handoff(self) -> str | None:
        """The final snapshot the other side published with its hand-off (``esxdr:handoff`` on its
        root), read through the send-only account. That side may be compromised: the value must
        name one of the group's own snapshots, present on every dataset, with nothing newer."""
        from esxdr.plan.retention import esxdr_prefix
        from esxdr.replication.sides import open_side

        g = self.g
        who, cmd = self._other_side()
        src = open_side(self.site, g.source)
        try:
            obs = src.zfs.observe([g.source_root])
        finally:
            src.transport.close()
        root = obs.get(g.source_root)
        value = root.props.get(rb.HANDOFF_PROP) if root else None
        if not value:
            return None
        again = f"hand off again on {who} ({cmd})"
        prefix = esxdr_prefix(g.name)
        if not (value.startswith(prefix) and re.fullmatch(r"\d{8}T\d{6}Z", value[len(prefix):])):
            raise ConflictError(f"{g.source_root}: {rb.HANDOFF_PROP}={value[:80]!r} is not a snapshot of {g.name}",
                                hint=f"{who}'s hand-off is damaged or forged: {again}"
                                     + ("" if self.reverse else ", or recover DR's own snapshots with --disaster"))
        missing = [ds for ds in g.datasets if ds not in obs or obs[ds].snapshot(value) is None]
        if missing:
            raise ConflictError(f"{who}'s hand-off names @{value}, which {missing[0]} on {g.source} does not have",
                                hint=again + ("" if self.reverse else ", or recover DR's own snapshots with --disaster"))
        newer = [f"{ds}@{x.name}" for ds in g.datasets for x in obs[ds].snapshots
                 if x.createtxg > obs[ds].snapshot(value).createtxg]  # type: ignore[union-attr]
        if newer:
            # Something snapshotted that side after it stopped its VMs and handed off: writes may
            # have followed. A planned move must lose nothing, so nothing is pulled yet.
            raise ConflictError(f"{who} has {', '.join(newer[:3])}, newer than its hand-off @{value}",
                                hint=f"check {who}: were its VMs started again? If nothing was written, destroy "
                                     f"the newer snapshot(s) there and run this {self.kind} again")
        return value

    def _other_side(self) -> tuple[str, str]:
        """Who hands off to this run in pull mode, and the command it runs for that."""
        g = self.original
        if self.reverse:
            return "the DR box", f"esxdr failback {g.name} --planned --hand-off"
        return "production", f"esxdr failover {g.name} --planned --hand-off"

    def _home_manifest(self, manifest_path: str | None):
        """Failback presents production's own identities again: the manifest shipped with the
        replica (on the DR root), its LUs renamed to the reversed view's datasets."""
        import copy

        from esxdr.replication.sides import open_side

        g = self.original
        dr = open_side(self.site, g.destination)
        try:
            m, origin = resolve_manifest(self.site, g, dr.zfs, manifest_path)
        finally:
            dr.transport.close()
        m = copy.deepcopy(m)
        for lu in m.logical_units:
            ds = rb._lu_dataset(lu, g)
            if ds in g.datasets:
                lu.backing = dataclasses.replace(lu.backing, dataset=g.dr_dataset(ds))
        return m, origin

    def run(self, mode: str, point: str = "latest", force: bool = False, dry_run: bool = False,
            manifest_path: str | None = None) -> FailoverRecord:
        self.mode = mode
        rec = FailoverRecord(kind=self.kind, group=self.g.name, site=self.site.name, started=time.time(),
                             dry_run=dry_run, mode=mode)
        self._guarded(rec, lambda: self.plan(mode, point, force, manifest_path),
                      lambda: self._run(rec, mode, point, force, manifest_path),
                      busy=f"another {self.kind} of {self.g.name} is running",
                      hint="wait for it, or stop it and run the same command again")
        return rec

    def _run(self, rec: FailoverRecord, mode: str, point: str, force: bool, manifest_path: str | None) -> None:
        j = self.journal
        prev = j.load()
        if prev:
            if prev.get("mode") != mode or point not in ("latest", prev.get("point")):
                raise ConflictError(f"a {prev.get('mode')} {self.kind} of {self.g.name} is under way "
                                    f"(started {datetime.fromtimestamp(prev['started'], UTC):%Y-%m-%d %H:%M:%S}Z)",
                                    hint=f"finish it: esxdr {self.kind} {self.g.name} --{prev.get('mode')}")
            point, force = prev.get("point", point), prev.get("force", force)
            rec.started = prev["started"]
            rec.resumed = True
            self.say(f"the {mode} {self.kind} of {self.g.name} is complete: nothing left to do" if prev.get("complete")
                     else f"resuming the {mode} {self.kind} of {self.g.name} started "
                          f"{datetime.fromtimestamp(prev['started'], UTC):%H:%M:%S}Z")
        plan = self.plan(mode, point, force, manifest_path)
        rec.runbook = plan
        rec.manifest_origin = self.manifest_origin
        rec.notes += plan.notes
        if not prev:
            j.data = {"kind": self.kind, "group": self.g.name, "mode": mode, "point": point, "force": force,
                      "started": rec.started, "snapshot": plan.snapshot, "snapshot_created": plan.snapshot_created,
                      "consistency": plan.consistency,
                      "luns": next(s.params["luns"] for s in plan.steps if s.kind == "present"),
                      "created": {}, "steps": {}, "vms": {}, "datastores": []}
            j.save()
        rec.snapshot, rec.snapshot_created = j.data.get("snapshot"), j.data.get("snapshot_created")
        try:
            self._walk(rec, plan, FAILOVER_STEPS)
        except EsxdrError:
            if not any(s.get("outcome") == "done" for s in j.data.get("steps", {}).values()):
                j.forget()  # refused before changing anything (the guard): nothing to resume
            raise
        rec.snapshot, rec.snapshot_created = j.data.get("snapshot"), j.data.get("snapshot_created")
        rec.consistency = j.data.get("consistency")
        j.data["complete"] = True
        j.data["finished"] = time.time()
        j.save()
        rec.datastores = j.data.get("datastores", [])
        rec.vms = [{"name": n, **v, "heartbeat_after_s": round(v["heartbeat_at"] - rec.started, 1)
                    if v.get("heartbeat_at") else None} for n, v in j.data.get("vms", {}).items()]
        beats = [v["heartbeat_at"] for v in j.data.get("vms", {}).values() if v.get("heartbeat_at")]
        rec.last_heartbeat = max(beats) if beats else None
        if self.pull and mode == "planned" and rec.last_heartbeat and rec.snapshot_created:
            rec.outage_at_least_seconds = round(rec.last_heartbeat - rec.snapshot_created, 1)
            rec.notes.append(f"pull mode: the VMs stopped at {self._other_side()[0]}'s hand-off, before @{rec.snapshot} "
                             f"was taken; from that snapshot to the last heartbeat here "
                             f"{human_duration(rec.outage_at_least_seconds)} passed, so the outage was at least that "
                             "(the RTO counts from this run's start)")
        if self.reverse:
            self._after_failback(rec)

    def _after_failback(self, rec: FailoverRecord) -> None:
        """Home again: seal the DR datasets as replicas at the final snapshot, let replication resume."""
        from esxdr.replication.sides import open_side

        g = self.original
        if self.pull:
            self._home_after_pull(rec)
            return
        dst = open_side(self.site, g.destination)
        try:
            snap = self.journal.data.get("snapshot")
            kinds = {name: d.type for name, d in dst.zfs.observe([g.dr_root]).items()}
            for ds in g.dr_datasets:
                if _zfs_mounted(dst.zfs, ds):
                    _retry(lambda ds=ds: dst.zfs.unmount(ds))
                if snap:
                    _retry(lambda ds=ds: dst.zfs.rollback(f"{ds}@{snap}", destroy_newer=True))
                dst.zfs.set_props(ds, {"readonly": "on", "canmount": "noauto"})
                # the promote may have given it a mountpoint of its own: back to the DR root's
                if kinds.get(ds) == "filesystem":
                    dst.zfs.inherit(ds, "mountpoint")
        finally:
            dst.transport.close()
        if g.vsphere_dr:
            self._forget_on_dr_host(g)
        failover_marker(self.site.state_dir, g.name).unlink(missing_ok=True)
        for kind in ("failover", "reprotect", "failback"):
            state_path(self.site.state_dir, g.name, kind).unlink(missing_ok=True)
        rec.notes.append(f"{g.dr_root}: sealed again at @{snap}; replication {g.source} → {g.destination} resumes")
        self.say(f"{g.name}: DR datasets sealed at @{snap}; esxdr replicate {g.name} works again")


    def _home_after_pull(self, rec: FailoverRecord) -> None:
        """Pull mode, on production: DR sealed itself when it handed back, and its pull resumes
        once it sees production home. Here only production's own traces of the round trip go:
        its hand-off property, marker and journals."""
        from esxdr.replication.sides import open_side

        g = self.original
        src = open_side(self.site, g.source)
        try:
            src.zfs.inherit(g.source_root, rb.HANDOFF_PROP)
        finally:
            src.transport.close()
        failover_marker(self.site.state_dir, g.name).unlink(missing_ok=True)
        for kind in ("hand-off", "reprotect", "failback"):
            state_path(self.site.state_dir, g.name, kind).unlink(missing_ok=True)
        snap = self.journal.data.get("snapshot")
        rec.notes.append(f"{g.source}: home at @{snap}; esxdr replicate {g.name} --snapshot-only works again here, and "
                         f"the DR box's pull resumes by itself")
        self.say(f"{g.name}: home at @{snap}; snapshots resume here (--snapshot-only), DR's pull resumes by itself")

    def _forget_on_dr_host(self, g) -> None:
        forget_on_dr_host(self.site, g, self.say)


def forget_on_dr_host(site, g, say: Say) -> None:
    """The DR host keeps the stopped VMs and the LUNs that went away: unregister the group's VMs
    (only when powered off) and rescan, so the next drill starts from a clean host."""
    from esxdr.vsphere import vms as vv
    from esxdr.vsphere.recovery import read_dr, rescan_hosts
    from esxdr.vsphere.session import connect

    names = {v.name for v in g.vms}
    with connect(site.endpoint(g.vsphere_dr)) as s:
        h, members = read_dr(s, site.endpoint(g.vsphere_dr))  # a vCenter: every host at once
        off = [n for n, v in h.vms.items() if (not names or n in names) and v.power_state == "poweredOff"]
        vv.unregister(s, [s.ref("VirtualMachine", h.vms[n].moid) for n in off])
        rescan_hosts(s, list(members.values()) or [h])
    say(f"{g.vsphere_dr}: {len(off)} stopped VM(s) unregistered, storage rescanned")


class HandOff(Drill):
    """``esxdr failover GROUP --planned --hand-off``, on production, in pull mode.

    DR holds only a send-only key to production, so it cannot stop production's VMs, snapshot
    them or remove production's LUNs. Production does those itself (the runbook of
    :func:`esxdr.plan.runbook.plan_handoff`) and publishes the final snapshot on the source
    root; DR's ``esxdr failover GROUP --planned`` then pulls exactly that snapshot and goes on
    as in push mode. Resumable like a failover: a re-run continues where it stopped."""

    fault_prefix = "hand-off"

    def __init__(self, site, group_name: str | None, *, say: Say = lambda s: None, reverse: bool = False):
        super().__init__(site, group_name, say=say)
        g = self.g
        self.reverse = reverse
        if reverse:
            # The DR box hands back (esxdr failback --planned --hand-off): its half of the way home.
            if not site.storage_server(g.source).behind_serve:
                raise UsageError(f"--hand-off is the DR box's half of a failback in pull mode, and this site file "
                                 f"reaches {g.source} with its own privileges (no serve_prefix)",
                                 hint=f"in push mode the DR box does all of it: esxdr failback {g.name} --planned")
            self.site = on_dr_box(site, g.destination, what="--hand-off", refused="seal DR's datasets")
            if not failover_marker(self.site.state_dir, g.name).exists():
                raise ConflictError(f"{g.name} is not failed over to {g.destination} (no marker in "
                                    f"{failover_marker(self.site.state_dir, g.name).parent})",
                                    hint=f"the failback hand-off follows esxdr failover {g.name}")
            self.original, self.g = g, rb.reversed_group(g)
        else:
            if not site.storage_server(g.destination).pulls:
                raise UsageError(f"--hand-off is production's half of a planned failover in pull mode, and "
                                 f"storage.{g.destination} does not pull (no pulls: true in {site.path})",
                                 hint=f"in push mode the DR box does all of it: esxdr failover {g.name} --planned, "
                                      "there")
            if site.storage_server(g.source).behind_serve:
                raise UsageError(f"--hand-off runs on production itself, and {g.source} is reached here through "
                                 "esxdr serve", hint="run it on production, with production's site file")
            self.original = g
        self.kind, self.mode = ("failback-hand-off" if reverse else "hand-off"), "planned"
        self.journal.path = state_path(self.site.state_dir, g.name, self.kind)

    def _lock(self) -> GroupLock:
        return GroupLock(self.site.state_dir, f"{self.g.name}.failover")

    def plan(self) -> rb.Runbook:
        from esxdr.replication.shipping import capture_manifest

        server = self.site.storage_server(self.g.source)
        t = target_transport(server)
        try:
            m = capture_manifest(server, self.g, t)
        finally:
            t.close()
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


def _retry(fn, attempts: int = 10) -> None:
    """zfs-fuse reports "dataset is busy" for a moment after tgtd let go of a file."""
    for i in range(attempts):
        try:
            fn()
            return
        except EsxdrError:
            if i == attempts - 1:
                raise
            time.sleep(0.5)


# --------------------------------------------------------------------------- steps
def _f_shutdown(d: Failover, step: rb.Step, rec: RunRecord) -> list[str]:
    from esxdr.vsphere.recovery import shutdown_vms
    from esxdr.vsphere.session import connect

    ep = step.params.get("endpoint")
    if not ep:
        return ["no production vSphere in the site file: the VMs were not shut down by esxdr"]
    with connect(d.site.endpoint(ep)) as s:
        from esxdr.vsphere.recovery import read_dr

        h, _members = read_dr(s, d.site.endpoint(ep))  # a vCenter: the VMs of all its hosts
        wanted = step.params["vms"] or sorted(h.vms)
        on = [(n, h.vms[n]) for n in wanted if n in h.vms and h.vms[n].power_state == "poweredOn"]
        how = shutdown_vms(s, [(s.ref("VirtualMachine", v.moid), v.tools_running) for _, v in on],
                           timeout=step.params["timeout"])
        d.journal.data["requests_production"] = s.requests
    by_moid = {v.moid: n for n, v in on}
    said = [f"{by_moid[m]}: {w}" for m, w in sorted(how.items())]
    return [f"{len(on)} VM(s) stopped on {ep}" + (f" ({len(wanted) - len(on)} already off)" if len(wanted) > len(on)
                                                    else "")] + said


def _f_replicate(d: Failover, step: rb.Step, rec: RunRecord) -> list[str]:
    from esxdr.replication import Engine, Options

    if step.params.get("pull"):
        return _pull_handoff(d, step.params["handoff"])
    site = with_group(d.site, d.g)  # failback: the reversed view's source is the (local) DR box
    res = Engine(site, d.g.name, Options(take_snapshot=True, prune=False, progress=False, say=d.say,
                                         failed_over=d.reverse)).run()
    dst = d._dr()
    obs = dst.zfs.observe([d.g.dr_datasets[0]]).get(d.g.dr_datasets[0])
    snap = obs.snapshot(res.snapshot) if obs and res.snapshot else None
    d.journal.data["snapshot"] = res.snapshot
    d.journal.data["snapshot_created"] = snap.creation if snap else time.time()
    d.journal.save()
    return [f"@{res.snapshot}: {len(res.datasets)} dataset(s), {res.bytes} bytes in {res.seconds:.1f}s"]


def _pull_handoff(d: Failover, want: str) -> list[str]:
    """Pull mode: bring this side to the other's hand-off snapshot, and to nothing newer. The pull
    brings the newest snapshot the other side has; if that is not the hand-off, it changed after
    handing off, and a planned move that would lose or invent writes is refused."""
    from esxdr.replication import Engine, Options

    res = Engine(with_group(d.site, d.g), d.g.name, Options(pull=True, take_snapshot=False, prune=False,
                                                            progress=False, say=d.say, failed_over=d.reverse)).run()
    obs = d._dr().zfs.observe([d.g.dr_root])
    for ds in d.g.dr_datasets:
        newest = obs[ds].newest if ds in obs else None
        if newest is None or newest.name != want:
            who, cmd = d._other_side()
            raise ConflictError(f"{ds}: the newest snapshot after the pull is "
                                f"{'@' + newest.name if newest else 'none'}, not {who}'s hand-off @{want}",
                                hint=f"{who} changed after it handed off (a newer snapshot?): check it, hand off "
                                     f"again there ({cmd}), then run this {d.kind} again")
    snap = obs[d.g.dr_datasets[0]].snapshot(want)
    assert snap is not None
    d.journal.data.update(snapshot=want, snapshot_created=snap.creation, consistency=snap.prop("esxdr:consistency"))
    d.journal.save()
    return [f"@{want}: {len(res.datasets)} dataset(s) pulled, {res.bytes} bytes in {res.seconds:.1f}s; "
            "the newest snapshot of every DR dataset"]


def _f_stop(d: Failover, step: rb.Step, rec: RunRecord) -> list[str]:
    marker = failover_marker(d.site.state_dir, d.g.name)
    if not marker.exists():
        write_json(marker, {"group": d.g.name, "since": time.time(), "by": d.kind, "mode": d.mode})
    return [f"marker {marker}: esxdr replicate {d.g.name} refuses until failback"]


def _f_unpresent_production(d: Failover, step: rb.Step, rec: RunRecord) -> list[str]:
    from esxdr.targets import tgt

    server = d.site.storage_server(d.g.source)
    if server.target is None:
        return [f"{server.name} has no target in the site file: nothing to remove"]
    if server.target.stack != "tgt":
        raise UsageError(f"removing production's presentation is implemented for tgt only; {server.name} runs "
                         f"{server.target.stack}",
                         hint="remove the group's LUs from the production target by hand, then run the failover "
                              "again (the guard checks they are gone)")
    t = target_transport(server)
    try:
        adm = tgt.Tgtadm(server.target.control_port)
        targets, _ = tgt.observe_native(t, server.target.control_port)
        naas = set(step.params["naas"])
        out = []
        for tg in targets:
            mine = {n: lu for n, lu in tg.luns.items() if lu.device_type != "controller" and lu.path
                    and tgt.naa_from_scsi_id(lu.scsi_id, tg.tid, n).hex in naas}
            if not mine:
                continue
            others = [n for n, lu in tg.luns.items() if lu.device_type != "controller" and lu.path and n not in mine]
            if not others:
                t.run(adm("--op", "delete", "--mode", "target", "--tid", str(tg.tid), "--force"))
                out.append(f"target {tg.iqn} removed ({len(mine)} LU(s))")
            else:
                for n in sorted(mine):
                    t.run(adm("--op", "delete", "--mode", "logicalunit", "--tid", str(tg.tid), "--lun", str(n)))
                out.append(f"{tg.iqn}: LUN(s) {', '.join(map(str, sorted(mine)))} removed")
        return out or ["production serves none of the group's NAAs (removed earlier)"]
    finally:
        t.close()


def _f_guard(d: Failover, step: rb.Step, rec: RunRecord) -> list[str]:
    from esxdr.targets.probe import DEFAULT_INITIATOR

    portal = step.params.get("portal")
    if not portal:
        return ["no production target in the site file: nothing to probe"]
    inits = [i for i in (step.params.get("initiator"), DEFAULT_INITIATOR) if i]
    seen, why = probe_served(portal, inits)
    lines = rb.split_brain(seen, step.params["naas"])
    if lines and not step.params.get("force"):
        raise IdentityConflict("split-brain guard: production still serves the group's LUNs:\n  " + "\n  ".join(lines),
                               hint="stop production's target (or remove those LUs) so only one site serves them, "
                                    "or --force if you are certain production's copies are dead")
    if lines:
        return ["--force: going on although " + x for x in lines]
    return [f"production target {portal} serves none of the {len(step.params['naas'])} NAA(s) to this site"
            + (f" ({why})" if why else "")]


def _f_promote(d: Failover, step: rb.Step, rec: RunRecord) -> list[str]:
    dst = d._dr()
    ds = step.params["dataset"]
    snap = step.params.get("snapshot") or d.journal.data.get("snapshot")
    if not snap:
        raise ConflictError(f"{ds}: no recovery point recorded", hint="run the failover again")
    obs = dst.zfs.observe([ds]).get(ds)
    if obs is None or obs.snapshot(snap) is None:
        raise ConflictError(f"{ds}@{snap} does not exist on {dst.name}", hint="choose another --point")
    if _zfs_mounted(dst.zfs, ds):
        _retry(lambda: dst.zfs.unmount(ds))
    from esxdr.replication import hold_tag

    for name in step.params.get("release") or ():  # --force: replication's own hold on a newer point
        dst.transport.run([*dst.zfs.cmd, "release", hold_tag(d.g.name), f"{ds}@{name}"], check=False)
    newer = [s.name for s in obs.snapshots if s.createtxg > obs.snapshot(snap).createtxg]  # type: ignore[union-attr]
    _retry(lambda: dst.zfs.rollback(f"{ds}@{snap}", destroy_newer=True))
    checkpoint("failover-mid-promote")
    props = {"readonly": "off", "canmount": "on"}
    if step.params.get("mountpoint") and step.params.get("mount", True):
        # the replica inherits mountpoint=none from the DR root: it mounts where its LUN file is served
        props["mountpoint"] = step.params["mountpoint"]
    dst.zfs.set_props(ds, props)
    # setting a mountpoint with canmount=on mounts it already, and a resumed step may find it mounted
    if step.params.get("mount", True) and not _zfs_mounted(dst.zfs, ds):
        dst.zfs.mount(ds)
    if not d.journal.data.get("snapshot_created"):
        d.journal.data["snapshot_created"] = obs.snapshot(snap).creation  # type: ignore[union-attr]
        d.journal.save()
    return [f"{ds} at @{snap}, writable" + (f", mounted ({step.params['path']})" if step.params.get("path") else "")
            + (f"; discarded {', '.join('@' + n for n in newer)}" if newer else "")]


FAILOVER_STEPS = {
    **START_STEPS,
    "shutdown": _f_shutdown, "replicate": _f_replicate, "stop-replication": _f_stop,
    "unpresent-production": _f_unpresent_production, "guard": _f_guard, "promote": _f_promote,
}


def _h_snapshot(d: HandOff, step: rb.Step, rec: RunRecord) -> list[str]:
    from esxdr.replication import Engine, Options
    from esxdr.replication.sides import open_side

    # failback: the reversed view, past DR's own marker (DR has been live since the failover)
    res = Engine(with_group(d.site, d.g), d.g.name, Options(snapshot_only=True, prune=False, progress=False,
                                                            say=d.say, failed_over=d.reverse)).run()
    side = open_side(d.site, d.g.source)
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
    from esxdr.replication.sides import open_side

    snap = d.journal.data.get("snapshot")
    if not snap:
        raise ConflictError(f"{d.g.name}: no final snapshot recorded", hint="run the hand-off again")
    side = open_side(d.site, d.g.source)
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
    from esxdr.replication.sides import open_side

    snap = d.journal.data.get("snapshot")
    if not snap:
        raise ConflictError(f"{d.g.name}: no final snapshot recorded", hint="run the hand-off again")
    g = d.original
    dst = open_side(d.site, g.destination)
    try:
        kinds = {name: x.type for name, x in dst.zfs.observe([g.dr_root]).items()}
        for ds in g.dr_datasets:
            if _zfs_mounted(dst.zfs, ds):
                _retry(lambda ds=ds: dst.zfs.unmount(ds))
            _retry(lambda ds=ds: dst.zfs.rollback(f"{ds}@{snap}", destroy_newer=True))
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


def summary(rec: RunRecord) -> str:
    mode = getattr(rec, "mode", "")
    outage = getattr(rec, "outage_at_least_seconds", None)
    return (f"{rec.group}: {mode} {rec.kind} done — RTO {human_duration(rec.rto_seconds)}"
            + (f" (outage since the hand-off ≥ {human_duration(outage)})" if outage is not None else "")
            + f", RPO {human_duration(rec.rpo_seconds)} (snapshot {rec.snapshot}) — report: {rec.report_html}")


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


def plan_reprotect(g, prod_obs: dict, dr_obs: dict) -> ReprotectPlan:
    """Pure: per production dataset, the newest snapshot in common with its DR dataset (by guid) and
    what rolling back to it discards (the evidence shown before --yes)."""
    from esxdr.plan.replication import common_snapshot

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

    def __init__(self, site, group_name: str | None, *, say: Say = lambda s: None, pull: bool = False):
        self.g = site.group(group_name)
        # Pull mode (--pull): on production, DR read through its send-only account; production pulls.
        self.pull = pull
        if pull:
            _need_send_only_dr(site, self.g, "reprotect --pull")
        if self.pull and site.storage_server(self.g.source).behind_serve:
            raise UsageError(f"in pull mode, reprotect runs on production, and {self.g.source} is reached here "
                             "through esxdr serve", hint="run it on production, with a site file in which "
                             f"storage.{self.g.source} is local and storage.{self.g.destination} is DR's send-only "
                             "account")
        self.site = site if self.pull else on_dr_box(site, self.g.destination)
        self.say = say

    def _sides(self):
        from esxdr.replication.sides import both, open_side

        return both(lambda: open_side(self.site, self.g.source), lambda: open_side(self.site, self.g.destination))

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
            from esxdr.replication import both

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
        with GroupLock(self.site.state_dir, f"{self.g.name}.failover"):
            marker = failover_marker(self.site.state_dir, self.g.name)
            if self.pull and not marker.exists():
                # After a disaster, production comes back without its hand-off's marker: its scheduled
                # --snapshot-only would snapshot the replica it becomes now, and the next pull from DR
                # would find it diverged. The marker stops those runs until failback brings it home.
                write_json(marker, {"group": self.g.name, "since": time.time(), "by": "reprotect"})
                self.say(f"{self.g.source}: its snapshots stop until failback (marker {marker})")
            self._stop_production_target()
            prod, _dr = self._sides()
            try:
                for r in p.rollbacks:
                    ds = r["dataset"]
                    if _zfs_mounted(prod.zfs, ds):
                        _retry(lambda ds=ds: prod.zfs.unmount(ds, force=True))
                    _retry(lambda ds=ds, r=r: prod.zfs.rollback(f"{ds}@{r['common']}", destroy_newer=True))
                    # A replica now: never written, never mounted (as on DR before the failover).
                    prod.zfs.set_props(ds, {"readonly": "on", "canmount": "noauto"})
                    self.say(f"{ds}: rolled back to @{r['common']}" + (
                        f", discarded {', '.join('@' + n for n in r['discards'])}" if r["discards"] else ""))
            finally:
                prod.transport.close()
                _dr.transport.close()
            from esxdr.replication import Engine, Options

            rev = rb.reversed_group(self.g)
            res = Engine(with_group(self.site, rev), rev.name,
                         Options(take_snapshot=True, prune=False, progress=False, say=self.say,
                                 failed_over=True, pull=self.pull)).run()
        out = {"group": self.g.name, "plan": p.to_dict(), "snapshot": res.snapshot, "bytes": res.bytes,
               "seconds": round(time.time() - started, 1), "direction": f"{self.g.destination} → {self.g.source}"}
        write_json(state_path(self.site.state_dir, self.g.name, "reprotect"), {**out, "finished": time.time()})
        return out

    def _stop_production_target(self) -> None:
        """A production back from the dead may serve its stale LUNs again: take them off first."""
        step = rb.Step("unpresent-production", "unpresent-production", "", "",
                       {"naas": sorted(_group_naas(self.site, self.g))})
        fake = dataclasses.make_dataclass("V", [("site", Any), ("g", Any)])(self.site, self.g)
        for line in _f_unpresent_production(fake, step, None):  # type: ignore[arg-type]
            self.say(f"{self.g.source}: {line}")


def _need_send_only_dr(site, g, what: str) -> None:
    """The way home in pull mode reads DR through its send-only account, from production."""
    dr = site.storage_server(g.destination)
    if not dr.behind_serve:
        why = "local: true here" if dr.local else "not behind esxdr serve (no serve_prefix)"
        raise UsageError(f"{what} reads {g.destination} through its send-only account, but storage.{g.destination} "
                         f"is {why}", hint=f"run it on production, with a site file in which storage.{g.destination} "
                         f"has address, user, key and serve_prefix: {g.dr_root} (esxdr keys authorized-line --home "
                         "prints the line for DR's account)")


def _group_naas(site, g) -> set[str]:
    from esxdr.replication.sides import open_side
    from esxdr.targets.manifest import Naa

    dr = open_side(site, g.destination)
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
            f"{out['group']} --planned")

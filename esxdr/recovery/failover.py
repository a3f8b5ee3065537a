"""Failover and failback: the drill's machinery pointed at the replicas themselves.

``esxdr failover GROUP --planned|--disaster`` walks the runbook of
:func:`esxdr.plan.runbook.plan_failover` with the :class:`~esxdr.recovery.runner.Runner` and the
steps of :mod:`esxdr.recovery.steps` (present, rescan, verify, register, NICs, power-on) plus its own
steps: shut production down, final replication, stop replication, remove production's
presentation, the split-brain guard and the promotion of the DR datasets.

Where it acts: failover changes the DR datasets with the DR box's own privileges (the DR
service account behind ``esxdr serve`` may not promote replicas, and must not: a stolen
production key would otherwise be able to take the DR copy live). So esxdr runs ON the DR
box, where the DR storage server is ``local: true``. A DR server reached at a loopback
address is this machine too (the lab), and is treated as local. Anything else is refused
with the advice to run esxdr on the DR box. See docs/recovery.md.

``esxdr reprotect`` (:mod:`esxdr.recovery.reprotect`) rolls production back to the newest
snapshot it shares with DR (with evidence and --yes) and replicates DR → production through the
same :class:`esxdr.replication.Engine`, given the group's reversed view
(:func:`esxdr.plan.runbook.reversed_group`). ``esxdr failback --planned`` is a planned
failover of that reversed view, then the DR datasets are sealed again and replication
production → DR may resume.
"""

from __future__ import annotations

import dataclasses
import re
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from esxdr.errors import (
    CommandFailed,
    ConflictError,
    EsxdrError,
    IdentityConflict,
    TransientError,
    UsageError,
)
from esxdr.faults import checkpoint
from esxdr.fmt import human_duration
from esxdr.plan import runbook as rb
from esxdr.plan.retention import esxdr_prefix
from esxdr.recovery.record import FailoverRecord, Journal, RunRecord, state_path
from esxdr.recovery.runner import Runner, Say, retry
from esxdr.recovery.sources import dr_mount_base, resolve_manifest, target_transport
from esxdr.recovery.steps import START_STEPS
from esxdr.replication import Engine, Options, sides
from esxdr.replication.sides import failover_marker, hold_tag, on_dr_box
from esxdr.targets import tgt
from esxdr.targets.probe import DEFAULT_INITIATOR, Session, discover
from esxdr.util import write_json

if TYPE_CHECKING:
    from esxdr.recovery.handoff import HandOff
    from esxdr.site.model import ProtectionGroup, Site


# --------------------------------------------------------------------------- split-brain probe
def probe_served(portal: str, initiators: list[str], *, timeout: float = 3.0) -> tuple[dict[str, str], str | None]:
    """What a target serves, as an initiator at this site sees it: naa hex -> "portal target LUN n".
    Returns ({}, why) when nothing answers (refused, timed out, no login allowed)."""

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

class Failover(Runner):
    """``esxdr failover`` (and, with ``reverse=True``, ``esxdr failback``) for one protection group."""

    fault_prefix = "failover"
    lock_suffix = "failover"

    def __init__(self, site: Site, group_name: str | None, *, say: Say = lambda s: None,
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
            need_send_only_dr(site, g, "failback --pull")
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
        super().__init__(local, view, Journal.of(local.state_dir, g.name, self.kind), say=say)
        self.original = g
        self.mode = "disaster"
        # Pull mode: this box reaches the other only through esxdr serve (a send-only account),
        # which cannot stop its VMs or remove its LUNs; the other side hands off first.
        src = local.storage.get(g.source)
        self.pull = home_pull or (not reverse and src is not None and src.behind_serve)

    # -- where things are -------------------------------------------------------
    def plan(self, mode: str, point: str = "latest", force: bool = False,
             manifest_path: str | None = None) -> rb.Runbook:
        dst = self.dr()
        dr_obs = dst.zfs.observe([self.g.dr_root])
        if self.reverse:
            manifest, origin = self._home_manifest(manifest_path)
        else:
            manifest, origin = resolve_manifest(self.site, self.g, dst.zfs, manifest_path)
        self.manifest_origin = origin
        served, _ = self.served()
        h = self.host()
        prod = self.site.storage.get(self.g.source)
        return rb.plan_failover(rb.FailoverInputs(
            group=self.g, manifest=manifest, dr_obs=dr_obs, mode=mode, point=point, force=force,
            host=self.view(h) if h else None, served=served, dr_portal=self.server.target.portal,  # type: ignore[union-attr]
            production_portal=prod.target.portal if prod and prod.target else None, manifest_origin=origin,
            kind=self.kind, dr_mount_base=dr_mount_base(dst.zfs, self.g.dr_root, dr_obs),
            pull=self.pull, handoff=self._handoff() if self.pull and mode == "planned" else None))

    def _handoff(self) -> str | None:
        """The final snapshot the other side published with its hand-off (``esxdr:handoff`` on its
        root), read through the send-only account. That side may be compromised: the value must
        name one of the group's own snapshots, present on every dataset, with nothing newer."""

        g = self.g
        who, cmd = self._other_side()
        src = sides.open_side(self.site, g.source)
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

        g = self.original
        dr = sides.open_side(self.site, g.destination)
        try:
            m, origin = resolve_manifest(self.site, g, dr.zfs, manifest_path)
        finally:
            dr.transport.close()
        m = copy.deepcopy(m)
        for lu in m.logical_units:
            ds = rb.lu_dataset(lu, g)
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
        rec.take_outcome(j.data)
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

        g = self.original
        if self.pull:
            self._home_after_pull(rec)
            return
        dst = sides.open_side(self.site, g.destination)
        try:
            snap = self.journal.data.get("snapshot")
            kinds = {name: d.type for name, d in dst.zfs.observe([g.dr_root]).items()}
            for ds in g.dr_datasets:
                if dst.zfs.is_mounted(ds):
                    retry(lambda ds=ds: dst.zfs.unmount(ds))
                if snap:
                    retry(lambda ds=ds: dst.zfs.rollback(f"{ds}@{snap}", destroy_newer=True))
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

        g = self.original
        src = sides.open_side(self.site, g.source)
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

    def _forget_on_dr_host(self, g: ProtectionGroup) -> None:
        forget_on_dr_host(self.site, g, self.say)


def forget_on_dr_host(site: Site, g: ProtectionGroup, say: Say) -> None:
    """The DR host keeps the stopped VMs and the LUNs that went away: unregister the group's VMs
    (only when powered off) and rescan, so the next drill starts from a clean host."""
    from esxdr.vsphere import vms as vv
    from esxdr.vsphere.recovery import read_dr, rescan_hosts
    from esxdr.vsphere.session import connect

    if g.vsphere_dr is None:
        return
    names = {v.name for v in g.vms}
    with connect(site.endpoint(g.vsphere_dr)) as s:
        h, members = read_dr(s, site.endpoint(g.vsphere_dr))  # a vCenter: every host at once
        off = [n for n, v in h.vms.items() if (not names or n in names) and v.power_state == "poweredOff"]
        vv.unregister(s, [s.ref("VirtualMachine", h.vms[n].moid) for n in off])
        rescan_hosts(s, list(members.values()) or [h])
    say(f"{g.vsphere_dr}: {len(off)} stopped VM(s) unregistered, storage rescanned")


def _f_shutdown(d: Runner, step: rb.Step, rec: RunRecord) -> list[str]:
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
    if step.params.get("pull"):
        return _pull_handoff(d, step.params["handoff"])
    site = d.site.with_group(d.g)  # failback: the reversed view's source is the (local) DR box
    res = Engine(site, d.g.name, Options(take_snapshot=True, prune=False, progress=False, say=d.say,
                                         failed_over=d.reverse)).run()
    dst = d.dr()
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

    res = Engine(d.site.with_group(d.g), d.g.name, Options(pull=True, take_snapshot=False, prune=False,
                                                            progress=False, say=d.say, failed_over=d.reverse)).run()
    obs = d.dr().zfs.observe([d.g.dr_root])
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


def _f_stop(d: Failover | HandOff, step: rb.Step, rec: RunRecord) -> list[str]:
    marker = failover_marker(d.site.state_dir, d.g.name)
    if not marker.exists():
        write_json(marker, {"group": d.g.name, "since": time.time(), "by": d.kind, "mode": d.mode})
    return [f"marker {marker}: esxdr replicate {d.g.name} refuses until failback"]


def unpresent_production(site: Site, group: ProtectionGroup, naas: set[str]) -> list[str]:
    """Production stops serving the group's LUs (NAA hex), through its target's own admin tool."""

    server = site.storage_server(group.source)
    if server.target is None:
        return [f"{server.name} has no target in the site file: nothing to remove"]
    if server.target.stack != "tgt":
        raise UsageError(f"removing production's presentation is implemented for tgt only; {server.name} runs "
                         f"{server.target.stack}",
                         hint="remove the group's LUs from the production target by hand, then run the failover "
                              "again (the guard checks they are gone)")
    t = target_transport(server)
    try:
        out = tgt.remove_naas(t, naas, server.target.control_port)
    finally:
        t.close()
    return out or ["production serves none of the group's NAAs (removed earlier)"]


def _f_unpresent_production(d: Runner, step: rb.Step, rec: RunRecord) -> list[str]:
    return unpresent_production(d.site, d.g, set(step.params["naas"]))


def _f_guard(d: Failover, step: rb.Step, rec: RunRecord) -> list[str]:
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
    dst = d.dr()
    ds = step.params["dataset"]
    snap = step.params.get("snapshot") or d.journal.data.get("snapshot")
    if not snap:
        raise ConflictError(f"{ds}: no recovery point recorded", hint="run the failover again")
    obs = dst.zfs.observe([ds]).get(ds)
    if obs is None or obs.snapshot(snap) is None:
        raise ConflictError(f"{ds}@{snap} does not exist on {dst.name}", hint="choose another --point")
    if dst.zfs.is_mounted(ds):
        retry(lambda: dst.zfs.unmount(ds))
    for name in step.params.get("release") or ():  # --force: replication's own hold on a newer point
        dst.zfs.release_one(hold_tag(d.g.name), f"{ds}@{name}")
    newer = [s.name for s in obs.snapshots if s.createtxg > obs.snapshot(snap).createtxg]  # type: ignore[union-attr]
    retry(lambda: dst.zfs.rollback(f"{ds}@{snap}", destroy_newer=True))
    checkpoint("failover-mid-promote")
    props = {"readonly": "off", "canmount": "on"}
    if step.params.get("mountpoint") and step.params.get("mount", True):
        # the replica inherits mountpoint=none from the DR root: it mounts where its LUN file is served
        props["mountpoint"] = step.params["mountpoint"]
    dst.zfs.set_props(ds, props)
    # setting a mountpoint with canmount=on mounts it already, and a resumed step may find it mounted
    if step.params.get("mount", True) and not dst.zfs.is_mounted(ds):
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


def need_send_only_dr(site: Site, g: ProtectionGroup, what: str) -> None:
    """The way home in pull mode reads DR through its send-only account, from production."""
    dr = site.storage_server(g.destination)
    if not dr.behind_serve:
        why = "local: true here" if dr.local else "not behind esxdr serve (no serve_prefix)"
        raise UsageError(f"{what} reads {g.destination} through its send-only account, but storage.{g.destination} "
                         f"is {why}", hint=f"run it on production, with a site file in which storage.{g.destination} "
                         f"has address, user, key and serve_prefix: {g.dr_root} (esxdr keys authorized-line --home "
                         "prints the line for DR's account)")


def summary(rec: RunRecord) -> str:
    mode = getattr(rec, "mode", "")
    outage = getattr(rec, "outage_at_least_seconds", None)
    return (f"{rec.group}: {mode} {rec.kind} done — RTO {human_duration(rec.rto_seconds)}"
            + (f" (outage since the hand-off ≥ {human_duration(outage)})" if outage is not None else "")
            + f", RPO {human_duration(rec.rpo_seconds)} (snapshot {rec.snapshot}) — report: {rec.report_html}")

"""The failover and failback runbooks (planned or disaster), and the reversed view failback runs."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from esxdr.errors import ConflictError, IdentityConflict, UsageError
from esxdr.model.manifest import Backing, Manifest, Naa, Portal, Target, View, manifest_to_dict
from esxdr.plan import rewrite
from esxdr.plan.runbook.core import (
    HostView,
    Point,
    Runbook,
    ServedLun,
    Step,
    check_hosts,
    choose_point,
    cluster_params,
    into_text,
    safe_name,
    test_root,
)
from esxdr.plan.runbook.shared import (
    DrillLun,
    admitted_initiators,
    lu_dataset,
    lu_relative_file,
    mount_base,
    only_admitted,
    port_group_map,
    power_steps,
    shutdown_step,
    with_callouts,
)
from esxdr.site.model import LunSpec, NetworkMap

if TYPE_CHECKING:
    from esxdr.site.model import ProtectionGroup

# --------------------------------------------------------------------------- failover
# Failover brings the replicas THEMSELVES online on the DR side (no clones): they are
# rolled back to the recovered point (only with evidence), made writable and mounted,
# presented with the production NAAs and IQNs, and the VMs booted with "I moved it".
FAILOVER_MODES = ("planned", "disaster")
FAILOVER_ACL_GROUP = "esxdr-failover"


def reversed_group(g: ProtectionGroup) -> ProtectionGroup:
    """The group seen from the DR side: DR is the source, production the destination.

    Reprotect replicates with it (DR → production) and failback is a planned failover of it.
    The name stays (snapshot names, hold tags and retention prefixes carry on); the VMs'
    networks map back from the failover port groups to the production ones.
    """
    import dataclasses


    vms = tuple(dataclasses.replace(v, networks={nm.failover: NetworkMap(failover=prod, test=nm.test)
                                                 for prod, nm in v.networks.items()}) for v in g.vms)
    luns = {g.dr_dataset(ds): LunSpec(dataset=g.dr_dataset(ds), naa=s.naa, datastore=s.datastore,
                                      vmfs_uuid=s.vmfs_uuid, line=s.line) for ds, s in g.luns.items()}
    return dataclasses.replace(g, source=g.destination, destination=g.source, source_root=g.dr_root,
                               dr_root=g.source_root, datasets=g.dr_datasets, vsphere_production=g.vsphere_dr,
                               vsphere_dr=g.vsphere_production, vms=vms, luns=luns)


def failover_luns(group: ProtectionGroup, manifest: Manifest, dr_obs: dict,
                  dr_mount_base: str | None = None) -> list[DrillLun]:
    """The group's LUs, backed by the DR datasets themselves (where they mount once promoted)."""
    out = []
    specs = {Naa.parse(s.naa).hex: s for s in group.luns.values() if s.naa}
    root = dr_obs.get(group.dr_root)
    for lu in manifest.logical_units:
        ds = lu_dataset(lu, group)
        if ds is None or ds not in group.datasets:
            continue
        dr_ds = group.dr_dataset(ds)
        mp = None
        if lu.backing.kind == "zvol":
            path = f"/dev/zvol/{dr_ds}"
        else:
            mp = dr_obs[dr_ds].mountpoint if dr_ds in dr_obs else None
            if not mp or not mp.startswith("/"):
                rmp = mount_base(dr_mount_base, root)
                if not rmp or not rmp.startswith("/"):
                    raise UsageError(f"{dr_ds} has mountpoint {mp or 'none'}; failover mounts it to serve its LUN "
                                     "file", hint=f"zfs set mountpoint=/{group.dr_root} {group.dr_root}")
                mp = f"{rmp.rstrip('/')}/{dr_ds[len(group.dr_root) + 1:]}"
            path = f"{mp.rstrip('/')}/{lu_relative_file(lu, ds)}"
        spec = specs.get(lu.naa.hex) or group.luns.get(ds)
        out.append(DrillLun(source_dataset=ds, dr_dataset=dr_ds, clone=dr_ds, naa=lu.naa.hex,
                            production_naa=lu.naa.hex, path=path, datastore=spec.datastore if spec else None,
                            vmfs_uuid=spec.vmfs_uuid if spec else None, mountpoint=mp))
    return out


def failover_manifest(manifest: Manifest, luns: list[DrillLun], group_name: str, portal: str,
                      initiator: str | list[str] | None, *, keep_acl: bool = False) -> Manifest:
    """Production's manifest as the DR target serves it after failover: the same IQNs, NAAs,
    serials, vendor and product ids, backed by the DR datasets, on the DR portal, writable,
    only the DR host's initiator admitted (an explicit ACL, never empty). Production's own ACL is
    not carried to DR: DR decides who logs in there. ``keep_acl`` (failback, production presenting
    its own manifest again) keeps production's ACL and adds the hosts the group fails back to."""
    admitted = admitted_initiators(initiator, "failback" if keep_acl else "failover", group_name)
    by_naa = {d.production_naa: d for d in luns}
    m = copy.deepcopy(manifest)
    m.logical_units = [lu for lu in m.logical_units if lu.naa.hex in by_naa]
    for lu in m.logical_units:
        d = by_naa[lu.naa.hex]
        lu.backing = Backing(kind="zvol" if d.path.startswith("/dev/zvol/") else "file", path=d.path,
                             dataset=d.dr_dataset)
        lu.read_only = False
        lu.views = list(lu.views) or [View(lun=1, target=None)]
    used = {v.target for lu in m.logical_units for v in lu.views}
    m.targets = [t for t in m.targets if t.iqn in used or None in used]
    if not m.targets:
        m.targets = [Target(iqn=f"iqn.2024-01.io.esxdr:{safe_name(group_name)}")]
    m = rewrite.set_portals(m, [Portal.parse(portal)])
    group = f"{FAILOVER_ACL_GROUP}-{safe_name(group_name)}"
    if keep_acl:
        m = rewrite.allow_initiators(m, admitted, group=group)
        for t in m.targets:
            if group not in t.acl:
                t.acl.append(group)
        # The hosts' own group first: the present step logs in as the first member it finds, and
        # that must be an initiator name, not one of production's networks.
        m.initiator_groups.sort(key=lambda g: g.name != group)
        return m.validate()
    return only_admitted(m, admitted, group).validate()


def failover_networks(vms, host: HostView | None) -> dict[str, str]:
    """production port group -> failover port group; every failover port group must exist on the host
    (failover does not invent networks: the DR LAN is prepared by `esxdr host apply`)."""
    mapping = port_group_map(vms, "failover")
    for h in host.hosts if host is not None else ():
        missing = sorted({pg for pg in mapping.values() if pg not in h.port_groups})
        if missing:
            raise ConflictError(f"{h.name} has no port group {', '.join(missing)} (failover networks of the VMs)",
                                hint=f"add them to dr_network and run esxdr host apply {h.name}")
    return mapping


@dataclass(frozen=True)
class Promotion:
    """Per DR dataset: the snapshot it is rolled back to and what that discards."""

    dataset: str
    snapshot: str
    discards: tuple[str, ...] = ()
    held: tuple[str, ...] = ()  # of the discards: replication's hold is released first (--force)

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "snapshot": self.snapshot, "discards": list(self.discards),
                "held": list(self.held)}


def promotions(dr_datasets: list[str], dr_obs: dict, point: Point, chosen: bool, force: bool) -> list[Promotion]:
    """Evidence for the rollbacks. ``latest`` is the newest snapshot on every DR dataset: newer
    snapshots exist only on some datasets (a replication cut half-way) and are not a point of the
    whole group, so discarding them is safe. A point the user chose discards complete, newer
    points: only with --force."""
    out, lost = [], []
    for ds in dr_datasets:
        snaps = dr_obs[ds].snapshots
        at = next(s for s in snaps if s.name == point.name)
        newer = tuple(s.name for s in snaps if s.createtxg > at.createtxg)
        held = tuple(n for n in newer if next(s for s in snaps if s.name == n).held)
        if held and not force:
            raise ConflictError(f"{ds}: rolling back to @{point.name} would destroy held snapshot(s) "
                                + ", ".join("@" + n for n in held),
                                hint="replication holds the newest common snapshot: --force releases its hold; "
                                     "other holds (a drill? esxdr test cleanup) must be released first")
        out.append(Promotion(ds, point.name, newer, held))
        lost += [f"{ds}@{n}" for n in newer]
    if chosen and lost and not force:
        raise ConflictError(f"failover to @{point.name} would discard newer replicated snapshots: "
                            + ", ".join(lost[:6]) + (f" (+{len(lost) - 6} more)" if len(lost) > 6 else ""),
                            hint="pass --force to recover this older point anyway, or use --point latest")
    return out


@dataclass
class FailoverInputs:
    group: Any  # esxdr.site.model.ProtectionGroup (or its reversed view for failback)
    manifest: Manifest
    dr_obs: dict
    mode: str = "disaster"  # planned | disaster
    point: str = "latest"
    force: bool = False
    host: HostView | None = None  # the DR ESXi host
    served: list[ServedLun] = field(default_factory=list)  # the DR target, now
    dr_portal: str = ""
    production_portal: str | None = None  # the production target (split-brain guard)
    manifest_origin: str = ""
    kind: str = "failover"  # failover | failback
    dr_mount_base: str | None = None  # as DrillInputs.dr_mount_base
    initiators: tuple[str, ...] = ()  # as DrillInputs.initiators
    # Pull mode: DR reaches production through a send-only account, so a planned failover cannot
    # stop production from DR. Production hands off first (esxdr failover --planned --hand-off);
    # ``handoff`` is the final snapshot it published (None: not handed off).
    pull: bool = False
    handoff: str | None = None


def plan_failover(inp: FailoverInputs) -> Runbook:
    return with_callouts(_plan_failover(inp), inp.group)


def _plan_failover(inp: FailoverInputs) -> Runbook:
    g = inp.group
    if inp.mode not in FAILOVER_MODES:
        raise UsageError(f"failover mode {inp.mode!r}: choose --planned or --disaster")
    planned = inp.mode == "planned"
    if planned and inp.point != "latest":
        raise UsageError("--point is for --disaster: a planned failover recovers the final snapshot it sends")
    if test_root(g) in inp.dr_obs:
        raise ConflictError(f"a drill of {g.name} is set up ({test_root(g)} exists); its clones and holds pin the "
                            "replicas", hint=f"esxdr test cleanup {g.name}")
    rb = Runbook(kind=inp.kind, group=g.name)
    rb.new_naa = False
    proms: list[Promotion] = []
    handed_off = planned and inp.pull
    if planned:
        missing = [d for d in g.dr_datasets if d not in inp.dr_obs]
        if missing:
            raise UsageError(f"DR dataset(s) {', '.join(missing)} do not exist yet",
                             hint="replicate first: esxdr replicate GROUP" + (" --pull" if inp.pull else ""))
        rb.snapshot = None  # named by the final replication
        if handed_off:
            if not inp.handoff and inp.kind == "failback":
                raise ConflictError(f"the DR box has not handed {g.name} back: production reaches {g.source} through "
                                    "its send-only account and cannot stop DR's VMs or remove its LUNs",
                                    hint=f"on the DR box first: esxdr failback {g.name} --planned --hand-off")
            if not inp.handoff:
                raise ConflictError(f"production has not handed {g.name} off: DR reaches {g.source} through its "
                                    "send-only account and cannot stop production's VMs or remove its LUNs",
                                    hint=f"on production first: esxdr failover {g.name} --planned --hand-off; "
                                         f"or, if production is gone: esxdr failover {g.name} --disaster")
            rb.snapshot = inp.handoff  # the final snapshot production took with its VMs stopped
    else:
        p = choose_point(list(g.dr_datasets), inp.dr_obs, inp.point)
        rb.snapshot, rb.snapshot_created, rb.consistency = p.name, p.creation, p.consistency
        proms = promotions(list(g.dr_datasets), inp.dr_obs, p, inp.point != "latest", inp.force)
    luns = failover_luns(g, inp.manifest, inp.dr_obs, inp.dr_mount_base)
    if not luns:
        raise UsageError(f"the target manifest ({inp.manifest_origin or 'manifest'}) presents none of "
                         f"{g.name}'s datasets", hint="pass the production manifest with --manifest FILE")
    host = inp.host
    iqns = {t.iqn for t in inp.manifest.targets}
    clashes = []
    for d in luns:
        for s in inp.served:
            if s.naa == d.naa and s.target not in iqns:
                clashes.append(f"naa.{d.naa} is already served by the DR target as {s.target} LUN {s.lun} ({s.path})")
        for h in host.hosts if host is not None else ():
            for iqn in h.luns.get(d.naa, ()):
                if iqn and iqn not in iqns:
                    clashes.append(f"{h.name} already sees naa.{d.naa} through {iqn}")
    if clashes:
        raise IdentityConflict("failover cannot present the production NAAs:\n  " + "\n  ".join(sorted(set(clashes))),
                               hint=f"a drill still presents them? esxdr test cleanup {g.name}")
    if host is not None:
        check_hosts(host, inp.dr_portal, "")
    else:
        rb.notes.append(f"{g.name} names no vsphere_dr: only the storage part of the failover is planned")
    names = [v.name for v in g.vms]
    naas = sorted(d.naa for d in luns)
    guard = Step("guard", "guard",
                 f"split-brain guard: production target {inp.production_portal or '(none in the site file)'} must not "
                 f"serve {len(naas)} NAA(s)",
                 "two live copies of one LUN identity would let both sites write to 'the same' disk"
                 + ("; --force: a refusal is only reported" if inp.force else ""),
                 {"portal": inp.production_portal, "naas": naas, "force": inp.force,
                  "initiator": host.iqn if host else None})
    if handed_off:
        there, how = (("DR", "esxdr failback --planned --hand-off") if inp.kind == "failback" else
                      ("production", "esxdr failover --planned --hand-off"))
        rb.steps.append(Step("replicate", "replicate",
                             f"pull {there}'s hand-off snapshot @{inp.handoff} ({g.source} → {g.destination})",
                             f"{there} stopped its VMs, took this final snapshot and removed its LUNs ({how} "
                             "there); the point recovered is this snapshot",
                             {"pull": True, "handoff": inp.handoff}))
        rb.steps.append(Step("stop-replication", "stop-replication", f"stop replication of {g.name}",
                             "from now on the DR datasets are written; a scheduled pull must not overwrite them",
                             {}))
        rb.steps.append(guard)
    elif planned:
        rb.steps.append(shutdown_step(g, "production"))
        rb.steps.append(Step("replicate", "replicate", f"final replication of {g.name} ({g.source} → {g.destination})",
                             "the DR datasets get everything production wrote; the point recovered is this snapshot",
                             {}))
        rb.steps.append(Step("stop-replication", "stop-replication", f"stop replication of {g.name}",
                             "from now on the DR datasets are written; a scheduled run must not overwrite them",
                             {}))
        rb.steps.append(Step("unpresent-production", "unpresent-production",
                             f"remove production's presentation of {len(naas)} LUN(s) from {g.source}",
                             "the VMs are down and their last writes are on DR; only one site may serve the NAAs",
                             {"naas": naas}))
        rb.steps.append(guard)
    else:
        rb.steps.append(guard)
        rb.steps.append(Step("stop-replication", "stop-replication", f"stop replication of {g.name}",
                             "from now on the DR datasets are written; a scheduled run must not overwrite them", {}))
    by_dr = {d.dr_dataset: d for d in luns}
    for ds in g.dr_datasets:
        pr = next((x for x in proms if x.dataset == ds), None)
        lun = by_dr.get(ds)
        at = f"@{pr.snapshot}" if pr else f"@{inp.handoff}" if handed_off else "the final snapshot"
        reason = ("the newest snapshot of the group on DR" if not planned and inp.point == "latest" else
                  "production's hand-off snapshot" if handed_off else
                  "the snapshot the final replication sent" if planned else "the point chosen (--point)")
        if pr and pr.discards:
            reason += "; discards partial " + ", ".join("@" + n for n in pr.discards)
        rb.steps.append(Step(f"promote:{ds}", "promote", f"promote {ds} at {at}: writable, mounted",
                             f"rolled back to {reason}, so every LUN shows one consistent point",
                             {"dataset": ds, "snapshot": pr.snapshot if pr else inp.handoff if handed_off else None,
                              "discards": list(pr.discards) if pr else [], "release": list(pr.held) if pr else [],
                              "mount": not (lun and lun.path.startswith("/dev/")), "path": lun.path if lun else None,
                              "mountpoint": lun.mountpoint if lun else None}))
    initiators = list(dict.fromkeys([*(h.iqn for h in host.hosts if h.iqn), *inp.initiators])) if host else \
        list(inp.initiators)
    initiator = ", ".join(initiators) or None
    m = failover_manifest(inp.manifest, luns, g.name, inp.dr_portal or "127.0.0.1:3260", initiators,
                          keep_acl=inp.kind == "failback")

    rb.steps.append(Step("present", "present",
                         f"present {len(luns)} LUN(s) (production NAAs) on {', '.join(t.iqn for t in m.targets)}",
                         "the volumes' LVM headers name these NAAs: the DR host mounts them as-is"
                         + (f"; only {initiator} may log in" if initiator else ""),
                         {"manifest": manifest_to_dict(m), "luns": [d.to_dict() for d in luns],
                          "iqns": [t.iqn for t in m.targets]}))
    if host is None:
        return rb
    mapping = failover_networks(g.vms, host)
    rb.steps.append(Step("rescan", "rescan", f"rescan {host.label}", "the host finds the LUNs and the VMFS volumes"
                         + ("; every host of the cluster, in parallel (a VM may run on any)" if host.members else ""),
                         {"hosts": [h.name for h in host.members]} if host.members else {}))
    expected = [{"naa": d.naa, "datastore": d.datastore, "vmfs_uuid": d.vmfs_uuid, "production_naa": d.naa,
                 "target": m.lu(d.naa).views[0].target if m.lu(d.naa) and m.lu(d.naa).views else None}  # type: ignore[union-attr]
                for d in luns]
    rb.steps.append(Step("verify", "verify", f"verify {len(luns)} VMFS datastore(s) on {host.label} mounted as-is",
                         "no resignature: the VMs' paths and UUIDs stay those of production",
                         {"expected": expected, "resolve": None,
                          **({"hosts": [h.name for h in host.members]} if host.members else {})}))
    datastores = sorted({d.datastore for d in luns if d.datastore})
    rb.steps.append(Step("register", "register",
                         f"register {len(names) or 'all'} VM(s) (answer: I moved it)" + into_text(host),
                         "the production VMs are down: the DR VMs keep their BIOS UUIDs and MAC addresses",
                         {"vms": names, "datastores": datastores, "answer": "moved", "map": mapping,
                          "vmx": {v.name: v.vmx for v in g.vms if getattr(v, "vmx", None)},
                          **cluster_params(host, g)}))
    rb.steps.append(Step("nics", "nics", "attach NICs to failover port groups: " + (", ".join(
        f"{p} → {t}" for p, t in sorted(mapping.items())) or "no NICs mapped"),
        "the VMs serve users from the DR LAN now", {"map": mapping, "vms": names}))
    power_steps(rb, g, answer="moved")
    return rb

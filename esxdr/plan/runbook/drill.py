"""The drill's runbooks: `esxdr test start` and `esxdr test cleanup`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from esxdr.errors import IdentityConflict, UsageError
from esxdr.model.manifest import Manifest, manifest_to_dict
from esxdr.plan.runbook.core import (
    DRILL_VSWITCH,
    HostView,
    Runbook,
    ServedLun,
    Step,
    check_hosts,
    choose_point,
    clone_of,
    cluster_params,
    hold_tag,
    into_text,
    is_test_iqn,
    test_root,
    vmx_datastore,
)
from esxdr.plan.runbook.shared import (
    drill_luns,
    drill_manifest,
    mount_base,
    power_steps,
    test_networks,
    with_callouts,
)


# --------------------------------------------------------------------------- test start
@dataclass
class DrillInputs:
    group: Any  # esxdr.site.model.ProtectionGroup
    manifest: Manifest  # production identities of the group's LUs
    dr_obs: dict  # DR datasets under dr_root (esxdr.model.Dataset)
    point: str = "latest"
    new_naa: bool = False
    host: HostView | None = None
    served: list[ServedLun] = field(default_factory=list)  # what the DR target serves now
    dr_portal: str = ""
    dr_network: Any = None  # esxdr.site.model.HostNetwork of the DR host; a cluster: host name -> HostNetwork
    manifest_origin: str = ""
    # Where the DR root mounts by ZFS's inheritance: the root itself has mountpoint=none so that no
    # receive mounts a replica, and the drill's clones are mounted under this path explicitly.
    dr_mount_base: str | None = None
    # Initiators admitted besides the DR hosts' own (esxdr target present-clone --allow-initiator).
    initiators: tuple[str, ...] = ()


def plan_test_start(inp: DrillInputs) -> Runbook:
    return with_callouts(_plan_test_start(inp), inp.group)


def _plan_test_start(inp: DrillInputs) -> Runbook:
    g = inp.group
    point = choose_point(list(g.dr_datasets), inp.dr_obs, inp.point)
    rb = Runbook(kind="test-start", group=g.name, snapshot=point.name, snapshot_created=point.creation,
                 consistency=point.consistency,
                 new_naa=inp.new_naa)
    root = inp.dr_obs.get(g.dr_root)
    luns = drill_luns(g, inp.manifest, mount_base(inp.dr_mount_base, root), point.name, inp.new_naa)
    covered = {d.dr_dataset for d in luns}
    for ds in g.dr_datasets:
        if ds not in covered:
            rb.notes.append(f"{ds}: no LU of the target manifest ({inp.manifest_origin or 'manifest'}) is backed by it; "
                            "it is cloned but not presented")
    if not luns:
        raise UsageError(f"the target manifest ({inp.manifest_origin or 'manifest'}) presents none of "
                         f"{g.name}'s datasets", hint="pass the production manifest with --manifest FILE")
    host = inp.host
    # Identity guard: a second LUN with a drill NAA would be taken for another path to it.
    if not inp.new_naa:
        clashes = []
        for d in luns:
            for s in inp.served:
                if s.naa == d.naa and not is_test_iqn(s.target, g.name):
                    clashes.append(f"naa.{d.naa} is already served by the DR target as {s.target} LUN {s.lun} "
                                   f"({s.path})")
            for h in host.hosts if host is not None else ():
                for iqn in h.luns.get(d.naa, ()):
                    if iqn and not is_test_iqn(iqn, g.name):
                        clashes.append(f"{h.name} already sees naa.{d.naa} through {iqn}")
        if clashes:
            raise IdentityConflict("the drill cannot present its clones with the production NAAs:\n  "
                                   + "\n  ".join(sorted(set(clashes))),
                                   hint="run the drill with --new-naa (the clones get new NAAs and the volumes "
                                        "are resignatured), or remove the other presentation first")
    if host is not None:
        check_hosts(host, inp.dr_portal, "; it would not find the drill's LUNs")
    else:
        rb.notes.append(f"{g.name} names no vsphere_dr: only the storage part of the drill is planned")

    snaps = [f"{d}@{point.name}" for d in g.dr_datasets]
    rb.steps.append(Step("hold", "hold", f"hold {g.dr_root}/*@{point.name} ({len(snaps)} snapshots)",
                         "retention on DR must keep the snapshots the clones depend on while replication goes on",
                         {"tag": hold_tag(g.name), "snapshots": snaps}))
    tr = test_root(g)
    exists = tr in inp.dr_obs
    rb.steps.append(Step("container", "container", f"create {tr}",
                         "clones live in their own container, apart from the replicas replication writes into"
                         + (" (it exists: kept)" if exists else ""), {"dataset": tr}))
    by_dr = {d.dr_dataset: d for d in luns}
    for ds in g.dr_datasets:
        clone = clone_of(g, ds)
        lun = by_dr.get(ds)
        rb.steps.append(Step(f"clone:{ds}", "clone", f"clone {ds}@{point.name} → {clone}",
                             "a writable copy for the drill; the replica itself stays untouched"
                             + (" (it exists: kept)" if clone in inp.dr_obs else ""),
                             {"snapshot": f"{ds}@{point.name}", "clone": clone,
                              "mount": not (lun and lun.path.startswith("/dev/")), "path": lun.path if lun else None,
                              "mountpoint": lun.mountpoint if lun else None}))
    same = "new NAA" if inp.new_naa else "same NAA"
    initiators = list(dict.fromkeys([*(h.iqn for h in host.hosts if h.iqn), *inp.initiators])) if host else \
        list(inp.initiators)
    initiator = ", ".join(initiators) or None
    m = drill_manifest(inp.manifest, luns, g.name, inp.dr_portal or "127.0.0.1:3260", initiators)

    rb.steps.append(Step("present", "present",
                         f"present {len(luns)} LUN(s) ({same}) on {', '.join(t.iqn for t in m.targets)}",
                         ("the DR host sees no other LUN with these NAAs, so the volumes mount as-is"
                          if not inp.new_naa else
                          "--new-naa: the clones get NAAs of their own; their volumes will be resignatured")
                         + (f"; only {initiator} may log in" if initiator else ""),
                         {"manifest": manifest_to_dict(m), "luns": [d.to_dict() for d in luns],
                          "iqns": [t.iqn for t in m.targets]}))
    if host is None:
        return rb
    mapping, create, notes = test_networks(g.vms, host, inp.dr_network)
    rb.notes += notes
    if create:
        rb.steps.append(Step("network", "network", "create test port group(s) " + ", ".join(
            f"{c['name']} on {c['vswitch']}" + (f" VLAN {c['vlan']}" if c["vlan"] else "") for c in create),
            "the VMs' test networks must exist before their NICs are attached"
            + ("; a vSwitch without uplinks isolates the drill by construction" if any(
                c["vswitch"] == DRILL_VSWITCH for c in create) else ""), {"create": create}))
    rb.steps.append(Step("rescan", "rescan", f"rescan {host.label}",
                         "the host finds the new LUNs and the VMFS volumes on them"
                         + ("; every host of the cluster, in parallel (a VM may run on any)" if host.members else ""),
                         {"hosts": [h.name for h in host.members]} if host.members else {}))
    expected = [{"naa": d.naa, "datastore": d.datastore, "vmfs_uuid": d.vmfs_uuid, "production_naa": d.production_naa,
                 "target": m.lu(d.naa).views[0].target if m.lu(d.naa) and m.lu(d.naa).views else None}  # type: ignore[union-attr]
                for d in luns]
    rb.steps.append(Step("verify", "verify",
                         f"verify {len(luns)} VMFS datastore(s) on {host.label} "
                         + ("mounted as-is (UUID unchanged)" if not inp.new_naa else "resignatured and renamed back"),
                         "evidence that the NAA served is the NAA of each datastore's extent"
                         + ("" if not inp.new_naa else " (new UUIDs: the volumes are copies now)"),
                         {"expected": expected, "resolve": "resignature" if inp.new_naa else None,
                          **({"hosts": [h.name for h in host.members]} if host.members else {})}))
    names = [v.name for v in g.vms]
    datastores = sorted({d.datastore for d in luns if d.datastore})
    rb.steps.append(Step("register", "register",
                         f"register {len(names) or 'all'} VM(s) from the drill datastores (answer: I copied it)"
                         + into_text(host),
                         "a drill VM runs beside its production original, so it gets a new BIOS UUID",
                         {"vms": names, "datastores": datastores, "answer": "copied", "map": mapping,
                          "vmx": {v.name: v.vmx for v in g.vms if getattr(v, "vmx", None)},
                          **cluster_params(host, g)}))
    changed = {p: t for p, t in mapping.items() if p != t}
    rb.steps.append(Step("nics", "nics", "attach NICs to test port groups: " + (", ".join(
        f"{p} → {t}" for p, t in sorted(mapping.items())) or "no NICs mapped"),
        "drill VMs must only reach the isolated test networks" + ("" if changed else
                                                                   " (names unchanged: only checked)"),
        {"map": mapping, "vms": names}))
    power_steps(rb, g, answer="copied")
    return rb


# --------------------------------------------------------------------------- test cleanup
@dataclass
class CleanupInputs:
    group: Any
    dr_obs: dict
    served: list[ServedLun] = field(default_factory=list)
    host: HostView | None = None
    journal: dict | None = None  # the drill's journal, when it survived


def plan_test_cleanup(inp: CleanupInputs) -> Runbook:
    return with_callouts(_plan_test_cleanup(inp), inp.group)


def _plan_test_cleanup(inp: CleanupInputs) -> Runbook:
    """Everything a drill may have left, found from the journal AND by observation (a journal
    lost or written half-way must not leave a clone, target or VM behind)."""
    g = inp.group
    rb = Runbook(kind="test-cleanup", group=g.name)
    j = inp.journal or {}
    tr = test_root(g)
    drill_targets = sorted({(s.target, s.tid) for s in inp.served if is_test_iqn(s.target, g.name)},
                           key=lambda x: x[0])
    naas = {s.naa for s in inp.served if is_test_iqn(s.target, g.name)}
    naas |= {d["naa"] for d in j.get("luns", [])}
    host = inp.host
    if host is not None:
        for h in host.hosts:
            naas |= {n for n, iqns in h.luns.items() if any(is_test_iqn(i, g.name) for i in iqns)}
        ds_names = {name for name, (_u, extents) in host.datastores.items() if any(e in naas for e in extents)}
        vms = {name: v for name, v in host.vms.items() if vmx_datastore(v[0]) in ds_names}
        on = sorted(n for n, v in vms.items() if v[1] != "poweredOff" or v[2])
        if on:
            rb.steps.append(Step("poweroff", "poweroff", f"power off {', '.join(on)}",
                                 "drill VMs run from the clones about to go away", {"vms": on}))
        if vms:
            rb.steps.append(Step("unregister", "unregister", f"unregister {', '.join(sorted(vms))}",
                                 "drill VMs must not stay in the DR host's inventory", {"vms": sorted(vms)}))
    if drill_targets:
        rb.steps.append(Step("unpresent", "unpresent", "remove target(s) " + ", ".join(t for t, _ in drill_targets),
                             "the DR target must stop serving the clones before they can be destroyed",
                             {"targets": [{"iqn": t, "tid": tid} for t, tid in drill_targets]}))
    if host is not None and (drill_targets or any(n in h.luns for h in host.hosts for n in naas)):
        rb.steps.append(Step("rescan", "rescan", f"rescan {host.label}; the drill datastores disappear",
                             "the host forgets the LUNs that are gone",
                             {"naas": sorted(naas), **({"hosts": [h.name for h in host.members]} if host.members
                                                       else {})}))
    if host is not None and not host.members:
        pgs = [p for p in j.get("created", {}).get("port_groups", []) if p in host.port_groups]
        vss = [v for v in j.get("created", {}).get("vswitches", []) if v in host.vswitches]
        if pgs or vss:
            rb.steps.append(Step("network", "network", "remove " + ", ".join(
                [f"port group {p}" for p in pgs] + [f"vSwitch {v}" for v in vss]),
                "the drill created them; they were not there before", {"port_groups": pgs, "vswitches": vss}))
    elif host is not None:
        # A cluster: what the drill made on each host is journaled per host (port_groups@HOST).
        per: dict[str, dict[str, list[str]]] = {}
        made = j.get("created", {})
        for h in host.members:
            pgs = [p for p in made.get(f"port_groups@{h.name}", []) if p in h.port_groups]
            vss = [v for v in made.get(f"vswitches@{h.name}", []) if v in h.vswitches]
            if pgs or vss:
                per[h.name] = {"port_groups": pgs, "vswitches": vss}
        if per:
            rb.steps.append(Step("network", "network", "remove " + "; ".join(
                f"{h}: " + ", ".join([f"port group {p}" for p in x["port_groups"]]
                                     + [f"vSwitch {v}" for v in x["vswitches"]]) for h, x in per.items()),
                "the drill created them; they were not there before",
                {"port_groups": [], "vswitches": [], "hosts": per}))
    clones = sorted(n for n in inp.dr_obs if n.startswith(tr + "/"))
    for c in clones:
        rb.steps.append(Step(f"destroy:{c}", "destroy", f"unmount and destroy {c}",
                             "the drill's writable copy; the replica it came from is untouched",
                             {"dataset": c, "origin": inp.dr_obs[c].origin}))
    if tr in inp.dr_obs:
        rb.steps.append(Step("container", "uncontainer", f"destroy {tr}", "the clones' container is empty now",
                             {"dataset": tr}))
    # Which tag holds a snapshot is not observable through the DR account (no `zfs holds`),
    # so without a journal the drill's tag is released from every held snapshot, and only
    # when the drill left something else behind: replication's own holds are always there.
    held = sorted(f"{ds}@{s.name}" for ds in g.dr_datasets if ds in inp.dr_obs
                  for s in inp.dr_obs[ds].snapshots if s.held)
    wanted = set(j.get("held", [])) | (set(held) if (rb.steps or j) else set())
    if wanted:
        rb.steps.append(Step("release", "release", f"release hold {hold_tag(g.name)} on {len(wanted)} snapshot(s)",
                             "retention may prune them again (holds of other tags are left alone)",
                             {"tag": hold_tag(g.name), "snapshots": sorted(wanted), "quiet": sorted(wanted - set(
                                 j.get("held", [])))}))
    return rb

"""The steps that bring a recovery point up on the DR host: hold, clone, present, network, rescan,
verify, register, NICs, power. Drills walk them; failover and failback walk them after their own."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from esxdr import vmfs
from esxdr.errors import (
    ConflictError,
    UsageError,
)
from esxdr.faults import checkpoint
from esxdr.model.manifest import manifest_from_dict
from esxdr.plan import runbook as rb
from esxdr.plan.storage import ExpectedLun
from esxdr.recovery.record import RunRecord
from esxdr.recovery.runner import Runner
from esxdr.targets import probe, tgt

if TYPE_CHECKING:
    pass


def _s_hold(d: Runner, step: rb.Step, rec: RunRecord) -> list[str]:
    dst = d.dr()
    obs = dst.zfs.observe([d.g.dr_root])
    d.journal.data["held"] = list(step.params["snapshots"])
    d.journal.save()
    done = []
    for snap in step.params["snapshots"]:
        ds, _, name = snap.partition("@")
        if dst.zfs.hold_one(step.params["tag"], snap):
            done.append(snap)
        elif ds in obs and not any(s.name == name for s in obs[ds].snapshots):
            raise UsageError(f"snapshot {snap} vanished (pruned?) before the drill could hold it",
                             hint="run the drill again with --point latest")
    return [f"{len(done)} snapshot(s) held with tag {step.params['tag']}"]


def _s_container(d: Runner, step: rb.Step, rec: RunRecord) -> list[str]:
    dst = d.dr()
    ds = step.params["dataset"]
    if ds not in dst.zfs.observe([ds]):
        dst.zfs.create(ds)
    return []

def _s_clone(d: Runner, step: rb.Step, rec: RunRecord) -> list[str]:
    dst = d.dr()
    clone = step.params["clone"]
    if clone not in dst.zfs.observe([clone]):
        props = {"readonly": "off", "canmount": "on", "esxdr:drill": d.g.name}
        if step.params.get("mountpoint"):
            # explicit: the clone's parent inherits mountpoint=none from the DR root
            props["mountpoint"] = step.params["mountpoint"]
        dst.zfs.clone(step.params["snapshot"], clone, props)
    if step.params.get("mount") and not dst.zfs.is_mounted(clone):
        dst.zfs.mount(clone)
    return [f"{clone} from {step.params['snapshot']}" + (f", LUN file {step.params['path']}"
                                                          if step.params.get("path") else "")]


def _s_present(d: Runner, step: rb.Step, rec: RunRecord) -> list[str]:
    m = manifest_from_dict(step.params["manifest"], origin="drill manifest")
    t = d.target()
    tgt.apply(t, m, control_port=d.server.target.control_port)  # type: ignore[union-attr]
    # Evidence from the wire, as the DR host will see it: log in as its initiator and read VPD 0x83.

    initiator = next((g.members[0] for g in m.initiator_groups if g.members), probe.DEFAULT_INITIATOR)
    portal = d.server.target
    assert portal is not None  # d.target() refused a server without one
    seen: dict[str, str] = {}
    headers: list = []  # (naa, VMFS header) of each LU presented
    for target in m.targets:
        with probe.Session(portal.portal_address, portal.portal_port, target=target.iqn, initiator=initiator) as s:
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


def _s_network(d: Runner, step: rb.Step, rec: RunRecord) -> list[str]:
    from esxdr.vsphere import recovery as vr

    s = d.vsphere()
    h = d.host(with_vms=False)
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


def _s_rescan(d: Runner, step: rb.Step, rec: RunRecord) -> list[str]:
    from esxdr.vsphere.storage import rescan

    # The plan's read of the host (this run) names its storage system: no need to read it again.
    h = d.host_state if d.host_state is not None else d.host(with_vms=False)
    if d.members:
        from esxdr.vsphere.recovery import rescan_hosts

        rescan_hosts(d.vsphere(), list(d.members.values()))
        return [f"{', '.join(d.members)} rescanned in parallel"]
    rescan(d.vsphere(), h)
    return []


def _s_verify(d: Runner, step: rb.Step, rec: RunRecord) -> list[str]:
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
        multi, _rescans, _done = verify_hosts(d.vsphere(), names, exp, timeout=VERIFY_TIMEOUT_S,
                                              resolve=step.params.get("resolve"))
        for r in multi.reports:
            raise_for(VerifyResult(report=r))
        res = VerifyResult(report=multi.reports[0])
    else:
        res = verify_storage(d.vsphere(), d.g.vsphere_dr, exp, timeout=VERIFY_TIMEOUT_S,
                             resolve=step.params.get("resolve"))
        raise_for(res)
    by_naa = {e["naa"]: e for e in step.params["expected"]}
    h = d.verified = d.host()  # with the VMs: register goes on from this read
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


def _s_register(d: Runner, step: rb.Step, rec: RunRecord) -> list[str]:
    from esxdr.vsphere import recovery as vr
    from esxdr.vsphere import vms as vv

    s = d.vsphere()
    # The host as verify just read it (same run): datastores mounted, VMs listed. Else read it.
    h = d.verified if d.verified is not None else d.host()
    d.verified = None
    stores = step.params["datastores"] or [r["name"] for r in d.journal.data.get("datastores", []) if r.get("name")]
    cluster = bool(d.members)
    where = vv.placement_info(s, h, stores, cluster=cluster)
    wanted = list(step.params["vms"])
    # Where production keeps each .vmx (vms.*.vmx, written by esxdr plan discover): no search needed.
    # The datastore names are production's, as the volumes are mounted as-is.
    known = {n: p for n, p in (step.params.get("vmx") or {}).items() if rb.vmx_datastore(p) in h.datastores}
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
        held = {ds: sorted(n for n, p in found.items() if rb.vmx_datastore(p) == ds) for ds in stores}
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
            spread = rb.spread_vms([(n, int(prio.get(n, 0)), rb.vmx_datastore(found[n])) for n in todo],
                                   {n: ({ds for ds in m.datastores}, len(m.vms)) for n, m in d.members.items()})
            on_hosts = [s.ref("HostSystem", d.members[spread[n]].moid) for n in todo]
            for n in todo:
                d.journal.data.setdefault("vms", {}).setdefault(n, {"vmx": found[n]})["host"] = spread[n]
            said.append("DRS is off: esxdr spreads the VMs (least loaded per priority group among the hosts "
                        "mounting the datastore): " + ", ".join(f"{n} → {spread[n]}" for n in todo))
    refs = vv.register_vms(s, h, [found[n] for n in todo], where=where, hosts=on_hosts,
                           after_issue=lambda: checkpoint(f"{d.fault_prefix}-mid-register"))
    for n, ref in zip(todo, refs, strict=True):
        d.vm_cache[n] = (ref._moId, "poweredOff", None)
    for n in wanted:
        d.journal.data.setdefault("vms", {}).setdefault(n, {"vmx": found[n]})
    d.journal.save()
    return [f"{len(wanted)} VM(s) registered ({len(wanted) - len(todo)} already were); power-on answers: "
            f"{ANSWER_TEXT.get(answer, 'I copied it')}"] + said


def _vm_refs(d: Runner, names: list[str]) -> list[Any]:
    s = d.vsphere()
    if all(n in d.vm_cache for n in names):  # read by an earlier step of this run
        return [s.ref("VirtualMachine", d.vm_cache[n][0]) for n in names]
    h = d.host()
    missing = [n for n in names if n not in h.vms]
    if missing:
        raise ConflictError(f"VM(s) {', '.join(missing)} are not registered on {h.name}",
                            hint=f"run esxdr test cleanup {d.g.name}, then start again")
    for n in names:
        v = h.vms[n]
        d.vm_cache[n] = (v.moid, v.power_state, v.question_id)
    return [s.ref("VirtualMachine", h.vms[n].moid) for n in names]


def _s_nics(d: Runner, step: rb.Step, rec: RunRecord) -> list[str]:
    from esxdr.vsphere import recovery as vr

    s = d.vsphere()
    names = step.params["vms"] or sorted(d.journal.data.get("vms", {}))
    refs = _vm_refs(d, names)
    read = vr.read_vms(s, refs)  # devices, power state, question: one read serves the moves and the evidence
    moves = vr.nic_moves(s, refs, step.params["map"], read)
    if moves:
        vr.move_nics(s, moves)
        read = vr.read_vms(s, refs)  # evidence is what the host says now, not what was asked
    for moid, props in read.items():
        q = props.get("runtime.question")
        d.vm_cache[str(props.get("name"))] = (moid, str(props.get("runtime.powerState")),
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


def _s_power(d: Runner, step: rb.Step, rec: RunRecord) -> list[str]:
    from esxdr.vsphere import vms as vv

    s = d.vsphere()
    names = step.params["vms"]
    refs = _vm_refs(d, names)
    states = {d.vm_cache[n][0]: d.vm_cache[n][1:] for n in names}
    answer = step.params.get("answer", "copied")
    answered = vv.boot(s, refs, states, uuid_answer=answer, timeout=step.params["timeout"],
                       after_issue=lambda: checkpoint(f"{d.fault_prefix}-mid-power"))
    now = time.time()
    for n, r in zip(names, refs, strict=True):
        d.vm_cache[n] = (r._moId, "poweredOn", None)
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

"""The steps of `esxdr test cleanup`: each idempotent, re-planned from what is observed."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from esxdr.errors import (
    ConflictError,
    EsxdrError,
    UsageError,
)
from esxdr.plan import runbook as rb
from esxdr.recovery.record import RunRecord
from esxdr.recovery.runner import Runner
from esxdr.targets import tgt

if TYPE_CHECKING:
    pass


def _c_poweroff(d: Runner, step: rb.Step, rec: RunRecord) -> list[str]:
    from esxdr.vsphere import recovery as vr
    from esxdr.vsphere import vms as vv

    s = d.vsphere()
    h = d.host()
    todo = []
    for n in step.params["vms"]:
        v = h.vms.get(n)
        if v is None:
            continue
        ref = s.ref("VirtualMachine", v.moid)
        if v.question_id:
            vr.cancel_question(s, ref, v.question_id)
        todo.append(ref)
    h = d.host()
    vv.power_off(s, [r for r in todo if h.vms.get(_name_of(h, r), None) and
                     h.vms[_name_of(h, r)].power_state == "poweredOn"])
    return [f"{len(todo)} VM(s) off"]


def _name_of(h, ref) -> str:
    return next((n for n, v in h.vms.items() if v.moid == ref._moId), "")


def _c_unregister(d: Runner, step: rb.Step, rec: RunRecord) -> list[str]:
    from esxdr.vsphere import vms as vv

    s = d.vsphere()
    h = d.host()
    refs = [s.ref("VirtualMachine", h.vms[n].moid) for n in step.params["vms"] if n in h.vms]
    vv.unregister(s, refs)
    return [f"{len(refs)} VM(s) unregistered"]


def _c_unpresent(d: Runner, step: rb.Step, rec: RunRecord) -> list[str]:
    t = d.target()
    _, targets = d.served()
    live = {x.iqn: x.tid for x in targets}
    for item in step.params["targets"]:
        tid = live.get(item["iqn"])
        if tid is None:
            continue  # gone already (a previous cleanup got this far)
        tgt.delete_target(t, tid, d.server.target.control_port)  # type: ignore[union-attr]
    return [f"{item['iqn']} removed" for item in step.params["targets"]]


def _c_rescan(d: Runner, step: rb.Step, rec: RunRecord) -> list[str]:
    from esxdr.vsphere.storage import rescan

    s = d.vsphere()
    h = d.host(with_vms=False)
    if d.members:
        from esxdr.vsphere.recovery import rescan_hosts

        rescan_hosts(s, list(d.members.values()))
    else:
        rescan(s, h)
    h = d.host(with_vms=False)
    for m in (d.members or {h.name: h}).values():
        left = [n for n in step.params["naas"] if f"naa.{n}" in m.luns]
        if left:
            raise ConflictError(f"{m.name} still sees {', '.join('naa.' + n for n in left)} after the rescan",
                                hint="run esxdr test cleanup again in a moment")
    return [f"{len(step.params['naas'])} drill LUN(s) gone from {', '.join(d.members) if d.members else h.name}"]


def _c_network(d: Runner, step: rb.Step, rec: RunRecord) -> list[str]:
    from esxdr.vsphere import recovery as vr

    s = d.vsphere()
    h = d.host(with_vms=False)
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
            if dst.zfs.is_mounted(ds):
                dst.zfs.unmount(ds, force=attempt > 2)
            dst.zfs.destroy_clone(ds)
        except EsxdrError:
            # zfs-fuse reports "dataset is busy" for a moment after tgtd let go of the file.
            if attempt == 9:
                raise
            time.sleep(0.5)


def _c_destroy(d: Runner, step: rb.Step, rec: RunRecord) -> list[str]:
    ds = step.params["dataset"]
    root = rb.test_root(d.g)
    if not ds.startswith(root + "/"):  # belt and braces: serve refuses too
        raise UsageError(f"refusing to destroy {ds}: not under {root}")
    _destroy(d.dr(), ds)
    return [f"{ds} destroyed"]


def _c_uncontainer(d: Runner, step: rb.Step, rec: RunRecord) -> list[str]:
    ds = step.params["dataset"]
    if ds != rb.test_root(d.g):
        raise UsageError(f"refusing to destroy {ds}: not the drill container")
    _destroy(d.dr(), ds)
    return [f"{ds} destroyed"]


def _c_release(d: Runner, step: rb.Step, rec: RunRecord) -> list[str]:
    dst = d.dr()
    n = 0
    for snap in step.params["snapshots"]:
        n += dst.zfs.release_one(step.params["tag"], snap)  # other tags' holds are untouched
    return [f"{n} hold(s) released"]


CLEANUP_STEPS: dict[str, Callable] = {
    "poweroff": _c_poweroff, "unregister": _c_unregister, "unpresent": _c_unpresent, "rescan": _c_rescan,
    "network": _c_network, "destroy": _c_destroy, "uncontainer": _c_uncontainer, "release": _c_release,
}

"""The failover benchmark's baseline and its checks.

- :func:`naive_loop`: what a typical pyVmomi script does after the storage is up: one VM at a
  time, register it into the cluster (DRS places it), power it on (answering "I moved it" if
  asked), wait for its guest heartbeat, then the next VM. Navigation uses pyVmomi's lazy
  attributes, as such scripts do. It is naive only in doing one VM at a time: each wait is a
  property-collector wait (CreateFilter, WaitForUpdatesEx, DestroyPropertyFilter), as
  pyVim.task.WaitForTask does, never a polling loop, so neither its time nor its request count
  is inflated by sleeping or re-reading. Its requests are counted by esxdr's own CountingStub.
- :func:`read_back`: every VM the vCenter knows, read on an uncounted session of its own, and
  :func:`problems`: what is wrong with them against what a failover must leave.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from pyVmomi import vim, vmodl

PC = vmodl.query.PropertyCollector
LONG_POLL_S = 20
MOVED = "button.uuid.movedTheVM"


@dataclass
class NaiveResult:
    vms: list[str] = field(default_factory=list)
    seconds: float = 0.0
    per_vm: dict[str, dict[str, float]] = field(default_factory=dict)  # name -> register/power/heartbeat s
    requests: int = 0
    by_method: dict[str, int] = field(default_factory=dict)
    answered: int = 0
    error: str | None = None
    problems: list[str] = field(default_factory=list)


def _wait(pc: Any, specs: list[tuple[Any, list[str]]], until: Any, timeout: float, what: str,
          on_change: Any = None) -> dict[str, dict[str, Any]]:
    """One filter over (object, paths); WaitForUpdatesEx until ``until(state)``."""
    flt = pc.CreateFilter(PC.FilterSpec(
        objectSet=[PC.ObjectSpec(obj=o, skip=False) for o, _ in specs],
        propSet=[PC.PropertySpec(type=type(o), pathSet=p) for o, p in specs]), partialUpdates=False)
    state: dict[str, dict[str, Any]] = {o._moId: {} for o, _ in specs}
    deadline = time.monotonic() + timeout
    version = ""
    try:
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
            upd = pc.WaitForUpdatesEx(version, PC.WaitOptions(maxWaitSeconds=LONG_POLL_S))
            if upd is None:
                continue
            version = upd.version
            for fs in upd.filterSet or ():
                for oc in fs.objectSet or ():
                    for ch in oc.changeSet or ():
                        state.setdefault(oc.obj._moId, {})[ch.name] = ch.val
            if on_change is not None:
                on_change(state)
            if until(state):
                return state
    finally:
        flt.DestroyPropertyFilter()


def _task_result(pc: Any, task: Any, what: str, timeout: float, also: Any = None) -> Any:
    def done(state: dict) -> bool:
        return str(state[task._moId].get("info.state")) in ("success", "error")

    specs = [(task, ["info.state", "info.error", "info.result"])] + ([(also[0], also[1])] if also else [])
    state = _wait(pc, specs, done, timeout, what, on_change=also[2] if also else None)
    info = state[task._moId]
    if str(info.get("info.state")) == "error":
        err = info.get("info.error")
        raise RuntimeError(f"{what}: {getattr(err, 'localizedMessage', None) or getattr(err, 'msg', None) or err}")
    return info.get("info.result")


def naive_loop(endpoint: Any, password: str, vmx: list[tuple[str, str]], *, timeout: float = 600) -> NaiveResult:
    """Register, power on and wait for the heartbeat of each (name, .vmx path), one VM at a time."""
    from esxdr.vsphere.session import make_stub

    res = NaiveResult(vms=[n for n, _ in vmx])
    stub = make_stub(endpoint)
    t0 = time.monotonic()
    content = None
    try:
        si = vim.ServiceInstance("ServiceInstance", stub)
        content = si.RetrieveContent()
        content.sessionManager.Login(endpoint.user, password, None)
        pc = content.propertyCollector
        dc = content.rootFolder.childEntity[0]
        folder = dc.vmFolder
        pool = dc.hostFolder.childEntity[0].resourcePool  # the cluster's: DRS places each VM
        for name, path in vmx:
            times: dict[str, float] = {}
            t = time.monotonic()
            vm = _task_result(pc, folder.RegisterVM_Task(path=path, asTemplate=False, pool=pool),
                              f"registering {name}", timeout)
            times["register"] = time.monotonic() - t
            t = time.monotonic()
            answered: set[str] = set()

            def answer(state: dict, vm: Any = vm, answered: set[str] = answered, name: str = name) -> None:
                q = state.get(vm._moId, {}).get("runtime.question")
                if q is None or q.id in answered:
                    return
                key = next((c.key for c in q.choice.choiceInfo if c.label == MOVED), None)
                if key is None:
                    raise RuntimeError(f"{name} asks a question the loop does not answer: {q.text}")
                vm.AnswerVM(q.id, key)
                answered.add(q.id)
                res.answered += 1

            _task_result(pc, vm.PowerOnVM_Task(), f"powering on {name}", timeout,
                         also=(vm, ["runtime.question"], answer))
            times["power"] = time.monotonic() - t
            t = time.monotonic()
            _wait(pc, [(vm, ["guestHeartbeatStatus"])],
                  lambda s, m=vm._moId: str(s[m].get("guestHeartbeatStatus")) == "green", timeout,
                  f"the guest heartbeat of {name}")
            times["heartbeat"] = time.monotonic() - t
            res.per_vm[name] = times
    except Exception as e:  # noqa: BLE001 - a failing baseline is a result, reported as "failed: ..."
        res.error = f"{type(e).__name__}: {getattr(e, 'msg', None) or e}"
    finally:
        if content is not None:
            try:
                content.sessionManager.Logout()
            except Exception:  # noqa: BLE001 - the session dies with esxsim anyway
                pass
        res.seconds = time.monotonic() - t0
        res.requests, res.by_method = stub.requests, dict(stub.by_method)
    return res


# --------------------------------------------------------------------------- read back, check
VM_PATHS = ["name", "config.files.vmPathName", "config.uuid", "runtime.powerState", "guestHeartbeatStatus",
            "runtime.host", "config.hardware.device"]


def read_back(site_path: str, endpoint_name: str) -> list[dict[str, Any]]:
    """Every VM the endpoint knows (duplicates included), on a session of its own (not counted)."""
    from esxdr.site import load_site
    from esxdr.vsphere.inventory import retrieve
    from esxdr.vsphere.session import connect

    with connect(load_site(site_path).endpoint(endpoint_name)) as s:
        def every(kind: str, paths: list[str]) -> list[dict[str, Any]]:
            to = PC.TraversalSpec(name="view", type=vim.view.ContainerView, path="view", skip=False)
            spec = PC.FilterSpec(objectSet=[PC.ObjectSpec(obj=s.container_view(kind), skip=True, selectSet=[to])],
                                 propSet=[PC.PropertySpec(type=getattr(vim, kind), pathSet=paths)])
            return [{"moid": oc.obj._moId, **{p.name: p.val for p in oc.propSet}} for oc in retrieve(s, spec)]

        hosts = {h["moid"]: str(h["name"]) for h in every("HostSystem", ["name"])}
        out = []
        for v in every("VirtualMachine", VM_PATHS):
            host = v.get("runtime.host")
            out.append({"name": str(v.get("name")), "vmx": str(v.get("config.files.vmPathName")),
                        "uuid": str(v.get("config.uuid")), "power": str(v.get("runtime.powerState")),
                        "heartbeat": str(v.get("guestHeartbeatStatus")),
                        "host": hosts.get(host._moId, host._moId) if host is not None else None,
                        "networks": sorted(str(d.backing.deviceName) for d in v.get("config.hardware.device") or ()
                                           if isinstance(d, vim.vm.device.VirtualEthernetCard)
                                           and getattr(d.backing, "deviceName", None))})
        return out


def problems(seen: list[dict[str, Any]], want: list[str], *, uuids: dict[str, str], hosts: list[str],
             network: str) -> list[str]:
    """What is wrong with the VMs ``want`` as read back: each registered once, powered on, its guest
    heartbeat green, on a host of the cluster, with its production BIOS UUID ("I moved it") and
    its NICs on the failover port group only."""
    out = []
    by_name: dict[str, list[dict[str, Any]]] = {}
    for v in seen:
        by_name.setdefault(v["name"], []).append(v)
    for n in want:
        regs = by_name.get(n, [])
        if len(regs) != 1:
            out.append(f"{n}: registered {len(regs)} times")
            continue
        v = regs[0]
        if (v["power"], v["heartbeat"]) != ("poweredOn", "green"):
            out.append(f"{n}: {v['power']}, heartbeat {v['heartbeat']}")
        if v["host"] not in hosts:
            out.append(f"{n}: on {v['host']}, not a host of the cluster")
        if uuids.get(n) and v["uuid"] != uuids[n]:
            out.append(f"{n}: BIOS UUID {v['uuid']} is not production's {uuids[n]}")
        if v["networks"] != [network]:
            out.append(f"{n}: NICs on {', '.join(v['networks']) or 'nothing'}, not {network}")
    return out


def reset_vms(site_path: str, endpoint_name: str, names: list[str]) -> None:
    """Power off and unregister these VMs (on a session of its own), so the baseline registers them
    again from the same .vmx files."""
    from esxdr.site import load_site
    from esxdr.vsphere import vms as vv
    from esxdr.vsphere.recovery import read_dr
    from esxdr.vsphere.session import connect

    ep = load_site(site_path).endpoint(endpoint_name)
    with connect(ep) as s:
        h, _members = read_dr(s, ep)
        vms = [h.vms[n] for n in names if n in h.vms]
        vv.power_off(s, [s.ref("VirtualMachine", v.moid) for v in vms if v.power_state == "poweredOn"])
        vv.unregister(s, [s.ref("VirtualMachine", v.moid) for v in vms])

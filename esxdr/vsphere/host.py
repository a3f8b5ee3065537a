"""Apply a host plan (:mod:`esxdr.plan.host`) to an ESXi host; ``dry_run`` walks the same list.

Each action kind has one executor here. Dry-run and apply share :func:`apply_plan`: the only
difference is whether the executor is called, so "what dry-run said" is "what apply does".
Consecutive send/static targets go to the host in one call (the API takes lists).
Faults are translated with what the observed state knows (e.g. which vSwitch holds an uplink).

What apply creates (vSwitches, port groups, VMkernel NICs) is recorded per endpoint and host
(:class:`CreatedRecords`, under the site's state_dir) as each call succeeds: it is the only
thing ``--prune`` may remove later, because ESXi itself keeps no note of who made what.
"""

from __future__ import annotations

import json
import os
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyVmomi import vim

from esxdr.errors import ConflictError, UsageError
from esxdr.model.host import Created, HostState
from esxdr.plan.host import Action, HostPlan, plan_host
from esxdr.plan.storage import HostsStorageReport, check_storage, plan_resolution
from esxdr.util import atomic_write
from esxdr.vsphere import inventory
from esxdr.vsphere.session import Session

BATCHED = {"add_send_target", "add_static_target", "remove_send_target", "remove_static_target"}


@dataclass
class StepResult:
    action: Action
    status: str  # done | would do
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {**self.action.to_dict(), "status": self.status, "detail": self.detail}


@dataclass
class ApplyResult:
    host: str
    dry_run: bool
    steps: list[StepResult] = field(default_factory=list)
    requests: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"host": self.host, "dry_run": self.dry_run, "steps": [s.to_dict() for s in self.steps],
                "requests": self.requests}

    def render(self) -> str:
        if not self.steps:
            return f"{self.host}: up to date, nothing to do"
        verb = "would" if self.dry_run else "done:"
        lines = [f"{verb} {s.action.describe()}" + (f" ({s.detail})" if s.detail else "") for s in self.steps]
        lines.append(f"{self.host}: {len(self.steps)} action{'s' if len(self.steps) != 1 else ''}"
                     + (" (dry run, nothing changed)" if self.dry_run else " applied"))
        return "\n".join(lines)


def read_chap_secret(params: dict[str, Any]) -> str:
    if params.get("secret_env"):
        value = os.environ.get(params["secret_env"])
        if value is None:
            raise UsageError(f"CHAP secret: environment variable {params['secret_env']} is not set")
        return value
    path = params.get("secret_file")
    if not path:
        raise UsageError("CHAP needs secret_file or secret_env")
    st = os.stat(path)
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UsageError(f"CHAP secret file {path} is readable by others", hint=f"chmod 600 {path}")
    with open(path, encoding="utf-8") as f:
        return f.readline().rstrip("\r\n")


# --------------------------------------------------------------------------- what esxdr created
class CreatedRecords:
    """What ``esxdr host apply`` created on each host of one endpoint, kept in
    ``state_dir/vsphere/created/<endpoint>--<host>.json`` (written after every call that
    created or removed something, so an apply that stops half-way still leaves a true record).

    It is esxdr's only evidence of ownership: ``--prune`` removes nothing else. Losing the file
    makes prune remove nothing (the safe side); the objects can then be removed by hand.
    """

    def __init__(self, state_dir: str | Path, endpoint: str):
        self.dir = Path(state_dir) / "vsphere" / "created"
        self.endpoint = endpoint
        self._lock = threading.Lock()  # apply_plans writes several hosts' records in parallel

    def _path(self, host: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{self.endpoint}--{host}")
        return self.dir / f"{safe}.json"

    def load(self, host: str) -> Created:
        try:
            data = json.loads(self._path(host).read_text())
        except (OSError, ValueError):
            return Created()
        return Created(vswitches=frozenset(str(n) for n in data.get("vswitches", ())),
                       port_groups=frozenset((str(a), str(b)) for a, b in data.get("port_groups", ())),
                       vnics=frozenset((str(a), str(b)) for a, b in data.get("vnics", ())))

    def _save(self, host: str, c: Created) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write(self._path(host), json.dumps(
            {"endpoint": self.endpoint, "host": host, "vswitches": sorted(c.vswitches),
             "port_groups": sorted(c.port_groups), "vnics": sorted(c.vnics)}, indent=1))

    def done(self, host: str, action: Action, device: str | None = None) -> None:
        """Record what a successful action created (``device``: the vmk ESXi named) or removed."""
        k, p = action.kind, action.params
        with self._lock:
            c = self.load(host)
            vs, pgs, nics = set(c.vswitches), set(c.port_groups), set(c.vnics)
            if k == "add_vswitch":
                vs.add(action.target)
            elif k == "add_port_group":
                pgs.add((action.target, p["vswitch"]))
            elif k == "add_vnic" and device:
                nics.add((device, p["port_group"]))
            elif k == "remove_vswitch":
                vs.discard(action.target)
                pgs = {x for x in pgs if x[1] != action.target}  # its port groups went with it
            elif k == "remove_port_group":
                pgs.discard((action.target, p["vswitch"]))
            elif k == "remove_vnic":
                nics = {x for x in nics if x[0] != action.target}
            else:
                return
            self._save(host, Created(frozenset(vs), frozenset(pgs), frozenset(nics)))

    def forget_absent(self, host: str, state: HostState) -> Created:
        """Drop records of objects the host no longer has (removed by hand), so that a later
        object of the same name, made by someone else, is not taken for esxdr's."""
        with self._lock:
            c = self.load(host)
            kept = Created(
                vswitches=frozenset(n for n in c.vswitches if n in state.vswitches),
                port_groups=frozenset((n, v) for n, v in c.port_groups
                                      if n in state.port_groups and state.port_groups[n].vswitch == v),
                vnics=frozenset((d, pg) for d, pg in c.vnics
                                if d in state.vnics and state.vnics[d].port_group == pg))
            if kept != c:
                self._save(host, kept)
            return kept


# --------------------------------------------------------------------------- observe + plan
def observe(session: Session, host_name: str | None, *, bindings: bool = True) -> HostState:
    """The host's state for planning: one property read, plus QueryBoundVnics when iSCSI is on."""
    state = inventory.read_host(session, host_name, with_vms=False)
    return inventory.with_bindings(session, state) if bindings else state


def plan(session: Session, desired: Any, *, prune: bool = False,
         created: Created | None = None) -> tuple[HostPlan, HostState]:
    state = observe(session, desired.host, bindings=bool(desired.iscsi and (desired.iscsi.bind or prune)))
    return plan_host(desired, state, prune=prune, created=created), state


# --------------------------------------------------------------------------- executors
def _teaming(active: Any, standby: Any) -> Any:
    return vim.host.NetworkPolicy.NicTeamingPolicy(
        policy="failover_explicit",
        nicOrder=vim.host.NetworkPolicy.NicOrderPolicy(activeNic=list(active), standbyNic=list(standby or ())))


def _vswitch_spec(p: dict[str, Any]) -> Any:
    spec = vim.host.VirtualSwitch.Specification(numPorts=p["ports"], mtu=p["mtu"])
    if p["uplinks"]:
        spec.bridge = vim.host.VirtualSwitch.BondBridge(nicDevice=list(p["uplinks"]))
        spec.policy = vim.host.NetworkPolicy(nicTeaming=_teaming(p["active"], p["standby"]))
    return spec


def _pg_spec(name: str, p: dict[str, Any]) -> Any:
    policy = vim.host.NetworkPolicy()
    if p["active"] is not None:
        policy.nicTeaming = _teaming(p["active"], p["standby"])
    return vim.host.PortGroup.Specification(name=name, vlanId=p["vlan"], vswitchName=p["vswitch"], policy=policy)


def _vnic_spec(p: dict[str, Any], with_pg: bool = False) -> Any:
    ip = vim.host.IpConfig(dhcp=True) if p["ip"] is None else \
        vim.host.IpConfig(dhcp=False, ipAddress=p["ip"], subnetMask=p["netmask"])
    spec = vim.host.VirtualNic.Specification(ip=ip, mtu=p["mtu"])
    if with_pg:
        spec.portgroup = p["port_group"]
    return spec


class _Executor:
    """Runs actions against one host, keeping what earlier actions produced (vmk names, HBA)."""

    def __init__(self, session: Session, state: HostState):
        self.s = session
        self.state = state
        self.vmk: dict[str, str] = {}  # desired name → device ESXi gave it
        self.hba = state.iscsi.device if state.iscsi else None
        self._ns = self._ss = self._im = None

    @property
    def ns(self) -> Any:
        if self._ns is None:
            self._ns = self.s.ref("host.NetworkSystem", self.state.refs["networkSystem"])
        return self._ns

    @property
    def ss(self) -> Any:
        if self._ss is None:
            self._ss = self.s.ref("host.StorageSystem", self.state.refs["storageSystem"])
        return self._ss

    @property
    def im(self) -> Any:
        if self._im is None:
            self._im = self.s.ref("host.IscsiManager", self.state.refs["iscsiManager"])
        return self._im

    def _hba(self) -> str:
        if self.hba is None:
            # The adapter appears when software iSCSI is enabled; one targeted read finds its name.
            fresh = inventory.read_host(self.s, self.state.name, with_vms=False, with_datastores=False)
            if fresh.iscsi is None:
                raise ConflictError(f"{self.state.name}: no software iSCSI adapter after enabling it",
                                    hint="enable software iSCSI on the host and rerun")
            self.hba = fresh.iscsi.device
        return self.hba

    def hints(self, a: Action) -> dict[str, str]:
        h = {}
        if a.kind in ("add_vswitch", "update_vswitch"):
            held = [f"{u} is an uplink of {self.state.uplink_owner(u)}" for u in a.params["uplinks"]
                    if self.state.uplink_owner(u) not in (None, a.target)]
            if held:
                h["ResourceInUse"] = "; ".join(held) + " (an uplink belongs to one vSwitch)"
        if a.kind in ("remove_port_group", "remove_vswitch"):
            users = [v.device for v in self.state.vnics.values()
                     if v.port_group == a.target or self.state.port_groups.get(v.port_group, None) is not None
                     and self.state.port_groups[v.port_group].vswitch == a.target]
            if users:
                h["ResourceInUse"] = f"{a.target} still carries {', '.join(users)}"
        if a.kind == "bind_vnic":
            h["IscsiFaultVnicHasMultipleUplinks"] = (
                f"{a.target}'s port group has more than one active uplink or a standby uplink; iSCSI port binding "
                "needs exactly one active uplink (set active_uplinks: [vmnicN], standby_uplinks: [])")
        return h

    def run(self, a: Action, batch: list[Action]) -> str:
        p = a.params
        k = a.kind
        if k == "add_vswitch":
            self.ns.AddVirtualSwitch(a.target, _vswitch_spec(p))
        elif k == "update_vswitch":
            self.ns.UpdateVirtualSwitch(a.target, _vswitch_spec(p))
        elif k == "add_port_group":
            self.ns.AddPortGroup(_pg_spec(a.target, p))
        elif k == "update_port_group":
            self.ns.UpdatePortGroup(a.target, _pg_spec(a.target, p))
        elif k == "add_vnic":
            dev = self.ns.AddVirtualNic(p["port_group"], _vnic_spec(p))
            self.vmk[a.target] = dev
            return f"ESXi named it {dev}" if dev != a.target else ""
        elif k == "update_vnic":
            self.ns.UpdateVirtualNic(a.target, _vnic_spec(p, with_pg=True))
        elif k == "remove_vnic":
            self.ns.RemoveVirtualNic(a.target)
        elif k == "remove_port_group":
            self.ns.RemovePortGroup(a.target)
        elif k == "remove_vswitch":
            self.ns.RemoveVirtualSwitch(a.target)
        elif k == "enable_software_iscsi":
            self.ss.UpdateSoftwareInternetScsiEnabled(True)
            self.hba = None
        elif k == "disable_software_iscsi":
            self.ss.UpdateSoftwareInternetScsiEnabled(False)
        elif k == "set_chap":
            self.ss.UpdateInternetScsiAuthenticationProperties(
                self._hba(), vim.host.InternetScsiHba.AuthenticationProperties(
                    chapAuthEnabled=True, chapName=p["name"], chapSecret=read_chap_secret(p),
                    chapAuthenticationType="chapRequired"))
        elif k == "bind_vnic":
            # The device ESXi gave the NIC this apply added, else the one the plan found on the
            # NIC's port group; never the desired name itself (on a host with its own vmk1,
            # that name is another NIC).
            dev = self.vmk.get(a.target) or p["device"]
            if not dev:
                raise ConflictError(f"{self.state.name}: no VMkernel NIC {a.target} to bind (it was to be added first)",
                                    hint="run `esxdr host plan` again")
            self.im.BindVnic(self._hba(), dev)
        elif k == "unbind_vnic":
            self.im.UnbindVnic(self._hba(), p["device"], False)
        elif k == "add_send_target":
            self.ss.AddInternetScsiSendTargets(self._hba(), [
                vim.host.InternetScsiHba.SendTarget(address=b.params["address"], port=b.params["port"])
                for b in batch])
        elif k == "remove_send_target":
            self.ss.RemoveInternetScsiSendTargets(self._hba(), [
                vim.host.InternetScsiHba.SendTarget(address=b.params["address"], port=b.params["port"])
                for b in batch])
        elif k in ("add_static_target", "remove_static_target"):
            targets = [vim.host.InternetScsiHba.StaticTarget(address=b.params["address"], port=b.params["port"],
                                                             iScsiName=b.params["iqn"]) for b in batch]
            if k == "add_static_target":
                self.ss.AddInternetScsiStaticTargets(self._hba(), targets)
            else:
                self.ss.RemoveInternetScsiStaticTargets(self._hba(), targets)
        elif k == "rescan_all_hba":
            self.ss.RescanAllHba()
        elif k == "rescan_vmfs":
            self.ss.RescanVmfs()
        else:
            raise UsageError(f"no executor for action {k}")
        return ""


def apply_plan(session: Session, state: HostState, host_plan: HostPlan, *, dry_run: bool = False,
               progress: Callable[[str], None] | None = None,
               records: CreatedRecords | None = None) -> ApplyResult:
    """Walk ``host_plan``: describe each action (dry run) or execute it. Refusals stop everything first.

    ``records``: where what is created (or pruned) is noted, action by action (not in a dry run)."""
    if host_plan.refusals:
        r = host_plan.refusals[0]
        more = f" (and {len(host_plan.refusals) - 1} more)" if len(host_plan.refusals) > 1 else ""
        raise ConflictError(f"{host_plan.host}: {r.target}: {r.message}{more}", hint=r.hint or None)
    start = session.requests
    result = ApplyResult(host=host_plan.host, dry_run=dry_run)
    ex = _Executor(session, state)
    actions = host_plan.actions
    i = 0
    while i < len(actions):
        a = actions[i]
        batch = [a]
        if a.kind in BATCHED:
            while i + len(batch) < len(actions) and actions[i + len(batch)].kind == a.kind:
                batch.append(actions[i + len(batch)])
        for b in batch:
            if progress:
                progress(("would " if dry_run else "") + b.describe())
        detail = ""
        if not dry_run:
            with session.errors(a.describe() + f" on {host_plan.host}", ex.hints(a)):
                detail = ex.run(a, batch)
            if records is not None:
                records.done(host_plan.host, a, ex.vmk.get(a.target) if a.kind == "add_vnic" else None)
        for b in batch:
            result.steps.append(StepResult(b, "would do" if dry_run else "done", detail if b is a else ""))
        i += len(batch)
    result.requests = session.requests - start
    return result


def ensure(session: Session, desired: Any, *, prune: bool = False, dry_run: bool = False,
           progress: Callable[[str], None] | None = None, records: CreatedRecords | None = None) -> ApplyResult:
    """Observe, plan and apply in one go (what `esxdr host apply` and recovery plans call).

    ``records``: what esxdr created on the host, read for the plan (what --prune may remove)
    and kept up to date by the apply; without it nothing counts as esxdr's."""
    state = observe(session, desired.host, bindings=bool(desired.iscsi and (desired.iscsi.bind or prune)))
    created = records.forget_absent(desired.host, state) if records is not None and not dry_run else \
        records.load(desired.host) if records is not None else None
    host_plan = plan_host(desired, state, prune=prune, created=created)
    for n in host_plan.notes:
        if progress:
            progress(f"note: {n}")
    return apply_plan(session, state, host_plan, dry_run=dry_run, progress=progress, records=records)


# --------------------------------------------------------------------------- several hosts (vCenter)
@dataclass
class MultiApplyResult:
    endpoint: str
    dry_run: bool
    results: list[ApplyResult] = field(default_factory=list)
    requests: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "dry_run": self.dry_run, "requests": self.requests,
                "hosts": [r.to_dict() for r in self.results]}

    def render(self) -> str:
        return "\n".join(f"== {r.host} ==\n{r.render()}" for r in self.results)


def observe_hosts(session: Session, names: list[str], *, bindings: bool = True) -> dict[str, HostState]:
    """The hosts ``names`` for planning: ONE property read for all of them, plus one
    QueryBoundVnics per host with software iSCSI on (bindings are not a property)."""
    states = inventory.read_named_hosts(session, names, with_vms=False)
    if bindings:
        states = {n: inventory.with_bindings(session, st) for n, st in states.items()}
    return states


def apply_plans(session: Session, states: dict[str, HostState], plans: list[HostPlan], *, endpoint: str = "",
                dry_run: bool = False, progress: Callable[[str], None] | None = None,
                max_parallel: int = 8, records: CreatedRecords | None = None) -> MultiApplyResult:
    """Apply one plan per host, the hosts in parallel (each host's actions in order).

    Refusals on any host stop everything before the first change on every host. Host
    configuration calls are synchronous methods, not tasks, so the parallelism is one
    worker per host; the calls share the session (the stub is thread-safe and counts them).
    """
    refused = [(p.host, r) for p in plans for r in p.refusals]
    if refused:
        host, r = refused[0]
        more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
        raise ConflictError(f"{host}: {r.target}: {r.message}{more}", hint=r.hint or None)
    start = session.requests
    out = MultiApplyResult(endpoint=endpoint or session.name, dry_run=dry_run)

    def one(p: HostPlan) -> ApplyResult:
        say = None if progress is None else _prefixed(progress, p.host)
        return apply_plan(session, states[p.host], p, dry_run=dry_run, progress=say, records=records)

    busy = [p for p in plans if p.actions]
    results: dict[str, ApplyResult] = {p.host: ApplyResult(host=p.host, dry_run=dry_run) for p in plans}
    if len(busy) <= 1 or dry_run:
        for p in busy:
            results[p.host] = one(p)
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(max_parallel, len(busy)), thread_name_prefix="host-apply") as pool:
            futures = {p.host: pool.submit(one, p) for p in busy}
            errors = []
            for host, fut in futures.items():
                try:
                    results[host] = fut.result()
                except Exception as e:  # noqa: BLE001 - collected; the first is raised below, after all finished
                    errors.append(e)
            if errors:
                raise errors[0]
    out.results = [results[p.host] for p in plans]
    out.requests = session.requests - start
    return out


def verify_hosts(session: Session, names: list[str], expected: list[Any], *, endpoint: str = "",
                 timeout: float = 60.0, rescan_mode: str = "missing", resolve: str | None = None,
                 progress: Callable[[str], None] | None = None) -> tuple[Any, int, list[Action]]:
    """verify-storage on several hosts: one property read covers all of them per round.

    Unresolved volumes are asked for only on hosts whose check failed; rescans run in
    parallel, only on hosts with missing LUNs (``rescan_mode`` as in
    :func:`esxdr.vsphere.storage.verify_storage`). Returns (HostsStorageReport, rescans, resolved).
    """
    import time
    from concurrent.futures import ThreadPoolExecutor

    from esxdr.vsphere import storage

    say = progress or (lambda _m: None)
    deadline = time.monotonic() + timeout
    rescans = 0

    def look() -> tuple[dict[str, HostState], dict[str, Any]]:
        states = inventory.read_named_hosts(session, names, with_vms=False)
        reports = {}
        for n, st in states.items():
            r = check_storage(expected, st)
            if not r.ok:
                r = check_storage(expected, st, inventory.unresolved_volumes(session, st))
            reports[n] = r
        return states, reports

    def rescan_all(hosts: list[HostState]) -> None:
        if len(hosts) == 1:
            storage.rescan(session, hosts[0])
            return
        with ThreadPoolExecutor(max_workers=min(8, len(hosts)), thread_name_prefix="host-rescan") as pool:
            for f in [pool.submit(storage.rescan, session, h) for h in hosts]:
                f.result()

    def needing_rescan(reports: dict[str, Any]) -> list[str]:
        return [n for n, r in reports.items() if any(c.status in ("missing", "no-volume") for c in r.checks)]

    states, reports = look()
    if rescan_mode == "always":
        rescan_all(list(states.values()))
        rescans += 1
        states, reports = look()
    while rescan_mode != "never" and needing_rescan(reports):
        if rescans and time.monotonic() >= deadline:
            break
        if rescans:
            time.sleep(min(storage.RESCAN_INTERVAL_S, max(0.0, deadline - time.monotonic())))
        todo = needing_rescan(reports)
        say(f"rescanning {', '.join(todo)}: LUNs not seen yet")
        rescan_all([states[n] for n in todo])
        rescans += 1
        states, reports = look()
    done: list[Action] = []
    if resolve and any(r.unresolved for r in reports.values()):
        # Shared LUNs: a resignature writes the LUN, so it is done once, on the first host
        # that sees the copy, and the other hosts pick the new volume up with a rescan.
        # A force-mount writes nothing and is per host (as on ESXi): every host does it.
        handled: set[str] = set()
        resolved_on: set[str] = set()
        for n, r in reports.items():
            acts = [a for a in plan_resolution(r, resolve) if resolve == "keep-uuid" or a.target not in handled]
            if acts:
                storage.apply_resolution(session, states[n], acts, progress=_prefixed(say, n))
                handled.update(a.target for a in acts)
                resolved_on.add(n)
                done.extend(acts)
        others = [states[n] for n, r in reports.items() if n not in resolved_on and r.unresolved]
        if others:
            rescan_all(others)
        states, reports = look()
    return HostsStorageReport(endpoint=endpoint or session.name, reports=[reports[n] for n in names]), rescans, done


def _prefixed(say: Callable[[str], None], host: str) -> Callable[[str], None]:
    """Progress lines of several hosts interleave: name the host in each."""
    return lambda m: say(f"{host}: {m}")

"""Read hosts with ONE RetrievePropertiesEx and parse them into :mod:`esxdr.model.host`.

The filter starts at a ContainerView of HostSystem (created once per session), traverses
``view`` → HostSystem, and from each host ``datastore`` → Datastore and ``vm`` →
VirtualMachine, asking for only the properties the planner and the runbooks use. That is
one request for the whole state of one host (or of every host of a vCenter), where lazy
attribute access (``host.config.network.vswitch`` …) costs one request per attribute.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pyVmomi import vim, vmodl

from esxdr.errors import UsageError, VsphereError
from esxdr.model.host import (
    HostState,
    ObservedDatastore,
    ObservedIscsi,
    ObservedLun,
    ObservedPortGroup,
    ObservedVm,
    ObservedVnic,
    ObservedVSwitch,
    UnresolvedVolume,
)
from esxdr.vsphere.session import Session

PC = vmodl.query.PropertyCollector

HOST_PROPS = [
    "name",
    "configManager.networkSystem",
    "configManager.storageSystem",
    "configManager.datastoreSystem",
    "configManager.iscsiManager",
    "config.network",
    "config.storageDevice",
    # Which datastores and VMs belong to which host: under vCenter the traversal reaches
    # every host's objects in one result set, and these lists sort them out.
    "datastore",
    "vm",
]
DATASTORE_PROPS = ["name", "info", "summary.accessible", "summary.url"]
VM_PROPS = ["name", "config.files.vmPathName", "runtime.powerState", "runtime.question",
            "guestHeartbeatStatus", "guest.toolsRunningStatus"]


def _filter_spec(view: Any, *, with_vms: bool = True, with_datastores: bool = True) -> Any:
    select = []
    if with_datastores:
        select.append(PC.TraversalSpec(name="host-ds", type=vim.HostSystem, path="datastore", skip=False))
    if with_vms:
        select.append(PC.TraversalSpec(name="host-vm", type=vim.HostSystem, path="vm", skip=False))
    to_hosts = PC.TraversalSpec(name="view-hosts", type=vim.view.ContainerView, path="view", skip=False,
                                selectSet=select)
    props = [PC.PropertySpec(type=vim.HostSystem, pathSet=HOST_PROPS)]
    if with_datastores:
        props.append(PC.PropertySpec(type=vim.Datastore, pathSet=DATASTORE_PROPS))
    if with_vms:
        props.append(PC.PropertySpec(type=vim.VirtualMachine, pathSet=VM_PROPS))
    return PC.FilterSpec(objectSet=[PC.ObjectSpec(obj=view, skip=True, selectSet=[to_hosts])], propSet=props)


def retrieve(session: Session, spec: Any) -> list[Any]:
    """RetrievePropertiesEx, following ContinueRetrievePropertiesEx tokens (large vCenters)."""
    pc = session.content.propertyCollector
    with session.errors("reading the inventory"):
        res = pc.RetrievePropertiesEx([spec], PC.RetrieveOptions())
        objects = list(res.objects) if res else []
        while res is not None and res.token:
            res = pc.ContinueRetrievePropertiesEx(res.token)
            objects.extend(res.objects)
    return objects


def read_hosts(session: Session, *, with_vms: bool = True, with_datastores: bool = True) -> dict[str, HostState]:
    """Every host the endpoint manages, by name, from one property read."""
    spec = _filter_spec(session.container_view("HostSystem"), with_vms=with_vms, with_datastores=with_datastores)
    try:
        objects = retrieve(session, spec)
    except VsphereError as e:
        # Views belong to a session: after a transparent re-login the cached one is gone.
        if "ManagedObjectNotFound" not in e.message:
            raise
        session.drop_views()
        spec = _filter_spec(session.container_view("HostSystem"), with_vms=with_vms,
                            with_datastores=with_datastores)
        objects = retrieve(session, spec)
    by_moid: dict[str, dict[str, Any]] = {}
    kinds: dict[str, str] = {}
    for oc in objects:
        props = {p.name: p.val for p in oc.propSet}
        by_moid[oc.obj._moId] = props
        kinds[oc.obj._moId] = type(oc.obj).__name__.rsplit(".", 1)[-1]
    datastores = {m: _datastore(m, p) for m, p in by_moid.items() if kinds[m] == "Datastore"}
    vms = {m: _vm(m, p) for m, p in by_moid.items() if kinds[m] == "VirtualMachine"}
    hosts = {}
    for moid, props in by_moid.items():
        if kinds[moid] != "HostSystem":
            continue
        h = _host(moid, props, datastores, vms)
        hosts[h.name] = h
    return hosts


def read_named_hosts(session: Session, names: list[str], **kw: Any) -> dict[str, HostState]:
    """The hosts ``names`` (in that order), from the one property read of :func:`read_hosts`.

    A name the endpoint does not manage is a usage error naming the hosts it does manage.
    """
    hosts = read_hosts(session, **kw)
    missing = [n for n in names if n not in hosts]
    if missing:
        raise UsageError(f"host{'s' if len(missing) > 1 else ''} {', '.join(missing)} not found on {session.name}",
                         hint="hosts there: " + (", ".join(sorted(hosts)) or "none")
                         + "; fix the names under the endpoint's hosts: / dr_network in the site file")
    return {n: hosts[n] for n in names}


def read_host(session: Session, name: str | None = None, **kw: Any) -> HostState:
    """One host by name; on a standalone ESXi (one host) the name may be left out or differ
    from the host's own name (the site names endpoints, ESXi names itself)."""
    hosts = read_hosts(session, **kw)
    if name in hosts:
        return hosts[name]  # type: ignore[index]
    if len(hosts) == 1 and getattr(session.endpoint, "kind", "esxi") == "esxi":
        return next(iter(hosts.values()))
    raise UsageError(f"host {name!r} not found on {session.name}",
                     hint="hosts there: " + (", ".join(sorted(hosts)) or "none"))


# --------------------------------------------------------------------------- parsing
def _strs(v: Any) -> tuple[str, ...]:
    return tuple(str(x) for x in (v or ()))


def _nic_order(policy: Any) -> tuple[tuple[str, ...] | None, tuple[str, ...] | None]:
    team = getattr(policy, "nicTeaming", None) if policy is not None else None
    order = getattr(team, "nicOrder", None) if team is not None else None
    if order is None:
        return None, None
    return _strs(order.activeNic), _strs(order.standbyNic)


def parse_network(net: Any) -> tuple[tuple[str, ...], dict, dict, dict]:
    pnics = tuple(p.device for p in (net.pnic or ())) if net else ()
    vswitches: dict[str, ObservedVSwitch] = {}
    for vs in (net.vswitch or ()) if net else ():
        spec = vs.spec
        bridge = getattr(spec, "bridge", None)
        uplinks = _strs(getattr(bridge, "nicDevice", None)) if bridge is not None else ()
        active, standby = _nic_order(spec.policy)
        vswitches[vs.name] = ObservedVSwitch(
            name=vs.name, uplinks=uplinks, mtu=vs.mtu or spec.mtu or 1500,
            active=active if active is not None else uplinks, standby=standby or (),
            ports=spec.numPorts or 128)
    port_groups: dict[str, ObservedPortGroup] = {}
    for pg in (net.portgroup or ()) if net else ():
        spec = pg.spec
        active, standby = _nic_order(spec.policy)
        eff_a, eff_s = _nic_order(pg.computedPolicy)
        port_groups[spec.name] = ObservedPortGroup(
            name=spec.name, vswitch=spec.vswitchName, vlan=spec.vlanId or 0,
            active=active, standby=standby if active is not None else None,
            effective_active=eff_a or (), effective_standby=eff_s or ())
    vnics: dict[str, ObservedVnic] = {}
    for nic in (net.vnic or ()) if net else ():
        ip = nic.spec.ip
        vnics[nic.device] = ObservedVnic(
            device=nic.device, port_group=nic.portgroup or nic.spec.portgroup or "",
            dhcp=bool(ip.dhcp) if ip else False,
            ip=(ip.ipAddress or None) if ip and not ip.dhcp else None,
            netmask=(ip.subnetMask or None) if ip and not ip.dhcp else None,
            mtu=nic.spec.mtu or 1500)
    return pnics, vswitches, port_groups, vnics


def parse_storage(dev: Any) -> tuple[bool, ObservedIscsi | None, dict[str, ObservedLun]]:
    if dev is None:
        return False, None, {}
    enabled = bool(getattr(dev, "softwareInternetScsiEnabled", False))
    iscsi = None
    hba_names: dict[str, str] = {}
    for hba in dev.hostBusAdapter or ():
        hba_names[hba.key] = hba.device
        if isinstance(hba, vim.host.InternetScsiHba) and hba.isSoftwareBased:
            auth = hba.authenticationProperties
            statics: list[tuple[str, int, str]] = []
            discovered: list[tuple[str, int, str]] = []
            for st in hba.configuredStaticTarget or ():
                item = (st.address, st.port or 3260, st.iScsiName)
                (discovered if st.discoveryMethod == "sendTargetMethod" else statics).append(item)
            iscsi = ObservedIscsi(
                device=hba.device, iqn=hba.iScsiName,
                send_targets=tuple((s.address, s.port or 3260) for s in hba.configuredSendTarget or ()),
                static_targets=tuple(statics), discovered=tuple(discovered),
                chap_name=(auth.chapName or None) if auth else None,
                chap_enabled=bool(auth and auth.chapAuthEnabled))
    # LUN key → (target IQNs, paths)
    targets: dict[str, list[str]] = {}
    for adapter in (dev.scsiTopology.adapter or ()) if dev.scsiTopology else ():
        for t in adapter.target or ():
            # Only iSCSI transports name a target: a SAS/SATA/FC LUN (a real host's local RAID
            # disk) would otherwise be listed as reached through a target named "".
            iqn = getattr(t.transport, "iScsiName", None)
            if not iqn:
                continue
            for lun in t.lun or ():
                # One topology target per (portal, IQN): a LUN seen through two portals of one
                # target is listed under both, but is reached through one target.
                seen = targets.setdefault(lun.scsiLun, [])
                if iqn not in seen:
                    seen.append(iqn)
    paths: dict[str, list[tuple[str, str]]] = {}
    mp = dev.multipathInfo
    for lun in (mp.lun or ()) if mp else ():
        for p in lun.path or ():
            paths.setdefault(lun.lun, []).append((p.name, hba_names.get(p.adapter, p.adapter)))
    luns: dict[str, ObservedLun] = {}
    for lun in dev.scsiLun or ():
        if not isinstance(lun, vim.host.ScsiDisk) or not lun.canonicalName:
            continue
        cap = lun.capacity
        ps = paths.get(lun.key or "", [])
        luns[lun.canonicalName] = ObservedLun(
            canonical_name=lun.canonicalName, uuid=lun.uuid or "", vendor=(lun.vendor or "").strip(),
            model=(lun.model or "").strip(), serial=(lun.serialNumber or "").strip(),
            capacity_bytes=(cap.block * cap.blockSize) if cap else 0,
            paths=tuple(p for p, _ in ps), adapters=tuple(sorted({a for _, a in ps})),
            targets=tuple(targets.get(lun.key or "", ())))
    return enabled, iscsi, luns


def _datastore(moid: str, p: dict[str, Any]) -> ObservedDatastore:
    info = p.get("info")
    vmfs = getattr(info, "vmfs", None) if info is not None else None
    fm = getattr(vmfs, "forceMountedInfo", None) if vmfs is not None else None
    return ObservedDatastore(
        name=p.get("name", moid), moid=moid,
        vmfs_uuid=vmfs.uuid if vmfs is not None else None,
        extents=tuple(e.diskName for e in (vmfs.extent or ())) if vmfs is not None else (),
        accessible=bool(p.get("summary.accessible", True)),
        force_mounted=bool(fm and fm.mounted), url=p.get("summary.url", "") or "")


def _vm(moid: str, p: dict[str, Any]) -> ObservedVm:
    q = p.get("runtime.question")
    return ObservedVm(
        name=p.get("name", moid), moid=moid, vmx_path=p.get("config.files.vmPathName", "") or "",
        power_state=str(p.get("runtime.powerState", "poweredOff")),
        question_id=q.id if q is not None else None, question_text=(q.text or "") if q is not None else "",
        heartbeat=str(p.get("guestHeartbeatStatus", "gray")),
        tools_running=p.get("guest.toolsRunningStatus") == "guestToolsRunning")


def _host(moid: str, p: dict[str, Any], datastores: dict[str, ObservedDatastore],
          vms: dict[str, ObservedVm]) -> HostState:
    refs = {}
    for role in ("networkSystem", "storageSystem", "datastoreSystem", "iscsiManager"):
        ref = p.get(f"configManager.{role}")
        if ref is not None:
            refs[role] = ref._moId
    pnics, vswitches, pgs, vnics = parse_network(p.get("config.network"))
    enabled, iscsi, luns = parse_storage(p.get("config.storageDevice"))
    # The datastores and VMs this host mounts / runs (under vCenter the result set holds
    # every host's; on standalone ESXi these lists name all of them anyway).
    ds_ids = {r._moId for r in p.get("datastore") or ()}
    vm_ids = {r._moId for r in p.get("vm") or ()}
    return HostState(
        name=p.get("name", moid), moid=moid, refs=refs, pnics=pnics, vswitches=vswitches,
        port_groups=pgs, vnics=vnics, software_iscsi_enabled=enabled, iscsi=iscsi, luns=luns,
        datastores={d.name: d for m, d in datastores.items() if m in ds_ids},
        vms={v.name: v for m, v in vms.items() if m in vm_ids})


def with_bindings(session: Session, host: HostState) -> HostState:
    """Add the VMkernel NICs bound to the software iSCSI adapter (one QueryBoundVnics call;
    bindings are not a property, so the one-read inventory cannot carry them)."""
    if host.iscsi is None or "iscsiManager" not in host.refs:
        return host
    im = session.ref("host.IscsiManager", host.refs["iscsiManager"])
    with session.errors(f"reading the iSCSI port bindings of {host.name}"):
        bound = im.QueryBoundVnics(host.iscsi.device)
    from dataclasses import replace

    return replace(host, iscsi=replace(host.iscsi, bound=tuple(p.vnicDevice for p in bound or ())))


def unresolved_volumes(session: Session, host: HostState) -> list[UnresolvedVolume]:
    """HostDatastoreSystem.QueryUnresolvedVmfsVolumes, parsed."""
    dss = session.ref("host.DatastoreSystem", host.refs["datastoreSystem"])
    with session.errors(f"listing unresolved VMFS volumes on {host.name}"):
        found = dss.QueryUnresolvedVmfsVolumes() or []
    out = []
    for u in found:
        st = u.resolveStatus
        out.append(UnresolvedVolume(
            vmfs_uuid=u.vmfsUuid, label=u.vmfsLabel or "",
            extents=tuple(e.device.diskName for e in u.extent or () if e.device is not None),
            device_paths=tuple(e.devicePath for e in u.extent or ()),
            reason=",".join(e.reason for e in u.extent or () if getattr(e, "reason", None)) or "",
            resolvable=bool(st.resolvable) if st else True,
            multiple_copies=bool(getattr(st, "multipleCopies", False)) if st else False))
    return out


def datastore_vms(session: Session, match: Callable[[str, list[str]], bool]) -> tuple[list[str], list[dict[str, Any]]]:
    """(the datastores ``match`` takes by name and VMFS extents, the VMs on them), from one
    RetrievePropertiesEx: ContainerView(Datastore) → each datastore's name, extents and VMs →
    each VM's power state and tools."""
    pc = PC
    view = session.container_view("Datastore")
    ds_vm = pc.TraversalSpec(name="ds-vm", type=vim.Datastore, path="vm", skip=False)
    spec = pc.FilterSpec(
        objectSet=[pc.ObjectSpec(obj=view, skip=True, selectSet=[
            pc.TraversalSpec(name="view-ds", type=vim.view.ContainerView, path="view", skip=False,
                             selectSet=[ds_vm])])],
        propSet=[pc.PropertySpec(type=vim.Datastore, pathSet=["name", "info", "vm"]),
                 pc.PropertySpec(type=vim.VirtualMachine,
                                 pathSet=["name", "runtime.powerState", "guest.toolsRunningStatus"])])
    props: dict[str, dict[str, Any]] = {}
    kinds: dict[str, str] = {}
    for oc in retrieve(session, spec):
        props[oc.obj._moId] = {p.name: p.val for p in oc.propSet}
        kinds[oc.obj._moId] = "ds" if isinstance(oc.obj, vim.Datastore) else "vm"
    matched: list[str] = []
    vms: dict[str, dict[str, Any]] = {}
    for moid, p in props.items():
        if kinds[moid] != "ds":
            continue
        info = p.get("info")
        vmfs = getattr(info, "vmfs", None)
        extents = [e.diskName for e in (getattr(vmfs, "extent", None) or ())]
        name = p.get("name", moid)
        if not match(name, extents):
            continue
        matched.append(name)
        for ref in p.get("vm") or ():
            vp = props.get(ref._moId, {})
            entry = vms.setdefault(ref._moId, {
                "moid": ref._moId, "name": vp.get("name", ref._moId),
                "power_state": str(vp.get("runtime.powerState", "poweredOff")),
                "tools_running": vp.get("guest.toolsRunningStatus") == "guestToolsRunning", "datastores": set()})
            entry["datastores"].add(name)
    return matched, list(vms.values())

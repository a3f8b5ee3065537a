"""The few vSphere calls of a recovery runbook that esxdr.vsphere.{vms,storage,host} do not make.

Finding the VMs on recovered datastores (one SearchDatastoreSubFolders_Task per datastore,
all awaited together), mapping NICs to test port groups (one RetrievePropertiesEx for every
VM's devices, then parallel ReconfigVM_Task only where a NIC must move), and creating and
removing the drill's port groups. Registration, power-on, heartbeats, rescans and VMFS
verification come from :mod:`esxdr.vsphere.vms` and :mod:`esxdr.vsphere.storage`.
"""

from __future__ import annotations

from typing import Any

from pyVmomi import vim, vmodl

from esxdr.errors import EsxdrError, UsageError
from esxdr.model.host import HostState
from esxdr.plan.discover import SeenDatastore, SeenVm
from esxdr.plan.runbook import HostView, cluster_view, norm_vmx
from esxdr.vsphere.session import Session
from esxdr.vsphere.tasks import wait_tasks

PC = vmodl.query.PropertyCollector

# Deadlines of the waits here, for real hosts. A datastore search lists every folder of the
# datastore (slow on a large, busy VMFS volume); a reconfiguration is quick, but queues behind
# the host's other tasks right after a batch of registrations.
SEARCH_TIMEOUT_S = 300.0
RECONFIG_TIMEOUT_S = 300.0
# A guest's own shutdown (the site's shutdown_timeout overrides it): Windows installing updates
# on the way down takes minutes.
GUEST_SHUTDOWN_TIMEOUT_S = 300.0


def host_view(h: HostState) -> HostView:
    """The runbook planner's view of a host (pure values)."""
    iscsi = h.iscsi
    luns = {name.removeprefix("naa."): lun.targets for name, lun in h.luns.items() if name.startswith("naa.")}
    return HostView(
        name=h.name, iqn=iscsi.iqn if iscsi else None,
        send_targets=tuple(f"{a}:{p}" for a, p in iscsi.send_targets) if iscsi else (),
        port_groups={n: (p.vswitch, p.vlan) for n, p in h.port_groups.items()},
        vswitches={n: v.uplinks for n, v in h.vswitches.items()},
        luns=luns,
        datastores={n: (d.vmfs_uuid, tuple(e.removeprefix("naa.") for e in d.extents)) for n, d in h.datastores.items()},
        vms={n: (v.vmx_path, v.power_state, v.question_id) for n, v in h.vms.items()},
    )


def view_of(h: HostState, members: dict[str, HostState] | None = None) -> HostView:
    """The planner's view of the DR side: one host, or (``members``) a cluster of several."""
    if members:
        return cluster_view(h.name, [host_view(m) for m in members.values()])
    return host_view(h)


def merge_hosts(name: str, states: dict[str, HostState]) -> HostState:
    """Several hosts of a vCenter as one HostState for the steps that act cluster-wide: LUNs,
    datastores (a shared one is one object) and VMs are the union; port groups and vSwitches
    those every host has. ``moid``/``refs`` are the first host's (placement walks up from it to
    the cluster); per-host work (networks, rescans) uses the members themselves."""
    hosts = list(states.values())
    first = hosts[0]
    from dataclasses import replace

    return replace(first, name=name,
                   port_groups={k: v for k, v in first.port_groups.items() if all(k in h.port_groups for h in hosts)},
                   vswitches={k: v for k, v in first.vswitches.items() if all(k in h.vswitches for h in hosts)},
                   luns={k: v for h in hosts for k, v in h.luns.items()},
                   datastores={k: v for h in hosts for k, v in h.datastores.items()},
                   vms={k: v for h in hosts for k, v in h.vms.items()})


def read_dr(session: Session, endpoint: Any, *, with_vms: bool = True) -> tuple[HostState, dict[str, HostState]]:
    """The DR side in ONE property read: (host, {}) for a standalone ESXi; for a vCenter
    (``kind: vcenter``) the merged view of its hosts (``hosts:``, else every host it manages)
    and the hosts themselves by name."""
    from esxdr.vsphere import inventory

    if getattr(endpoint, "kind", "esxi") == "vcenter":
        if endpoint.hosts:
            states = inventory.read_named_hosts(session, list(endpoint.hosts), with_vms=with_vms)
        else:
            states = dict(sorted(inventory.read_hosts(session, with_vms=with_vms).items()))
        if not states:

            raise UsageError(f"vCenter {endpoint.name} manages no host", hint="list the DR hosts under hosts:")
        return merge_hosts(endpoint.name, states), states
    return inventory.read_host(session, endpoint.name, with_vms=with_vms), {}


def rescan_hosts(session: Session, hosts: list[HostState]) -> None:
    """:func:`esxdr.vsphere.storage.rescan` (the software iSCSI adapter, then VMFS) on every
    host, in parallel (one worker per host)."""
    from esxdr.vsphere.storage import rescan

    if len(hosts) <= 1:
        for h in hosts:
            rescan(session, h)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(8, len(hosts)), thread_name_prefix="host-rescan") as pool:
        for f in [pool.submit(rescan, session, h) for h in hosts]:
            f.result()


def on_hosts(fn: Any, items: dict[str, Any], max_parallel: int = 8) -> dict[str, Any]:
    """``fn(host_name, item)`` for every host in parallel; results by host; the first error raised
    after all finished (so no host is left half-way without the others being awaited)."""
    if len(items) <= 1:
        return {h: fn(h, x) for h, x in items.items()}
    from concurrent.futures import ThreadPoolExecutor

    out: dict[str, Any] = {}
    errors: list[BaseException] = []
    with ThreadPoolExecutor(max_workers=min(max_parallel, len(items)), thread_name_prefix="host") as pool:
        futures = {h: pool.submit(fn, h, x) for h, x in items.items()}
        for h, f in futures.items():
            try:
                out[h] = f.result()
            except Exception as e:  # noqa: BLE001 - raised below, after every host finished
                errors.append(e)
    if errors:
        raise errors[0]
    return out


def datastore_browsers(session: Session, host: HostState, datastores: list[str]) -> dict[str, Any]:
    """Datastore name -> its HostDatastoreBrowser, for all of them in ONE RetrievePropertiesEx
    (``ref.browser`` would be a lazy read per datastore: a ``Fetch`` on pyVmomi >= 8.0.1)."""
    moids = {host.datastores[n].moid: n for n in datastores if n in host.datastores}
    if not moids:
        return {}
    from esxdr.vsphere.inventory import retrieve

    spec = PC.FilterSpec(objectSet=[PC.ObjectSpec(obj=session.ref("Datastore", m), skip=False) for m in moids],
                         propSet=[PC.PropertySpec(type=vim.Datastore, pathSet=["browser"])])
    return {moids[oc.obj._moId]: p.val for oc in retrieve(session, spec) for p in oc.propSet
            if p.name == "browser" and oc.obj._moId in moids}


def find_vmx(session: Session, host: HostState, datastores: list[str], *, timeout: float = SEARCH_TIMEOUT_S,
             browsers: dict[str, Any] | None = None) -> dict[str, str]:
    """VM name (the .vmx file's stem) -> ``[datastore] dir/name.vmx`` on the given datastores.
    ``browsers`` (datastore name -> HostDatastoreBrowser, read with the placement) saves the
    property read of the browsers."""
    wanted = [n for n in datastores if n in host.datastores]
    browsers = dict(browsers or {})
    missing = [n for n in wanted if browsers.get(n) is None]
    if missing:
        browsers.update(datastore_browsers(session, host, missing))
    tasks = []
    for name in wanted:
        browser = browsers.get(name)
        if browser is None:
            continue  # gone between the host read and now: nothing to search
        with session.errors(f"searching datastore {name} for VMs"):
            spec = vim.host.DatastoreBrowser.SearchSpec(matchPattern=["*.vmx"])
            tasks.append(browser.SearchDatastoreSubFolders_Task(f"[{name}]", spec))
    found: dict[str, str] = {}
    from esxdr.vsphere.tasks import wait_tasks

    for result in wait_tasks(session, tasks, timeout=timeout, what=f"searching {len(tasks)} datastore(s) for VMs",
                             settle=0.25):
        for folder in result or ():
            base = folder.folderPath if folder.folderPath.endswith(("/", "]")) else folder.folderPath + "/"
            if base.endswith("]"):
                base += " "
            for f in folder.file or ():
                if f.path.endswith(".vmx"):
                    # One spelling ("[ds] dir/x.vmx", as vSphere reports vmPathName): compared with
                    # registered VMs' paths, "[ds] /dir/x.vmx" would register a VM a second time.
                    found.setdefault(f.path[:-4], norm_vmx(base + f.path))
    return found


VM_PATHS = ["name", "config.hardware.device", "runtime.powerState", "runtime.question", "runtime.host"]


def read_vms(session: Session, vms: list[Any]) -> dict[str, dict[str, Any]]:
    """moid -> name, devices, power state and pending question of every VM: one RetrievePropertiesEx."""
    if not vms:
        return {}
    spec = PC.FilterSpec(objectSet=[PC.ObjectSpec(obj=v, skip=False) for v in vms],
                         propSet=[PC.PropertySpec(type=vim.VirtualMachine, pathSet=VM_PATHS)])
    from esxdr.vsphere.inventory import retrieve

    return {oc.obj._moId: {p.name: p.val for p in oc.propSet} for oc in retrieve(session, spec)}


def nic_moves(session: Session, vms: list[Any], mapping: dict[str, str],
              read: dict[str, dict[str, Any]] | None = None) -> list[tuple[Any, list[Any], list[str]]]:
    """(vm, device changes, descriptions) for VMs whose NICs are on a mapped production port group.
    ``read``: the VMs as :func:`read_vms` returned them (else they are read here)."""
    if not vms:
        return []
    read = read if read is not None else read_vms(session, vms)
    by_moid = {v._moId: v for v in vms}
    out = []
    for moid, props in read.items():
        changes, said = [], []
        for dev in props.get("config.hardware.device") or ():
            backing = getattr(dev, "backing", None)
            if not isinstance(dev, vim.vm.device.VirtualEthernetCard) or \
                    not isinstance(backing, vim.vm.device.VirtualEthernetCard.NetworkBackingInfo):
                continue
            target = mapping.get(backing.deviceName)
            if not target or target == backing.deviceName:
                continue
            said.append(f"{props.get('name')}: {dev.deviceInfo.label if dev.deviceInfo else dev.key} "
                        f"{backing.deviceName} → {target}")
            dev.backing = vim.vm.device.VirtualEthernetCard.NetworkBackingInfo(deviceName=target)
            changes.append(vim.vm.device.VirtualDeviceSpec(operation="edit", device=dev))
        if changes:
            out.append((by_moid[moid], changes, said))
    return out


def nic_networks(session: Session, vms: list[Any],
                 read: dict[str, dict[str, Any]] | None = None) -> dict[str, list[str]]:
    """VM name -> the port groups its NICs are on (evidence for the report)."""
    if not vms:
        return {}
    read = read if read is not None else read_vms(session, vms)
    out: dict[str, list[str]] = {}
    for props in read.values():
        nets = [str(getattr(d.backing, "deviceName", "")) for d in props.get("config.hardware.device") or ()
                if isinstance(d, vim.vm.device.VirtualEthernetCard) and getattr(d.backing, "deviceName", None)]
        out[str(props.get("name"))] = nets
    return out


def move_nics(session: Session, moves: list[tuple[Any, list[Any], list[str]]], *,
              timeout: float = RECONFIG_TIMEOUT_S) -> None:
    tasks = []
    for vm, changes, _ in moves:
        with session.errors(f"moving the NICs of VM {vm._moId}"):
            tasks.append(vm.ReconfigVM_Task(vim.vm.ConfigSpec(deviceChange=changes)))
    wait_tasks(session, tasks, timeout=timeout, what=f"reconfiguring {len(tasks)} VM(s)")


def network_system(session: Session, host: HostState) -> Any:
    return session.ref("host.NetworkSystem", host.refs["networkSystem"])


def add_vswitch(session: Session, host: HostState, name: str) -> None:
    """A vSwitch without uplinks: VMs on it reach each other and nothing else."""
    ns = network_system(session, host)
    with session.errors(f"adding vSwitch {name} on {host.name}"):
        ns.AddVirtualSwitch(name, vim.host.VirtualSwitch.Specification(numPorts=128, mtu=1500))


def add_port_group(session: Session, host: HostState, name: str, vswitch: str, vlan: int) -> None:
    ns = network_system(session, host)
    with session.errors(f"adding port group {name} on {host.name}"):
        ns.AddPortGroup(vim.host.PortGroup.Specification(name=name, vlanId=vlan, vswitchName=vswitch,
                                                         policy=vim.host.NetworkPolicy()))


def remove_port_group(session: Session, host: HostState, name: str) -> None:
    ns = network_system(session, host)
    try:
        with session.errors(f"removing port group {name} from {host.name}"):
            ns.RemovePortGroup(name)
    except Exception as e:  # already gone is what we want
        if "NotFound" not in str(getattr(e, "message", e)):
            raise


def remove_vswitch(session: Session, host: HostState, name: str) -> None:
    ns = network_system(session, host)
    try:
        with session.errors(f"removing vSwitch {name} from {host.name}"):
            ns.RemoveVirtualSwitch(name)
    except Exception as e:
        if "NotFound" not in str(getattr(e, "message", e)):
            raise


def cancel_question(session: Session, vm: Any, question_id: str) -> None:
    """Answer a pending moved-or-copied question with Cancel (a killed power-on left it; cleanup
    powers off): by the choice labelled button.uuid.cancel, after reading again what the question
    asks (``question_id`` is only what was last observed). Any other question is not answered:
    ConflictError with its text (:func:`esxdr.vsphere.vms.cancel_pending`)."""
    from esxdr.vsphere.vms import cancel_pending

    cancel_pending(session, vm)


def shutdown_vms(session: Session, vms: list[tuple[Any, bool]], *,
                 timeout: float = GUEST_SHUTDOWN_TIMEOUT_S) -> dict[str, str]:
    """Stop a batch cleanly: ShutdownGuest for every VM whose tools run (all issued first), wait on
    one property filter until they are all off (up to ``timeout``, the site's shutdown_timeout),
    then PowerOffVM_Task (parallel) for the rest. ``vms``: (VM ref, tools running). Returns
    moid -> "shutdown" | "powered off". Only the deadline passing leads to the hard power-off:
    a host that stops answering is an error, never a reason to pull the plug on a guest."""
    from esxdr.vsphere.tasks import WaitTimeout, watch

    how: dict[str, str] = {}
    guests = [vm for vm, tools in vms if tools]
    for vm in guests:
        try:
            with session.errors(f"shutting down the guest of VM {vm._moId}"):
                vm.ShutdownGuest()
            how[vm._moId] = "shutdown"
        except EsxdrError:
            pass  # tools went away meanwhile: powered off below
    waiting = [vm for vm in guests if vm._moId in how]
    state: dict = {}
    if waiting:
        ids = [vm._moId for vm in waiting]
        try:
            state = watch(session, waiting, ["runtime.powerState"],
                          lambda s: all(str(s.get(i, {}).get("runtime.powerState")) == "poweredOff" for i in ids),
                          timeout=timeout, what=f"guest shutdown of {len(waiting)} VM(s)")
        except WaitTimeout:
            pass  # the guests that did not stop in time are powered off below
    off = {i for i, p in state.items() if str(p.get("runtime.powerState")) == "poweredOff"}
    rest = [vm for vm, _ in vms if vm._moId not in off]
    tasks = []
    for vm in rest:
        with session.errors(f"powering off VM {vm._moId}"):
            tasks.append(vm.PowerOffVM_Task())
        how[vm._moId] = "powered off"
    wait_tasks(session, tasks, what=f"powering off {len(tasks)} VM(s)")
    return how


def read_for_discovery(session: Session) -> tuple[list[Any], list[Any]]:
    """Production as `esxdr plan discover` needs it, in ONE RetrievePropertiesEx: from the host
    view, every host's datastores (name, VMFS UUID and extents), networks (names) and VMs (name,
    .vmx, the datastores and networks they use). Returns ([SeenDatastore], [SeenVm])."""
    from esxdr.vsphere.inventory import retrieve

    select = [PC.TraversalSpec(name=f"host-{p}", type=vim.HostSystem, path=p, skip=False)
              for p in ("datastore", "vm", "network")]
    to_hosts = PC.TraversalSpec(name="view-hosts", type=vim.view.ContainerView, path="view", skip=False,
                                selectSet=select)
    spec = PC.FilterSpec(objectSet=[PC.ObjectSpec(obj=session.container_view("HostSystem"), skip=True,
                                                  selectSet=[to_hosts])],
                         propSet=[PC.PropertySpec(type=vim.Datastore, pathSet=["name", "info"]),
                                  PC.PropertySpec(type=vim.Network, pathSet=["name"]),
                                  PC.PropertySpec(type=vim.VirtualMachine,
                                                  pathSet=["name", "config.files.vmPathName", "datastore", "network",
                                                           "runtime.powerState"])])
    objects = retrieve(session, spec)
    props = {oc.obj._moId: (type(oc.obj).__name__.rsplit(".", 1)[-1], {p.name: p.val for p in oc.propSet})
             for oc in objects}
    names = {m: str(p.get("name", m)) for m, (_k, p) in props.items()}
    stores, vms = [], []
    for moid, (kind, p) in props.items():
        if kind == "Datastore":
            vmfs = getattr(p.get("info"), "vmfs", None)
            stores.append(SeenDatastore(name=names[moid], vmfs_uuid=vmfs.uuid if vmfs is not None else None,
                                        extents=tuple(str(e.diskName).removeprefix("naa.").lower()
                                                      for e in (vmfs.extent or ())) if vmfs is not None else ()))
        elif kind == "VirtualMachine":
            vms.append(SeenVm(name=names[moid], vmx_path=str(p.get("config.files.vmPathName") or ""),
                              datastores=tuple(names.get(d._moId, d._moId) for d in p.get("datastore") or ()),
                              port_groups=tuple(names.get(n._moId, n._moId) for n in p.get("network") or ()),
                              power_state=str(p.get("runtime.powerState", ""))))
    return stores, vms

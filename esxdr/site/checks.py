"""Checks that span sections of a site file, run on the values the loader built.

References between objects (with roles), dataset placement, VM dependencies and
networks, and the consistency of each DR host's network. Values that already
had a problem are skipped, so one mistake is reported once.
"""

from __future__ import annotations

import dataclasses

from esxdr.site import values as v
from esxdr.site.model import (
    HostNetwork,
    PortGroupSpec,
    ProtectionGroup,
    StorageServer,
    VmkernelNic,
    VsphereEndpoint,
)
from esxdr.site.nodes import Reader, did_you_mean, join


class CrossChecks:
    """What spans sections: references, roles, dataset placement, DR network consistency."""

    def __init__(self, reader: Reader, storage: dict[str, StorageServer], vsphere: dict[str, VsphereEndpoint],
                 groups: dict[str, ProtectionGroup], dr_network: dict[str, HostNetwork],
                 storage_names: set[str], vsphere_names: set[str]):
        self.r = reader
        self.storage = storage
        self.vsphere = vsphere
        self.groups = groups
        self.dr_network = dr_network
        self.storage_names = storage_names
        self.vsphere_names = vsphere_names

    def run(self) -> None:
        for name, hn in list(self.dr_network.items()):
            endpoint = self.host_endpoint(name)
            if endpoint is not None:
                self.dr_network[name] = dataclasses.replace(hn, endpoint=endpoint)
            self.host_network(self.dr_network[name])
        for group in self.groups.values():
            self.group(group)
        self.dr_roots()

    # -- references

    def ref(self, path: str, name: str | None, known: dict, declared: set[str], what: str,
            role: str | None) -> object | None:
        """Resolve a reference; report an unknown name (with a suggestion) or the wrong role."""
        if not name:
            return None
        section = "storage" if known is self.storage else "vsphere"
        if name not in declared and section not in self.r.bad:  # a broken section was reported already
            hint = did_you_mean(name, sorted(declared)) or f"known: {', '.join(sorted(declared)) or 'none'}"
            self.r.fail(path, f"no {what} named {name!r}", hint)
            return None
        obj = known.get(name)
        if obj is not None and role and getattr(obj, "role", None) not in (None, role):
            self.r.fail(path, f"{name} has role {obj.role}, but this must be a {role} {what}",
                        f"pick a {what} with role: {role}")
            return None
        return obj

    def host_endpoint(self, host: str) -> str | None:
        path = join("dr_network", host)
        ep = self.vsphere.get(host)
        if ep is not None:
            if ep.role != "dr":
                self.r.fail(path, f"{host} is a {ep.role} endpoint; dr_network describes DR hosts only")
                return None
            if ep.kind == "vcenter":
                self.r.fail(path, f"{host} is a vCenter; describe each of its hosts instead",
                            f"its hosts: {', '.join(ep.hosts) or 'none listed (add hosts: to the endpoint)'}")
                return None
            return host
        owners = [e for e in self.vsphere.values() if host in e.hosts]
        if not owners:
            if host not in self.vsphere_names:  # otherwise the endpoint itself was reported
                known = [n for n, e in self.vsphere.items() if e.role == "dr" and e.kind == "esxi"] + \
                    [h for e in self.vsphere.values() if e.role == "dr" for h in e.hosts]
                self.r.fail(path, f"{host} is neither a DR ESXi endpoint nor a host of a DR vCenter",
                            f"known DR hosts: {', '.join(known) or 'none'}")
            return None
        if owners[0].role != "dr":
            self.r.fail(path, f"{host} is a host of {owners[0].name}, a {owners[0].role} vCenter; "
                        "dr_network describes DR hosts only")
            return None
        return owners[0].name

    # -- protection groups

    def group(self, g: ProtectionGroup) -> None:
        r = self.r
        gp = join("protection_groups", g.name)
        src = self.ref(join(gp, "source"), g.source, self.storage, self.storage_names, "storage server", "production")
        dst = self.ref(join(gp, "destination"), g.destination, self.storage, self.storage_names, "storage server",
                       "dr")
        if g.source and g.source == g.destination:
            r.fail(join(gp, "destination"), "source and destination are the same storage server")
        if isinstance(dst, StorageServer) and dst.serve_prefix and g.dr_root and \
                not v.zfs_under(g.dr_root, dst.serve_prefix):
            r.fail(join(gp, "dr_root"), f"{g.dr_root} is outside {dst.name}'s serve_prefix {dst.serve_prefix}",
                   f"esxdr serve on {dst.name} would refuse it; put dr_root under {dst.serve_prefix}")
        if isinstance(src, StorageServer) and src.serve_prefix and g.source_root and \
                not v.zfs_under(g.source_root, src.serve_prefix):
            # pull mode: production's send-only serve allows only its prefix
            r.fail(join(gp, "source_root"), f"{g.source_root} is outside {src.name}'s serve_prefix {src.serve_prefix}",
                   f"esxdr serve --send-only on {src.name} would refuse it; put source_root under {src.serve_prefix}")
        self.ref(join(gp, "vsphere_production"), g.vsphere_production, self.vsphere, self.vsphere_names,
                 "vsphere endpoint", "production")
        dr_ep = self.ref(join(gp, "vsphere_dr"), g.vsphere_dr, self.vsphere, self.vsphere_names,
                         "vsphere endpoint", "dr")
        if g.consistency == "application" and not g.vsphere_production:
            r.fail(join(gp, "consistency"), "application-consistent snapshots need vsphere_production",
                   "name the production vSphere endpoint that quiesces the VMs, or use consistency: crash")
        if g.vms and not g.vsphere_dr:
            r.fail(join(gp, "vms"), "VMs are listed but vsphere_dr is not set",
                   "name the DR vSphere endpoint the VMs are recovered on: vsphere_dr: …")
        every = g.schedule.every_seconds
        if every and g.rpo_seconds and g.rpo_seconds < every:
            r.fail(join(gp, "rpo"), f"rpo {v.format_duration(g.rpo_seconds)} is shorter than the schedule "
                   f"(every {v.format_duration(every)}), so status would always report it stale",
                   "make rpo at least the interval plus the time a run takes")
        self.vms(g, gp, dr_ep if isinstance(dr_ep, VsphereEndpoint) else None)

    def vms(self, g: ProtectionGroup, gp: str, dr_ep: VsphereEndpoint | None) -> None:
        r = self.r
        by_name = {vm.name: vm for vm in g.vms}
        for vm in g.vms:
            vp = join(join(gp, "vms"), vm.name)
            for i, dep in enumerate(vm.depends_on):
                dp = join(join(vp, "depends_on"), i)
                other = by_name.get(dep)
                if dep == vm.name:
                    r.fail(dp, f"{vm.name} depends on itself")
                elif other is None:
                    r.fail(dp, f"{dep} is not a VM of protection group {g.name}",
                           "dependencies are only within one group")
                elif other.priority != vm.priority and not self.r.had_problem(vp) \
                        and not self.r.had_problem(join(join(gp, "vms"), dep)):
                    r.fail(dp, f"{dep} has priority {other.priority} but {vm.name} has {vm.priority}; "
                           "dependencies are only within one priority",
                           "lower priorities already boot first: drop the dependency, or give both the same priority")
        cycle = _find_cycle({vm.name: [d for d in vm.depends_on if d in by_name and d != vm.name] for vm in g.vms})
        if cycle:
            r.fail(join(join(gp, "vms"), cycle[0]), f"dependency cycle: {' → '.join(cycle + [cycle[0]])}",
                   "break the cycle; these VMs could never boot")
        if dr_ep is None:
            return
        hosts = [hn for hn in self.dr_network.values() if hn.endpoint == dr_ep.name]
        for vm in g.vms:
            for pg, nm in vm.networks.items():
                npath = join(join(join(join(gp, "vms"), vm.name), "networks"), pg)
                for hn in hosts:
                    for key, want in (("failover", nm.failover), ("test", nm.test)):
                        spec = hn.port_groups.get(want)
                        if spec is None:
                            r.fail(join(npath, key), f"port group {want!r} is not defined on {hn.host}",
                                   f"add it under dr_network.{hn.host}.port_groups (known: "
                                   f"{', '.join(hn.port_groups) or 'none'})")
                        elif key == "test" and not spec.isolated:
                            r.fail(join(npath, key), f"test port group {want!r} on {hn.host} is not isolated: a "
                                   "drill would connect the VM to a live network",
                                   f"set isolated: true on dr_network.{hn.host}.port_groups.{want} or map to "
                                   "an isolated port group")

    def dr_roots(self) -> None:
        """Two groups may not replicate into the same or nested DR datasets on one server."""
        seen: list[ProtectionGroup] = []
        for g in self.groups.values():
            if not g.dr_root or not g.destination:
                continue
            for other in seen:
                if other.destination == g.destination and (v.zfs_under(g.dr_root, other.dr_root)
                                                           or v.zfs_under(other.dr_root, g.dr_root)):
                    self.r.fail(join(join("protection_groups", g.name), "dr_root"),
                                f"{g.dr_root} overlaps dr_root {other.dr_root} of group {other.name} "
                                f"on {g.destination}",
                                "give each group its own DR dataset tree, e.g. rp1/core and rp1/web")
                    break
            seen.append(g)

    # -- DR host networks

    def host_network(self, hn: HostNetwork) -> None:
        hp = join("dr_network", hn.host)
        self.uplinks(hn, hp)
        for pg in hn.port_groups.values():
            self.port_group(hn, pg, join(join(hp, "port_groups"), pg.name))
        bound = set(hn.iscsi.bind) if hn.iscsi else set()
        for vmk in hn.vmkernel.values():
            self.vmknic(hn, vmk, join(join(hp, "vmkernel"), vmk.name), vmk.name in bound)
        if hn.iscsi:
            for i, name in enumerate(hn.iscsi.bind):
                if name not in hn.vmkernel:
                    self.r.fail(join(join(hp, "iscsi"), "bind") + f"[{i}]", f"no VMkernel NIC {name!r} on {hn.host}",
                                f"known: {', '.join(hn.vmkernel) or 'none'}")

    def uplinks(self, hn: HostNetwork, hp: str) -> None:
        owner: dict[str, str] = {}
        for sw in hn.vswitches.values():
            for i, nic in enumerate(sw.uplinks):
                if nic in owner:
                    self.r.fail(join(join(join(hp, "vswitches"), sw.name), "uplinks") + f"[{i}]",
                                f"{nic} is already an uplink of {owner[nic]}", "an uplink belongs to one vSwitch only")
                else:
                    owner[nic] = sw.name

    def port_group(self, hn: HostNetwork, pg: PortGroupSpec, pp: str) -> None:
        r = self.r
        sw = hn.vswitches.get(pg.vswitch)
        if sw is None:
            if pg.vswitch:
                r.fail(join(pp, "vswitch"), f"no vSwitch {pg.vswitch!r} on {hn.host}",
                       f"known: {', '.join(hn.vswitches) or 'none'}")
            return
        for key, names in (("active_uplinks", pg.active_uplinks), ("standby_uplinks", pg.standby_uplinks)):
            for i, nic in enumerate(names or ()):
                if nic not in sw.uplinks:
                    r.fail(join(pp, key) + f"[{i}]", f"{nic} is not an uplink of {sw.name}",
                           f"uplinks of {sw.name}: {', '.join(sw.uplinks) or 'none'}")
        if not pg.isolated or not sw.uplinks:
            return
        if pg.vlan == 0:
            r.fail(join(pp, "vlan"), f"isolated port group {pg.name} has no VLAN on {sw.name}, which has "
                   "uplinks: its traffic would reach the physical network",
                   "give it a VLAN that goes nowhere (e.g. vlan: 310) or put it on a vSwitch without uplinks")
            return
        for other in hn.port_groups.values():
            if other is not pg and not other.isolated and other.vswitch == pg.vswitch and other.vlan == pg.vlan:
                r.fail(join(pp, "vlan"), f"isolated port group {pg.name} shares VLAN {pg.vlan} with "
                       f"{other.name} on {sw.name}", "pick a VLAN used by nothing else")
                return

    def vmknic(self, hn: HostNetwork, vmk: VmkernelNic, np: str, bound: bool) -> None:
        r = self.r
        pg = hn.port_groups.get(vmk.port_group)
        if pg is None:
            if vmk.port_group:
                r.fail(join(np, "port_group"), f"no port group {vmk.port_group!r} on {hn.host}",
                       f"known: {', '.join(hn.port_groups) or 'none'}")
            return
        sw = hn.vswitches.get(pg.vswitch)
        if sw is None:
            return
        if vmk.mtu > sw.mtu:
            r.fail(join(np, "mtu"), f"mtu {vmk.mtu} is larger than {sw.name}'s mtu {sw.mtu}",
                   f"raise {sw.name}'s mtu or lower this one")
        if bound:
            # HostIscsiManager.BindVnic refuses a port group without exactly one active uplink.
            active = pg.active_uplinks if pg.active_uplinks is not None else sw.active
            if len(active) != 1:
                first = (active or sw.uplinks or ("vmnic1",))[0]
                r.fail(join(np, "port_group"), f"{vmk.name} is bound to software iSCSI, so port group {pg.name} "
                       f"needs exactly one active uplink, not {len(active)} ({', '.join(active) or 'none'})",
                       f"set active_uplinks: [{first}] on {pg.name} and move the others to standby_uplinks")


def _find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """One cycle in a dependency graph, as the list of its nodes, or None."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for d in graph.get(n, ()):
            if state.get(d) == 1:
                return stack[stack.index(d):]
            if d not in state and (found := visit(d)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in graph:
        if n not in state and (found := visit(n)):
            return found
    return None

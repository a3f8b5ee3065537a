"""Pure planning for a DR ESXi host: desired (site file) vs observed → actions with reasons.

No pyVmomi here: observed state comes in as :mod:`esxdr.model.host` values, actions
go out as data. :mod:`esxdr.vsphere.host` walks the same action list for ``--dry-run``
(describe) and apply (execute), so the two cannot disagree.

Two planners:

- :func:`plan_host` — network and software iSCSI (``esxdr host plan|apply``)
- :func:`check_storage` and :func:`plan_resolution` — is every expected LUN visible and every
  expected VMFS volume mounted with its identity (``esxdr host verify-storage``)

Order of a host plan, and why:

1. with ``prune``: unbind, remove targets, VMkernel NICs, port groups, vSwitches first —
   so uplinks and names they held are free for what comes next. Only what esxdr itself
   created (:class:`~esxdr.model.host.Created`, recorded by apply) is removed: a
   vSwitch, port group or VMkernel NIC that someone else made, or that the host keeps for
   itself (Dell's iDRAC NIC on a hidden port group), stays whatever the site file says;
2. vSwitch updates before vSwitch adds (an update may release an uplink an add needs);
3. port groups, then VMkernel NICs (a NIC needs its port group);
4. software iSCSI on, CHAP, port binding (needs the NIC), send and static targets;
5. RescanAllHba + RescanVmfs, only when storage configuration changed.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from esxdr.errors import UsageError
from esxdr.model.host import Created, HostState

MANAGEMENT_VNIC = "vmk0"

# Action kinds in execution order (the planner sorts by this).
ORDER = [
    "unbind_vnic", "remove_static_target", "remove_send_target", "remove_vnic", "remove_port_group",
    "remove_vswitch",
    "update_vswitch", "add_vswitch", "update_port_group", "add_port_group", "update_vnic", "add_vnic",
    "enable_software_iscsi", "set_chap", "bind_vnic", "add_send_target", "add_static_target",
    "disable_software_iscsi",
    "rescan_all_hba", "rescan_vmfs",
    # storage resolution (verify-storage --resolve)
    "force_mount", "resignature", "rename_datastore",
]
STORAGE_KINDS = {"enable_software_iscsi", "set_chap", "bind_vnic", "add_send_target", "add_static_target",
                 "unbind_vnic", "remove_static_target", "remove_send_target", "disable_software_iscsi"}


@dataclass(frozen=True)
class Action:
    kind: str
    target: str  # the object acted on, by name
    reason: str
    params: dict[str, Any] = field(default_factory=dict, hash=False, compare=True)

    @property
    def changes_storage(self) -> bool:
        return self.kind in STORAGE_KINDS

    def describe(self) -> str:
        p = self.params
        k = self.kind
        if k in ("add_vswitch", "update_vswitch"):
            verb = "add" if k == "add_vswitch" else "update"
            team = f", active {csv_list(p['active'])}" + (f", standby {csv_list(p['standby'])}" if p["standby"] else "")
            return (f"{verb} vSwitch {self.target} (uplinks {csv_list(p['uplinks']) or 'none'}, MTU {p['mtu']}"
                    f"{team if p['uplinks'] else ''}, {p['ports']} ports)")
        if k in ("add_port_group", "update_port_group"):
            verb = "add" if k == "add_port_group" else "update"
            team = "" if p["active"] is None else f", active {csv_list(p['active'])}" + \
                (f", standby {csv_list(p['standby'])}" if p["standby"] else "")
            return f"{verb} port group {self.target} on {p['vswitch']} (VLAN {p['vlan']}{team})"
        if k in ("add_vnic", "update_vnic"):
            verb = "add" if k == "add_vnic" else "update"
            ip = "DHCP" if p["ip"] is None else f"{p['ip']}/{p['prefix']}"
            return f"{verb} VMkernel NIC {self.target} on {p['port_group']} ({ip}, MTU {p['mtu']})"
        if k == "enable_software_iscsi":
            return "enable the software iSCSI adapter"
        if k == "disable_software_iscsi":
            return "disable the software iSCSI adapter"
        if k == "set_chap":
            return f"set CHAP on the iSCSI adapter (name {p['name']}, secret from {p['secret_ref']})"
        if k == "bind_vnic":
            return f"bind {self.target} to the software iSCSI adapter"
        if k == "unbind_vnic":
            return f"unbind {self.target} from the software iSCSI adapter"
        if k == "add_send_target":
            return f"add send target {self.target}"
        if k == "remove_send_target":
            return f"remove send target {self.target}"
        if k == "add_static_target":
            return f"add static target {self.target}"
        if k == "remove_static_target":
            return f"remove static target {self.target}"
        if k == "remove_vnic":
            return f"remove VMkernel NIC {self.target}"
        if k == "remove_port_group":
            return f"remove port group {self.target}"
        if k == "remove_vswitch":
            return f"remove vSwitch {self.target}"
        if k == "rescan_all_hba":
            return "rescan all HBAs"
        if k == "rescan_vmfs":
            return "rescan for VMFS volumes"
        if k == "force_mount":
            return f"force-mount VMFS volume {self.target} keeping its UUID (from {csv_list(p['extents'])})"
        if k == "resignature":
            rename = f", then rename it to {p['rename_to']}" if p.get("rename_to") else ""
            return f"resignature VMFS volume {self.target} (new UUID{rename})"
        if k == "rename_datastore":
            return f"rename datastore {self.target} to {p['new_name']}"
        return f"{k} {self.target}"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "target": self.target, "reason": self.reason,
                "description": self.describe(), "params": _plain(self.params)}


@dataclass(frozen=True)
class Refusal:
    """Something the plan will not do, with why and what to change. apply stops before acting."""

    target: str
    message: str
    hint: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"target": self.target, "message": self.message, "hint": self.hint}


@dataclass
class HostPlan:
    host: str
    actions: list[Action] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # left alone, and why

    @property
    def empty(self) -> bool:
        return not self.actions and not self.refusals

    def to_dict(self) -> dict[str, Any]:
        return {"host": self.host, "actions": [a.to_dict() for a in self.actions],
                "refusals": [r.to_dict() for r in self.refusals], "notes": list(self.notes)}

    def render(self) -> str:
        lines = []
        if not self.actions and not self.refusals:
            lines.append(f"{self.host}: up to date, nothing to do")
        for i, a in enumerate(self.actions, 1):
            lines.append(f"{i:3}. {a.describe()}")
            lines.append(f"     because {a.reason}")
        for r in self.refusals:
            lines.append(f"refused: {r.target}: {r.message}")
            if r.hint:
                lines.append(f"     hint: {r.hint}")
        for n in self.notes:
            lines.append(f"note: {n}")
        return "\n".join(lines)


def csv_list(items: Any) -> str:
    return ", ".join(items or ())


def _plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, tuple | list):
        return [_plain(x) for x in v]
    return v


def split_ip(cidr: str | None) -> tuple[str | None, str | None, int | None]:
    """"10.20.0.11/24" → ("10.20.0.11", "255.255.255.0", 24); None (DHCP) → (None, None, None)."""
    if cidr is None or cidr == "dhcp":
        return None, None, None
    iface = ipaddress.ip_interface(cidr if "/" in cidr else cidr + "/32")
    return str(iface.ip), str(iface.network.netmask), iface.network.prefixlen


def _vs_teaming(vs: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    standby = tuple(vs.standby)
    active = tuple(vs.active) or tuple(u for u in vs.uplinks if u not in standby)
    return active, standby


# --------------------------------------------------------------------------- host network plan
@dataclass
class _Extras:
    """What the host has beyond the site file: what --prune may remove (esxdr created it and
    nothing that stays depends on it), and what stays whatever happens, with why."""

    vnics: list[str] = field(default_factory=list)
    port_groups: list[str] = field(default_factory=list)
    vswitches: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)

    @property
    def ours(self) -> list[str]:
        return ([f"vSwitch {n}" for n in self.vswitches] + [f"port group {n}" for n in self.port_groups]
                + [f"VMkernel NIC {d}" for d in self.vnics])


def _extras(desired: Any, observed: HostState, created: Created, claimed: set[str],
            mgmt_pg: str | None, mgmt_vs: str | None) -> _Extras:
    out = _Extras()
    kept_vnics: list[str] = []
    kept_pgs: list[str] = []
    kept_vs: list[str] = []
    for d, v in observed.vnics.items():
        if d in claimed or d == MANAGEMENT_VNIC:
            continue
        if v.port_group not in observed.port_groups:
            # A port group config.network.portgroup does not list: the host's own (Dell's
            # "iDRAC Network" on the hidden vSwitchiDRACvusb holds vmk1 at 169.254.0.2).
            kept_vnics.append(f"VMkernel NIC {d} (on {v.port_group!r}, a port group the host does not list: "
                            "a system NIC such as the iDRAC passthrough)")
        elif (d, v.port_group) in created.vnics:
            out.vnics.append(d)
        else:
            kept_vnics.append(f"VMkernel NIC {d}")
    going = set(out.vnics)
    for n, pg in observed.port_groups.items():
        if n in desired.port_groups or n == mgmt_pg:
            continue
        users = [d for d, v in observed.vnics.items() if v.port_group == n and d not in going]
        if (n, pg.vswitch) not in created.port_groups:
            kept_pgs.append(f"port group {n}")
        elif users:
            kept_pgs.append(f"port group {n} (still carries {csv_list(users)})")
        else:
            out.port_groups.append(n)
    going_pgs = set(out.port_groups)
    for n in observed.vswitches:
        if n in desired.vswitches or n == mgmt_vs:
            continue  # the management vSwitch has a note of its own
        # RemoveVirtualSwitch takes its port groups with it: only when every one of them goes.
        staying = [p for p, pg in observed.port_groups.items() if pg.vswitch == n and p not in going_pgs]
        if n not in created.vswitches:
            kept_vs.append(f"vSwitch {n}")
        elif staying:
            kept_vs.append(f"vSwitch {n} (still carries port group {csv_list(staying)})")
        else:
            out.vswitches.append(n)
    out.kept = kept_vs + kept_pgs + kept_vnics  # in the order of the other notes
    return out


def plan_host(desired: Any, observed: HostState, *, prune: bool = False,
              chap_secret: tuple[str | None, str | None] = (None, None),
              created: Created | None = None) -> HostPlan:
    """Plan ``desired`` (a :class:`~esxdr.site.model.HostNetwork`) against ``observed``.

    ``created``: what esxdr created on this host (recorded by apply); with ``prune`` only those
    objects are removed when the site file no longer lists them. None: nothing is esxdr's.
    """
    plan = HostPlan(host=desired.host)
    acts: list[Action] = []
    refuse = plan.refusals.append
    created = created or Created()
    mgmt_pg = observed.vnics[MANAGEMENT_VNIC].port_group if MANAGEMENT_VNIC in observed.vnics else None
    mgmt_vs = observed.port_groups[mgmt_pg].vswitch if mgmt_pg in observed.port_groups else None
    # The NICs the site file's vmkernel: entries stand for: the one on each one's port group.
    claimed = {v.device for nic in desired.vmkernel.values() if (v := observed.vnic_on(nic.port_group)) is not None}
    extras = _extras(desired, observed, created, claimed, mgmt_pg, mgmt_vs)

    # vSwitches that will be gone (pruned) or will release uplinks
    pruned_vs = set(extras.vswitches) if prune else set()
    releasing = {n: set(v.uplinks) - set(desired.vswitches[n].uplinks)
                 for n, v in observed.vswitches.items() if n in desired.vswitches}

    # -- vSwitches
    for name, vs in desired.vswitches.items():
        active, standby = _vs_teaming(vs)
        params = {"uplinks": tuple(vs.uplinks), "mtu": vs.mtu, "active": active, "standby": standby,
                  "ports": vs.ports}
        for u in vs.uplinks:
            if observed.pnics and u not in observed.pnics:
                refuse(Refusal(f"vSwitch {name}", f"uplink {u} does not exist on {observed.name}",
                               f"physical NICs there: {csv_list(observed.pnics)}"))
                continue
            owner = observed.uplink_owner(u)
            if owner and owner != name and owner not in pruned_vs and u not in releasing.get(owner, set()):
                refuse(Refusal(
                    f"vSwitch {name}", f"uplink {u} is already an uplink of {owner} (an uplink belongs to one vSwitch)",
                    f"remove {u} from {owner} first, or describe {owner} in the site file without it"
                    + ("" if owner in desired.vswitches else
                       " (or run with --prune to remove it)" if owner in extras.vswitches else
                       f" (esxdr did not create {owner}, so --prune leaves it alone)")))
        ob = observed.vswitches.get(name)
        if ob is None:
            acts.append(Action("add_vswitch", name, "it is in the site file but not on the host", params))
            continue
        diffs = []
        if set(ob.uplinks) != set(vs.uplinks):
            diffs.append(f"uplinks {csv_list(ob.uplinks) or 'none'} → {csv_list(vs.uplinks) or 'none'}")
        if ob.mtu != vs.mtu:
            diffs.append(f"MTU {ob.mtu} → {vs.mtu}")
        if vs.uplinks and (tuple(ob.active) != active or tuple(ob.standby) != standby):
            diffs.append(f"failover order active [{csv_list(ob.active)}] standby [{csv_list(ob.standby)}] → "
                         f"active [{csv_list(active)}] standby [{csv_list(standby)}]")
        if ob.ports != vs.ports:
            diffs.append(f"ports {ob.ports} → {vs.ports}")
        if diffs:
            acts.append(Action("update_vswitch", name, "; ".join(diffs), params))

    # -- port groups
    def vs_order(vs_name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        if vs_name in desired.vswitches:
            return _vs_teaming(desired.vswitches[vs_name])
        ob = observed.vswitches.get(vs_name)
        return (tuple(ob.active), tuple(ob.standby)) if ob else ((), ())

    def effective(pg_name: str) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
        pg = desired.port_groups.get(pg_name)
        if pg is not None:
            if pg.active_uplinks is not None:
                return tuple(pg.active_uplinks), tuple(pg.standby_uplinks or ())
            return vs_order(pg.vswitch)
        ob = observed.port_groups.get(pg_name)
        return (tuple(ob.effective_active), tuple(ob.effective_standby)) if ob else None

    for name, pg in desired.port_groups.items():
        pg_active: tuple[str, ...] | None = tuple(pg.active_uplinks) if pg.active_uplinks is not None else None
        pg_standby = tuple(pg.standby_uplinks or ()) if pg_active is not None else None
        params = {"vswitch": pg.vswitch, "vlan": pg.vlan, "active": pg_active, "standby": pg_standby}
        obp = observed.port_groups.get(name)
        if obp is None:
            acts.append(Action("add_port_group", name, "it is in the site file but not on the host", params))
            continue
        if obp.vswitch != pg.vswitch:
            refuse(Refusal(f"port group {name}", f"exists on {obp.vswitch}, the site file puts it on {pg.vswitch}",
                           "ESXi cannot move a port group: remove it on the host (or rename it in the site file)"))
            continue
        diffs = []
        if obp.vlan != pg.vlan:
            diffs.append(f"VLAN {obp.vlan} → {pg.vlan}")
        ob_active: tuple[str, ...] | None = tuple(obp.active) if obp.active is not None else None
        ob_standby: tuple[str, ...] | None = tuple(obp.standby or ()) if obp.active is not None else None
        if (ob_active, ob_standby) != (pg_active, pg_standby):
            def show(a: Any, s: Any) -> str:
                return "inherited from the vSwitch" if a is None else f"active [{csv_list(a)}] standby [{csv_list(s)}]"
            diffs.append(f"teaming {show(ob_active, ob_standby)} → {show(pg_active, pg_standby)}")
        if diffs:
            acts.append(Action("update_port_group", name, "; ".join(diffs), params))

    # -- VMkernel NICs, matched by their port group only. The name says nothing: ESXi numbers
    # new NICs itself, and a host may already have a vmkN that is not the site file's (Dell
    # hosts have vmk1 at 169.254.0.2 on the hidden "iDRAC Network", the iDRAC OS passthrough).
    # Such a NIC is never rewritten; the site file's NIC is added and apply maps the desired
    # name to the device ESXi hands back.
    for name, nic in desired.vmkernel.items():
        ip, mask, prefix = split_ip(nic.ip)
        params = {"port_group": nic.port_group, "ip": ip, "netmask": mask, "prefix": prefix, "mtu": nic.mtu}
        obn = observed.vnic_on(nic.port_group)
        if obn is None:
            acts.append(Action("add_vnic", name, "it is in the site file but not on the host", params))
            other = observed.vnics.get(name)
            if other is not None:
                at = "DHCP" if other.dhcp else f"{other.ip or 'no address'}"
                plan.notes.append(f"{name} on {observed.name} is another NIC (port group {other.port_group!r}, {at}); "
                                  f"left alone: ESXi numbers the new NIC for {nic.port_group} itself")
            continue
        diffs = []
        if obn.device != name:
            plan.notes.append(f"{name} is {obn.device} on {observed.name} (ESXi chose the number)")
        if ip is None and not obn.dhcp:
            diffs.append(f"IP {obn.ip} → DHCP")
        elif ip is not None and (obn.dhcp or obn.ip != ip or obn.netmask != mask):
            diffs.append(f"IP {'DHCP' if obn.dhcp else f'{obn.ip}/{obn.netmask}'} → {ip}/{mask}")
        if obn.mtu != nic.mtu:
            diffs.append(f"MTU {obn.mtu} → {nic.mtu}")
        if diffs:
            acts.append(Action("update_vnic", obn.device, "; ".join(diffs), {**params, "desired_name": name}))

    def device_of(vmk: str) -> str | None:
        """The device of the site file's ``vmk`` on the host; None while it is still to be added."""
        nic = desired.vmkernel.get(vmk)
        ob = observed.vnic_on(nic.port_group) if nic is not None else None
        return ob.device if ob is not None else None

    # -- software iSCSI
    spec = desired.iscsi
    iscsi = observed.iscsi
    if spec is not None and spec.enabled:
        if not observed.software_iscsi_enabled or iscsi is None:
            acts.append(Action("enable_software_iscsi", "software iSCSI", "the site file wants it and it is off"))
        if spec.chap is not None:
            ref = f"file {spec.chap.secret_file}" if spec.chap.secret_file else f"${spec.chap.secret_env}"
            # ESXi never reveals a CHAP secret, so a changed secret only shows as a fingerprint
            # of the one esxdr last set (chap_secret = (recorded, current); None: unknown).
            recorded, current = chap_secret
            why = ""
            if iscsi is None or not iscsi.chap_enabled:
                why = "CHAP is off"
            elif iscsi.chap_name != spec.chap.name:
                why = f"CHAP name is {iscsi.chap_name}, the site file says {spec.chap.name}"
            elif current is not None and recorded is None:
                why = f"CHAP is on, but not with a secret esxdr set (the host never shows it); set {ref}"
            elif current is not None and recorded != current:
                why = f"the CHAP secret in {ref} changed since esxdr set it"
            if why:
                acts.append(Action("set_chap", spec.chap.name, why,
                                   {"name": spec.chap.name, "secret_ref": ref,
                                    "secret_file": spec.chap.secret_file, "secret_env": spec.chap.secret_env}))
        bound = set(iscsi.bound or ()) if iscsi is not None else set()
        for vmk in spec.bind:
            nic = desired.vmkernel.get(vmk)
            if nic is None:
                # Bound NICs are the site file's own, found by port group; never a host NIC by name.
                refuse(Refusal(vmk, f"cannot bind {vmk}: the site file does not describe it under vmkernel:",
                               f"describe {vmk} (its port group and address) under vmkernel: in the site file"))
                continue
            pg_name = nic.port_group
            order = effective(pg_name)
            if order is None:
                refuse(Refusal(vmk, f"cannot bind {vmk}: its port group {pg_name} is not on {observed.name}",
                               f"describe port group {pg_name} under port_groups: in the site file"))
                continue
            active, standby = order
            if len(active) != 1 or standby:
                what = f"{len(active)} active uplink{'s' if len(active) != 1 else ''}" + \
                    (f" ({csv_list(active)})" if active else "") + \
                    (f" and standby {csv_list(standby)}" if standby else "")
                first = active[0] if active else "vmnicN"
                refuse(Refusal(
                    vmk, f"cannot bind {vmk} to software iSCSI: its port group {pg_name} has {what}; "
                         "iSCSI port binding needs exactly one active uplink and no standby uplink",
                    f"set active_uplinks: [{first}] and standby_uplinks: [] on port group {pg_name}"))
                continue
            dev = device_of(vmk)
            if dev is None or dev not in bound:
                # device None: the NIC is added by this plan; apply binds the device ESXi names.
                acts.append(Action("bind_vnic", vmk, "the site file binds it and it is not bound",
                                   {"device": dev}))
        have_send = set(iscsi.send_targets) if iscsi else set()
        for p in spec.send_targets:
            if (p.address, p.port) not in have_send:
                acts.append(Action("add_send_target", f"{p.address}:{p.port}", "not configured on the adapter",
                                   {"address": p.address, "port": p.port}))
        have_static = set(iscsi.static_targets) if iscsi else set()
        for st in spec.static_targets:
            if (st.address, st.port, st.iqn) not in have_static:
                acts.append(Action("add_static_target", f"{st.iqn} at {st.address}:{st.port}",
                                   "not configured on the adapter",
                                   {"address": st.address, "port": st.port, "iqn": st.iqn}))
        if iscsi is not None:
            want_send = {(p.address, p.port) for p in spec.send_targets}
            want_static = {(s.address, s.port, s.iqn) for s in spec.static_targets}
            want_bound = {d for v in spec.bind if (d := device_of(v)) is not None}
            extra_send = [s for s in iscsi.send_targets if s not in want_send]
            extra_static = [s for s in iscsi.static_targets if s not in want_static]
            extra_bound = [b for b in (iscsi.bound or ()) if b not in want_bound]
            if prune:
                for dev in extra_bound:
                    # A binding is esxdr's to undo only on a NIC the site file describes or
                    # esxdr created; anyone else's NIC keeps its binding.
                    if dev not in claimed and dev not in extras.vnics:
                        plan.notes.append(f"iSCSI binding of {dev} is not in the site file; kept even with --prune: "
                                          f"esxdr did not create {dev}")
                        continue
                    acts.append(Action("unbind_vnic", dev, "bound on the host, not in the site file (--prune)",
                                       {"device": dev}))
                for a, port in extra_send:
                    acts.append(Action("remove_send_target", f"{a}:{port}", "not in the site file (--prune)",
                                       {"address": a, "port": port}))
                for a, port, iqn in extra_static:
                    acts.append(Action("remove_static_target", f"{iqn} at {a}:{port}",
                                       "not in the site file (--prune)", {"address": a, "port": port, "iqn": iqn}))
            else:
                for what in ([f"send target {a}:{p}" for a, p in extra_send]
                             + [f"static target {q} at {a}:{p}" for a, p, q in extra_static]
                             + [f"iSCSI binding of {d}" for d in extra_bound]):
                    plan.notes.append(f"{what} is not in the site file; kept (--prune removes it)")
    elif spec is not None and not spec.enabled and observed.software_iscsi_enabled:
        acts.append(Action("disable_software_iscsi", "software iSCSI", "the site file says enabled: false"))

    # -- things on the host that the site file does not describe. --prune removes only what
    # esxdr created (the record apply keeps) and nothing that stays depends on; the rest is
    # named in a note, never touched.
    bound_now = set(iscsi.bound or ()) if iscsi else set()
    if prune:
        for d in extras.vnics:
            if d in bound_now and not any(a.kind == "unbind_vnic" and a.target == d for a in acts):
                continue
            acts.append(Action("remove_vnic", d, "not in the site file, created by esxdr (--prune)", {"device": d}))
        for n in extras.port_groups:
            acts.append(Action("remove_port_group", n, "not in the site file, created by esxdr (--prune)",
                               {"vswitch": observed.port_groups[n].vswitch}))
        for n in extras.vswitches:
            acts.append(Action("remove_vswitch", n, "not in the site file, created by esxdr (--prune)"))
        if mgmt_vs and mgmt_vs not in desired.vswitches:
            plan.notes.append(f"{mgmt_vs} carries the management network ({MANAGEMENT_VNIC}); kept even with --prune")
        if mgmt_pg and mgmt_pg not in desired.port_groups:
            plan.notes.append(f"port group {mgmt_pg} carries {MANAGEMENT_VNIC}; kept even with --prune")
        if extras.kept:
            plan.notes.append("not in the site file, but not created by esxdr (or still in use), so --prune "
                              "leaves them alone: " + ", ".join(extras.kept))
    else:
        if extras.ours:
            plan.notes.append("not in the site file, created by esxdr, left alone (--prune removes them): "
                              + ", ".join(extras.ours))
        if extras.kept:
            plan.notes.append("not in the site file and not created by esxdr: left alone, --prune too leaves "
                              "them: " + ", ".join(extras.kept))

    if any(a.changes_storage for a in acts):
        acts.append(Action("rescan_all_hba", observed.name, "the iSCSI configuration changed"))
        acts.append(Action("rescan_vmfs", observed.name, "new LUNs may carry VMFS volumes"))
    acts.sort(key=lambda a: ORDER.index(a.kind))
    plan.actions = acts
    return plan


# --------------------------------------------------------------------------- several hosts (vCenter)
@dataclass
class MultiHostPlan:
    """One plan per host of a vCenter endpoint; apply walks them in parallel, each in order."""

    endpoint: str
    plans: list[HostPlan] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return all(p.empty for p in self.plans)

    @property
    def refusals(self) -> list[tuple[str, Refusal]]:
        return [(p.host, r) for p in self.plans for r in p.refusals]

    def to_dict(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "empty": self.empty, "hosts": [p.to_dict() for p in self.plans]}

    def render(self) -> str:
        return "\n".join(f"== {p.host} ==\n{p.render()}" for p in self.plans)


def plan_hosts(endpoint: str, desired: dict[str, Any], observed: dict[str, HostState], *,
               prune: bool = False,
               chap_secrets: dict[str, tuple[str | None, str | None]] | None = None,
               created: dict[str, Created] | None = None) -> MultiHostPlan:
    """:func:`plan_host` for each host of ``desired`` (site order), against its observed state
    (``created``: per host, what esxdr created there)."""
    plans = []
    for name, want in desired.items():
        if name not in observed:
            p = HostPlan(host=name)
            p.refusals.append(Refusal(name, f"not managed by {endpoint}",
                                      "add the host to the vCenter cluster, or remove it from hosts: / dr_network"))
            plans.append(p)
            continue
        plans.append(plan_host(want, observed[name], prune=prune,
                               chap_secret=(chap_secrets or {}).get(name, (None, None)),
                               created=(created or {}).get(name)))
    return MultiHostPlan(endpoint=endpoint, plans=plans)


def select_hosts(endpoint: str, endpoint_hosts: tuple[str, ...] | list[str], dr_network_hosts: list[str],
                 only: str | None = None, *, need_network: bool = True) -> list[str]:
    """Which hosts of a vCenter endpoint a `esxdr host` command acts on.

    All of the endpoint's ``hosts:`` (in site order) that have a ``dr_network`` entry
    (``need_network``; verify-storage needs none), or just ``only`` (``--host``).
    """

    listed = list(endpoint_hosts)
    if only is not None:
        if listed and only not in listed:
            raise UsageError(f"--host {only}: not one of the hosts of {endpoint} ({', '.join(listed)})",
                             hint=f"list it under vsphere.{endpoint}.hosts in the site file")
        if need_network and only not in dr_network_hosts:
            raise UsageError(f"--host {only}: no dr_network entry for it", hint="describe its network under dr_network:")
        return [only]
    if not listed:
        raise UsageError(f"vsphere.{endpoint} (kind vcenter) lists no hosts",
                         hint="name the DR hosts esxdr acts on: hosts: [esx1.example.com, ...]")
    chosen = [h for h in listed if h in dr_network_hosts] if need_network else listed
    if not chosen:
        raise UsageError(f"none of the hosts of {endpoint} ({', '.join(listed)}) has a dr_network entry",
                         hint="describe each host's network under dr_network:")
    return chosen

"""What the drill and failover plans share: callouts, .vmx rewriting, power order, LUNs and networks."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from esxdr.errors import ConflictError, ManifestError, UsageError
from esxdr.model.identity import relative_file
from esxdr.model.manifest import Backing, LogicalUnit, Manifest, Naa, Portal, Target, View
from esxdr.plan import rewrite
from esxdr.plan.runbook.core import (
    DRILL_VSWITCH,
    TEST_PREFIX,
    HostView,
    Runbook,
    Step,
    clone_of,
    safe_name,
    test_iqn,
)

if TYPE_CHECKING:
    from esxdr.site.model import ProtectionGroup


# --------------------------------------------------------------------------- callouts
def with_callouts(book: Runbook, group: ProtectionGroup) -> Runbook:
    """Attach the group's pre/post callouts (site file ``callouts:``) to the steps they name.

    A callout keyed by a step id (``power:1:1``) applies to that step; keyed by a kind
    (``power``) to every step of that kind. ``runs`` limits it to some run kinds (a
    ``rescan`` callout for failover only, say). Several matching callouts run in the order
    the site file lists them. The commands are data in the step, so --dry-run shows them.
    """
    for step in book.steps:
        found: dict[str, list[dict[str, Any]]] = {"pre": [], "post": []}
        for c in getattr(group, "callouts", ()) or ():
            if c.runs and book.kind not in c.runs:
                continue
            if c.step != step.id and c.step != step.kind:
                continue
            for phase in ("pre", "post"):
                argv, plugin = getattr(c, phase), getattr(c, f"{phase}_plugin", None)
                spec: dict[str, Any] | None = None
                if argv:
                    spec = {"argv": list(argv)}
                elif plugin:
                    spec = {"plugin": plugin[0], "args": dict(plugin[1])}
                if spec:
                    found[phase].append({**spec, "timeout": c.timeout_seconds, "key": c.step, "line": c.line})
        if found["pre"] or found["post"]:
            step.params["callouts"] = found
    return book


# --------------------------------------------------------------------------- .vmx before registering
UUID_ACTIONS = {"moved": "keep", "copied": "create"}  # the .vmx's answer to msg.uuid.altered, in advance
_VMX_LINE = re.compile(r'^(\s*)([^=#\s]+)(\s*=\s*)"?(.*?)"?(\s*)$')


def rewrite_vmx(text: str, net_map: dict[str, str], uuid_action: str | None) -> tuple[str, list[str]]:
    """A .vmx with its NICs on the mapped port groups (``ethernetN.networkName``) and
    ``uuid.action`` set (``keep``: I moved it, ``create``: I copied it), so a real ESXi host
    registers and boots it without a ReconfigVM_Task or the msg.uuid.altered question.
    Other lines are kept byte for byte. Returns (text, changes described)."""
    lines = text.splitlines(keepends=True)
    changes: list[str] = []
    seen_action = False
    for i, line in enumerate(lines):
        body = line.rstrip("\r\n")
        m = _VMX_LINE.match(body)
        if not m:
            continue
        key = m.group(2).lower()
        value = m.group(4)
        eol = line[len(body):]
        if key.startswith("ethernet") and key.endswith(".networkname"):
            target = net_map.get(value)
            if target and target != value and '"' not in target:
                lines[i] = f'{m.group(1)}{m.group(2)} = "{target}"{eol}'
                changes.append(f"{m.group(2).split('.')[0]} {value} → {target}")
        elif key == "uuid.action" and uuid_action:
            seen_action = True
            if value != uuid_action:
                lines[i] = f'{m.group(1)}{m.group(2)} = "{uuid_action}"{eol}'
                changes.append(f"uuid.action = {uuid_action}")
    if uuid_action and not seen_action:
        nl = "\r\n" if text.endswith("\r\n") else "\n"
        if lines and not lines[-1].endswith(("\n", "\r")):
            lines[-1] += nl
        lines.append(f'uuid.action = "{uuid_action}"{nl}')
        changes.append(f"uuid.action = {uuid_action}")
    return "".join(lines), changes


# --------------------------------------------------------------------------- power order
def power_waves(vms) -> list[tuple[int, int, list[str]]]:  # VmSpec list
    """(priority, wave, names): one parallel batch per priority group, split into waves only
    where ``depends_on`` names a VM of the same group (it must run first). A dependency on a
    later priority group, an unknown VM or a cycle is refused."""
    by_name = {v.name: v for v in vms}
    out: list[tuple[int, int, list[str]]] = []
    for prio in sorted({v.priority for v in vms}):
        members = [v for v in vms if v.priority == prio]
        names = {v.name for v in members}
        for v in members:
            for d in v.depends_on:
                if d not in by_name:
                    raise UsageError(f"VM {v.name} depends on {d}, which is not in the protection group")
                if by_name[d].priority > prio:
                    raise UsageError(f"VM {v.name} (priority {prio}) depends on {d} (priority {by_name[d].priority})",
                                     hint=f"give {d} priority {prio} or lower (1 boots first)")
        placed: set[str] = set()
        wave = 0
        remaining = [v for v in members]
        while remaining:
            ready = [v for v in remaining if all(d in placed or d not in names for d in v.depends_on)]
            if not ready:
                raise UsageError("VMs " + ", ".join(v.name for v in remaining) + f" of priority {prio} depend on "
                                 "each other in a cycle", hint="break the cycle in depends_on")
            wave += 1
            out.append((prio, wave, sorted(v.name for v in ready)))
            placed |= {v.name for v in ready}
            remaining = [v for v in remaining if v.name not in placed]
    return out


# --------------------------------------------------------------------------- LUNs
@dataclass(frozen=True)
class DrillLun:
    source_dataset: str
    dr_dataset: str
    clone: str
    naa: str  # what the clone is presented as
    production_naa: str
    path: str  # backing path of the clone's LUN
    datastore: str | None
    vmfs_uuid: str | None
    mountpoint: str | None = None  # where the dataset is mounted to serve a LUN file (None: a zvol)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def lu_dataset(lu: LogicalUnit, group: ProtectionGroup) -> str | None:
    """The production dataset backing an LU: the manifest says, else the site's NAA, else the path."""
    if lu.backing.dataset:
        return lu.backing.dataset
    for ds, spec in group.luns.items():
        if spec.naa and Naa.parse(spec.naa).hex == lu.naa.hex:
            return ds
    for ds in group.datasets:
        if f"/{ds}/" in lu.backing.path or lu.backing.path.endswith("/" + ds):
            return ds
    return None


def lu_relative_file(lu: LogicalUnit, dataset: str) -> str:
    """The LUN file's name inside its dataset (``lun.img``): a file LU lives on a ZFS filesystem.

    Refused unless it is one plain name: the DR path is ``<DR mount>/<name>``, and a ``..`` from a
    forged manifest would make tgt serve any file of the DR box (the manifest checks catch it
    first; this is the last line before a path is built)."""
    try:
        return relative_file(lu.backing.path, dataset)
    except ValueError as e:
        raise ManifestError(f"{lu.naa.esxi_name}: backing.path {e}",
                            hint="nothing was presented; see docs/target-manifest.md#untrusted-shipped-manifests"
                            ) from None


def mount_base(dr_mount_base: str | None, root: Any) -> str | None:
    """The DR root's mount place: the observed one while it has one, else where ZFS would put it."""
    own = root.mountpoint if root else None
    return own if own and own.startswith("/") else dr_mount_base


def drill_luns(group: ProtectionGroup, manifest: Manifest, dr_root_mountpoint: str | None, snapshot: str,
               new_naa: bool) -> list[DrillLun]:
    out = []
    specs = {Naa.parse(s.naa).hex: s for s in group.luns.values() if s.naa}
    for lu in manifest.logical_units:
        ds = lu_dataset(lu, group)
        if ds is None or ds not in group.datasets:
            continue
        dr_ds = group.dr_dataset(ds)
        clone = clone_of(group, dr_ds)
        mountpoint = ""
        if lu.backing.kind == "zvol":
            path = f"/dev/zvol/{clone}"
        else:
            if not dr_root_mountpoint or not dr_root_mountpoint.startswith("/"):
                raise UsageError(f"{group.dr_root} has mountpoint {dr_root_mountpoint or 'none'}; the drill's clones "
                                 "inherit theirs from it and must be mounted to serve LUN files",
                                 hint=f"zfs set mountpoint=/{group.dr_root} {group.dr_root}")
            rel_clone = clone[len(group.dr_root) + 1:]
            mountpoint = f"{dr_root_mountpoint.rstrip('/')}/{rel_clone}"
            path = f"{mountpoint}/{lu_relative_file(lu, ds)}"
        spec = specs.get(lu.naa.hex) or group.luns.get(ds)
        naa = rewrite.clone_naa(lu.naa, snapshot).hex if new_naa else lu.naa.hex
        out.append(DrillLun(source_dataset=ds, dr_dataset=dr_ds, clone=clone, naa=naa, production_naa=lu.naa.hex,
                            path=path, datastore=spec.datastore if spec else None,
                            vmfs_uuid=spec.vmfs_uuid if spec else None,
                            mountpoint=None if lu.backing.kind == "zvol" else mountpoint))
    return out


def admitted_initiators(initiator: str | list[str] | tuple[str, ...] | None, what: str, group_name: str) -> list[str]:
    """The initiators a DR presentation admits: never none, because tgt reads an empty ACL as
    "every initiator" (and other stacks similarly), and a DR LUN open to anyone on the SAN is a
    copy of production open to anyone."""
    out = [x for x in ([initiator] if isinstance(initiator, str) else list(initiator or ())) if x]
    if not out:
        raise UsageError(f"no initiator may log in to the {what} of {group_name}: the DR host's iSCSI initiator "
                         "name is unknown, and esxdr never presents LUNs to every initiator",
                         hint=f"name the DR ESXi host in the site file (protection_groups.{group_name}.vsphere_dr) "
                              "and prepare it with esxdr host apply (software iSCSI on); for a storage-only "
                              "presentation: esxdr target present-clone --allow-initiator IQN")
    return out


def only_admitted(m: Manifest, initiators: list[str], group: str) -> Manifest:
    """Every target of ``m`` admits exactly ``initiators`` (one group), whatever ``m`` said before."""
    m.initiator_groups = []
    for t in m.targets:
        t.acl = []
    for lu in m.logical_units:
        seen: list[View] = []
        for v in lu.views:
            if not any((w.lun, w.target) == (v.lun, v.target) for w in seen):
                seen.append(View(lun=v.lun, target=v.target))
        lu.views = seen
    m = rewrite.allow_initiators(m, initiators, group=group)
    for t in m.targets:
        t.acl = [group]
    return m


def drill_manifest(manifest: Manifest, luns: list[DrillLun], group_name: str, portal: str,
                   initiator: str | list[str] | None) -> Manifest:
    """Production's manifest turned into the drill's: clone backing files, the drill's own target
    IQNs on the DR portal, only the DR host's initiator admitted (an explicit ACL, never empty).
    Serials, vendor and product ids stay: the product id is part of the device id in the VMFS header."""
    admitted = admitted_initiators(initiator, "drill", group_name)
    by_naa = {d.production_naa: d for d in luns}
    m = copy.deepcopy(manifest)
    m.logical_units = [lu for lu in m.logical_units if lu.naa.hex in by_naa]
    iqn_map = {t.iqn: test_iqn(t.iqn, group_name) for t in m.targets}
    for lu in m.logical_units:
        d = by_naa[lu.naa.hex]
        lu.backing = Backing(kind="zvol" if d.path.startswith("/dev/zvol/") else "file", path=d.path,
                             dataset=d.clone)
        lu.naa = Naa(d.naa)
        lu.read_only = False  # the drill boots VMs: their disks must be writable (clones absorb the writes)
        lu.views = [View(lun=v.lun, target=iqn_map.get(v.target) if v.target else None) for v in lu.views] or \
            [View(lun=1, target=None)]
    used = {v.target for lu in m.logical_units for v in lu.views}
    m.targets = [Target(iqn=iqn_map[t.iqn], alias=f"esxdr drill {group_name}") for t in m.targets
                 if iqn_map[t.iqn] in used or None in used]
    if not m.targets:
        m.targets = [Target(iqn=test_iqn("iqn.2024-01.io.esxdr:drill", group_name), alias=f"esxdr drill {group_name}")]
    m = rewrite.set_portals(m, [Portal.parse(portal)])
    return only_admitted(m, admitted, f"{TEST_PREFIX}-{safe_name(group_name)}").validate()


# --------------------------------------------------------------------------- networks
def port_group_map(vms, which: str) -> dict[str, str]:
    """production port group -> its ``which`` ("test" or "failover") port group, one for all VMs."""
    mapping: dict[str, str] = {}
    for v in vms:
        for prod, nm in v.networks.items():
            to = getattr(nm, which)
            if mapping.get(prod, to) != to:
                raise UsageError(f"port group {prod} maps to two {which} port groups ({mapping[prod]}, {to})",
                                 hint=f"give every VM the same {which} mapping for one production port group")
            mapping[prod] = to
    return mapping


def shutdown_step(g: ProtectionGroup, where: str) -> Step:
    """Stop ``where``'s VMs of the group (guest shutdown, then power off) before the final snapshot."""
    names = [v.name for v in g.vms]
    shut = max((v.shutdown_timeout_seconds for v in g.vms), default=300)
    return Step("shutdown", "shutdown", f"shut down {len(names) or 'the'} {where} VM(s) on {g.vsphere_production} "
                                        f"(guest shutdown, power off after {shut}s)",
                "the final snapshot must hold what the guests wrote before they stopped",
                {"vms": names, "timeout": shut, "endpoint": g.vsphere_production})


def test_networks(vms, host: HostView | None, dr_network) -> tuple[dict[str, str], list[dict], list[str]]:
    """(production port group -> test port group, port groups to create, notes)."""
    mapping = port_group_map(vms, "test")
    create: list[dict] = []
    notes: list[str] = []
    if host is None:
        return mapping, create, notes
    if host.members:
        # A cluster: each host gets what it lacks, from its own dr_network entry (name -> HostNetwork).
        for m in host.members:
            nets = dr_network if isinstance(dr_network, dict) else {}
            _m, more, said = test_networks(vms, m, nets.get(m.name))
            create += [{**c, "host": m.name} for c in more]
            notes += [n for n in said if n not in notes]
        return mapping, create, notes
    wanted = sorted(set(mapping.values()))
    specs = dr_network.port_groups if dr_network is not None else {}
    for pg in wanted:
        spec = specs.get(pg)
        if pg in host.port_groups:
            vs, vlan = host.port_groups[pg]
            if spec is not None and not spec.isolated:
                notes.append(f"test port group {pg} is not marked isolated in the site file: drill VMs on it may "
                             "reach production")
            continue
        if spec is not None:
            if spec.vswitch not in host.vswitches:
                raise ConflictError(f"{host.name}: test port group {pg} belongs on {spec.vswitch}, which does not exist",
                                    hint=f"prepare the host first: esxdr host apply {host.name}")
            create.append({"name": pg, "vswitch": spec.vswitch, "vlan": spec.vlan, "create_vswitch": False,
                           "isolated": spec.isolated})
        else:
            create.append({"name": pg, "vswitch": DRILL_VSWITCH, "vlan": 0,
                           "create_vswitch": DRILL_VSWITCH not in host.vswitches
                           and not any(c["create_vswitch"] for c in create), "isolated": True})
    return mapping, create, notes


def power_steps(rb: Runbook, g: Any, *, answer: str) -> None:
    """One power-on step per priority group (and per dependency wave within it)."""
    for prio, wave, batch in power_waves(list(g.vms)):
        timeout = max((g.vm(n).boot_timeout_seconds for n in batch), default=300)
        label = f"priority {prio}" + (f" wave {wave}" if wave > 1 else "")
        rb.steps.append(Step(f"power:{prio}:{wave}", "power", f"{label}: power on {', '.join(batch)}, wait for heartbeats",
                             "one parallel batch per priority group" + (
                                 "; after the VMs they depend on" if wave > 1 else ""),
                             {"priority": prio, "wave": wave, "vms": batch, "timeout": timeout, "answer": answer}))

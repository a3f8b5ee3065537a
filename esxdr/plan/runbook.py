"""Recovery runbooks: observations in, ordered steps with reasons out. PURE (no pyVmomi, no I/O).

A runbook is the whole of a drill (``esxdr test start``), its cleanup, or a failover,
as data. Dry-run prints it; apply (:mod:`esxdr.recovery`) walks the very same list and
records every step in a journal, so a killed run resumes at the first step not done.

Step ids are stable across re-plans of the same drill (``clone:rp1/iscsi/lun0``,
``power:2:1``): the journal keys completed work by id, and re-planning after a crash
must produce the same ids for the same work.

The identity rule everything here serves: ESXi mounts a VMFS volume as-is only when the
LUN it sits on has the NAA (and product id) stored in the volume's LVM header. A drill
therefore presents each clone with the production NAA to a DR host that sees no other
LUN with that NAA; where it could (the replica is already presented, or the host has
another path), the clone gets a new NAA and the volume is resignatured instead.
"""

from __future__ import annotations

import copy
import re
import shlex
from dataclasses import dataclass, field
from typing import Any

from esxdr.errors import ConflictError, IdentityConflict, ManifestError, UsageError
from esxdr.model.manifest import Backing, LogicalUnit, Manifest, Naa, Portal, Target, View, relative_file
from esxdr.plan import rewrite

TEST_PREFIX = "esxdr-test"
DRILL_VSWITCH = "esxdr-test"  # a vSwitch without uplinks: nothing on it can reach any network
HOLD_PREFIX = "esxdr-test"


# --------------------------------------------------------------------------- value types
@dataclass(frozen=True)
class Step:
    id: str
    kind: str
    title: str
    reason: str
    params: dict[str, Any] = field(default_factory=dict, hash=False)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "title": self.title, "reason": self.reason,
                "params": self.params}


@dataclass
class Runbook:
    kind: str  # test-start | test-cleanup
    group: str
    steps: list[Step] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    snapshot: str | None = None
    snapshot_created: int | None = None  # epoch seconds (for the RPO)
    new_naa: bool = False
    consistency: str | None = None  # of the recovered snapshot

    @property
    def empty(self) -> bool:
        return not self.steps

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "group": self.group, "snapshot": self.snapshot,
                "snapshot_created": self.snapshot_created, "new_naa": self.new_naa,
                "steps": [s.to_dict() for s in self.steps], "notes": list(self.notes)}

    def render(self) -> str:
        if not self.steps:
            return f"{self.group}: nothing to do" + "".join(f"\nnote: {n}" for n in self.notes)
        lines = []
        for i, s in enumerate(self.steps, 1):
            lines.append(f"{i:3d}. {s.title}")
            lines.append(f"     because {s.reason}")
            for phase in ("pre", "post"):
                for c in (s.params.get("callouts") or {}).get(phase, ()):
                    lines.append(f"     {phase}-callout: {describe_callout(c)}"
                                 + (" (always, also when the step fails)" if phase == "post" else ""))
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


@dataclass(frozen=True)
class Point:
    """The snapshot a drill recovers: present on every DR dataset of the group."""

    name: str
    creation: int  # epoch seconds, as received (zfs keeps the production creation time)
    consistency: str | None = None  # crash | application | mixed, as replication recorded it on DR


@dataclass(frozen=True)
class HostView:
    """What the runbook needs to know of the DR ESXi host (filled from esxdr.model.host)."""

    name: str
    iqn: str | None = None  # software iSCSI initiator name; None: adapter off
    send_targets: tuple[str, ...] = ()  # "addr:port"
    port_groups: dict[str, tuple[str, int]] = field(default_factory=dict, hash=False)  # name -> (vswitch, vlan)
    vswitches: dict[str, tuple[str, ...]] = field(default_factory=dict, hash=False)  # name -> uplinks
    luns: dict[str, tuple[str, ...]] = field(default_factory=dict, hash=False)  # naa hex -> target IQNs
    datastores: dict[str, tuple[str | None, tuple[str, ...]]] = field(default_factory=dict, hash=False)
    # ^ name -> (vmfs uuid, extent naa hexes)
    vms: dict[str, tuple[str, str, str | None]] = field(default_factory=dict, hash=False)
    # ^ name -> (vmx path, power state, pending question id)
    members: tuple[HostView, ...] = ()  # a vCenter cluster: every host (the fields above are their union)

    @property
    def hosts(self) -> tuple[HostView, ...]:
        """The hosts acted on: the members of a cluster view, else this one host."""
        return self.members or (self,)

    @property
    def label(self) -> str:
        return ", ".join(h.name for h in self.hosts) if self.members else self.name


def cluster_view(name: str, members: list[HostView]) -> HostView:
    """One view of several hosts of a vCenter: LUNs, datastores and VMs are the union (a
    shared datastore is one object), port groups and vSwitches those on EVERY host (a VM may
    land on any of them); the per-host facts stay in ``members``."""
    luns: dict[str, tuple[str, ...]] = {}
    for m in members:
        for n, iqns in m.luns.items():
            luns[n] = tuple(dict.fromkeys(luns.get(n, ()) + tuple(iqns)))
    common = [m.port_groups for m in members]
    pgs = {k: v for k, v in (common[0] if common else {}).items() if all(k in c for c in common[1:])}
    vss = {k: v for k, v in (members[0].vswitches if members else {}).items()
           if all(k in m.vswitches for m in members[1:])}
    return HostView(name=name, iqn=members[0].iqn if members else None,
                    send_targets=tuple(st for st in (members[0].send_targets if members else ())
                                       if all(st in m.send_targets for m in members[1:])),
                    port_groups=pgs, vswitches=vss, luns=luns,
                    datastores={k: v for m in members for k, v in m.datastores.items()},
                    vms={k: v for m in members for k, v in m.vms.items()}, members=tuple(members))


def spread_vms(vms: list[tuple[str, int, str | None]], hosts: dict[str, tuple[set[str], int]]) -> dict[str, str]:
    """Where esxdr registers VMs on a cluster without DRS: VM name -> host.

    ``vms``: (name, priority, datastore of its .vmx) in any order; ``hosts``: host -> (datastores it
    mounts, VMs it runs already), in the order hosts are preferred on ties. Each VM goes to a host
    that mounts its datastore: the one with the fewest VMs of the same priority group placed so
    far (a priority batch boots spread over the cluster), then the fewest VMs in all, then the
    first in order. Deterministic: the same inputs give the same spread. A VM whose datastore no
    host mounts is refused by name."""
    order = {h: i for i, h in enumerate(hosts)}
    total = {h: load for h, (_ds, load) in hosts.items()}
    per_prio: dict[tuple[str, int], int] = {}
    out: dict[str, str] = {}
    for name, prio, ds in sorted(vms, key=lambda v: (v[1], v[0])):
        able = [h for h, (mounts, _load) in hosts.items() if ds is None or ds in mounts]
        if not able:
            raise ConflictError(f"VM {name}: no host of the cluster mounts datastore {ds}",
                                hint="rescan the hosts (esxdr host verify-storage) and run the same command again")
        best = min(able, key=lambda h: (per_prio.get((h, prio), 0), total[h], order[h]))
        out[name] = best
        total[best] += 1
        per_prio[(best, prio)] = per_prio.get((best, prio), 0) + 1
    return out


@dataclass(frozen=True)
class ServedLun:
    """One LU the DR target serves now (observed through tgtadm)."""

    naa: str
    target: str
    tid: int | None = None
    lun: int | None = None
    path: str = ""


# --------------------------------------------------------------------------- naming
def safe_name(text: str) -> str:
    """A group name as it may appear in IQNs and hold tags (lower-case a-z0-9 and '-')."""
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-") or "group"


def test_root(group) -> str:  # esxdr.site.model.ProtectionGroup
    """The container of a drill's clones; ``esxdr serve`` lets the DR account clone only below it."""
    return f"{group.dr_root}/{TEST_PREFIX}-{group.name}"


def clone_of(group, dr_dataset: str) -> str:
    rel = dr_dataset[len(group.dr_root) + 1:] if dr_dataset.startswith(group.dr_root + "/") else \
        dr_dataset.rsplit("/", 1)[-1]
    # Flat below the container: zfs clone does not create missing parents.
    return f"{test_root(group)}/{rel.replace('/', '--')}"


def test_iqn(prod_iqn: str, group_name: str) -> str:
    """The DR target a drill presents its clones on: production's IQN, marked as a drill's."""
    return f"{prod_iqn}.{TEST_PREFIX}-{safe_name(group_name)}"


def is_test_iqn(iqn: str, group_name: str) -> bool:
    return iqn.endswith(f".{TEST_PREFIX}-{safe_name(group_name)}")


def hold_tag(group_name: str) -> str:
    return f"{HOLD_PREFIX}-{safe_name(group_name)}"


# --------------------------------------------------------------------------- the point
def choose_point(dr_datasets: list[str], dr_obs: dict, point: str = "latest") -> Point:
    """The newest snapshot name present on every DR dataset (``latest``), or the one named."""
    missing = [d for d in dr_datasets if d not in dr_obs]
    if missing:
        raise UsageError(f"DR dataset(s) {', '.join(missing)} do not exist yet",
                         hint="replicate first: esxdr replicate GROUP")
    if not dr_datasets:
        raise UsageError("the protection group has no datasets")
    names = [{s.name: s for s in dr_obs[d].snapshots} for d in dr_datasets]
    common = set(names[0]).intersection(*names[1:])
    if point != "latest":
        name = point.split("@", 1)[-1]
        if name not in common:
            lacking = [d for d, n in zip(dr_datasets, names, strict=True) if name not in n]
            raise UsageError(f"snapshot {name} is not on {', '.join(lacking)}",
                             hint="choose one of: " + (", ".join(sorted(common)[-5:]) or "none (replicate first)"))
        s = names[0][name]
        return Point(name, max(n[name].creation for n in names) or s.creation, _level(names, name))
    if not common:
        raise UsageError(f"no snapshot is on all of {', '.join(dr_datasets)}",
                         hint="replicate first: esxdr replicate GROUP")
    # Newest by creation txg on the first dataset (txgs order snapshots of one dataset exactly).
    best = max(common, key=lambda n: (names[0][n].createtxg, names[0][n].creation))
    return Point(best, max(n[best].creation for n in names), _level(names, best))


def _level(names: list[dict], snapshot: str) -> str | None:
    """The consistency level recorded on any DR copy of a group snapshot (it is atomic across them)."""
    for by_name in names:
        level = by_name[snapshot].prop("esxdr:consistency") if hasattr(by_name[snapshot], "prop") else None
        if level:
            return level
    return None


# --------------------------------------------------------------------------- callouts
def describe_callout(spec: dict[str, Any]) -> str:
    """A step's callout as a plan, a log line and a report show it: the command, or plugin(args)."""
    if "argv" in spec:
        return shlex.join(spec["argv"])
    args = ", ".join(f"{k}={v}" for k, v in sorted((spec.get("args") or {}).items()))
    return f"{spec['plugin']}({args})"


def with_callouts(book: Runbook, group) -> Runbook:  # ProtectionGroup
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


def _lu_dataset(lu: LogicalUnit, group) -> str | None:
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


def _relative_file(lu: LogicalUnit, dataset: str) -> str:
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


def _mount_base(dr_mount_base: str | None, root: Any) -> str | None:
    """The DR root's mount place: the observed one while it has one, else where ZFS would put it."""
    own = root.mountpoint if root else None
    return own if own and own.startswith("/") else dr_mount_base


def drill_luns(group, manifest: Manifest, dr_root_mountpoint: str | None, snapshot: str,
               new_naa: bool) -> list[DrillLun]:
    out = []
    specs = {Naa.parse(s.naa).hex: s for s in group.luns.values() if s.naa}
    for lu in manifest.logical_units:
        ds = _lu_dataset(lu, group)
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
            path = f"{mountpoint}/{_relative_file(lu, ds)}"
        spec = specs.get(lu.naa.hex) or group.luns.get(ds)
        naa = rewrite.clone_naa(lu.naa, snapshot).hex if new_naa else lu.naa.hex
        out.append(DrillLun(source_dataset=ds, dr_dataset=dr_ds, clone=clone, naa=naa, production_naa=lu.naa.hex,
                            path=path, datastore=spec.datastore if spec else None,
                            vmfs_uuid=spec.vmfs_uuid if spec else None,
                            mountpoint=None if lu.backing.kind == "zvol" else mountpoint))
    return out


def _admitted(initiator: str | list[str] | tuple[str, ...] | None, what: str, group_name: str) -> list[str]:
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


def _only(m: Manifest, initiators: list[str], group: str) -> Manifest:
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
    admitted = _admitted(initiator, "drill", group_name)
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
    return _only(m, admitted, f"{TEST_PREFIX}-{safe_name(group_name)}").validate()


# --------------------------------------------------------------------------- networks
def test_networks(vms, host: HostView | None, dr_network) -> tuple[dict[str, str], list[dict], list[str]]:
    """(production port group -> test port group, port groups to create, notes)."""
    mapping: dict[str, str] = {}
    for v in vms:
        for prod, nm in v.networks.items():
            if mapping.get(prod, nm.test) != nm.test:
                raise UsageError(f"port group {prod} maps to two test port groups ({mapping[prod]}, {nm.test})",
                                 hint="give every VM the same test mapping for one production port group")
            mapping[prod] = nm.test
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
    luns = drill_luns(g, inp.manifest, _mount_base(inp.dr_mount_base, root), point.name, inp.new_naa)
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
        _check_hosts(host, inp.dr_portal, "; it would not find the drill's LUNs")
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
    from esxdr.model.manifest import manifest_to_dict

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
                         + _into(host),
                         "a drill VM runs beside its production original, so it gets a new BIOS UUID",
                         {"vms": names, "datastores": datastores, "answer": "copied", "map": mapping,
                          "vmx": {v.name: v.vmx for v in g.vms if getattr(v, "vmx", None)},
                          **_cluster_params(host, g)}))
    changed = {p: t for p, t in mapping.items() if p != t}
    rb.steps.append(Step("nics", "nics", "attach NICs to test port groups: " + (", ".join(
        f"{p} → {t}" for p, t in sorted(mapping.items())) or "no NICs mapped"),
        "drill VMs must only reach the isolated test networks" + ("" if changed else
                                                                   " (names unchanged: only checked)"),
        {"map": mapping, "vms": names}))
    _power_steps(rb, g, answer="copied")
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
        vms = {name: v for name, v in host.vms.items() if _vmx_datastore(v[0]) in ds_names}
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


def norm_vmx(path: str) -> str:
    """``[ds] dir/x.vmx``, however the host spelled it (``[ds]/dir/x.vmx`` from a datastore search)."""
    m = re.match(r"^\[([^\]]+)\]\s*/?(.*)$", path or "")
    return f"[{m.group(1)}] {m.group(2)}" if m else path


def _vmx_datastore(vmx_path: str) -> str | None:
    m = re.match(r"^\[([^\]]+)\]", vmx_path or "")
    return m.group(1) if m else None


# --------------------------------------------------------------------------- failover
# Failover brings the replicas THEMSELVES online on the DR side (no clones): they are
# rolled back to the recovered point (only with evidence), made writable and mounted,
# presented with the production NAAs and IQNs, and the VMs booted with "I moved it".
FAILOVER_MODES = ("planned", "disaster")
FAILOVER_ACL_GROUP = "esxdr-failover"


def reversed_group(g):  # ProtectionGroup -> ProtectionGroup
    """The group seen from the DR side: DR is the source, production the destination.

    Reprotect replicates with it (DR → production) and failback is a planned failover of it.
    The name stays (snapshot names, hold tags and retention prefixes carry on); the VMs'
    networks map back from the failover port groups to the production ones.
    """
    import dataclasses

    from esxdr.site.model import LunSpec, NetworkMap

    vms = tuple(dataclasses.replace(v, networks={nm.failover: NetworkMap(failover=prod, test=nm.test)
                                                 for prod, nm in v.networks.items()}) for v in g.vms)
    luns = {g.dr_dataset(ds): LunSpec(dataset=g.dr_dataset(ds), naa=s.naa, datastore=s.datastore,
                                      vmfs_uuid=s.vmfs_uuid, line=s.line) for ds, s in g.luns.items()}
    return dataclasses.replace(g, source=g.destination, destination=g.source, source_root=g.dr_root,
                               dr_root=g.source_root, datasets=g.dr_datasets, vsphere_production=g.vsphere_dr,
                               vsphere_dr=g.vsphere_production, vms=vms, luns=luns)


def failover_luns(group, manifest: Manifest, dr_obs: dict,
                  dr_mount_base: str | None = None) -> list[DrillLun]:
    """The group's LUs, backed by the DR datasets themselves (where they mount once promoted)."""
    out = []
    specs = {Naa.parse(s.naa).hex: s for s in group.luns.values() if s.naa}
    root = dr_obs.get(group.dr_root)
    for lu in manifest.logical_units:
        ds = _lu_dataset(lu, group)
        if ds is None or ds not in group.datasets:
            continue
        dr_ds = group.dr_dataset(ds)
        mp = None
        if lu.backing.kind == "zvol":
            path = f"/dev/zvol/{dr_ds}"
        else:
            mp = dr_obs[dr_ds].mountpoint if dr_ds in dr_obs else None
            if not mp or not mp.startswith("/"):
                rmp = _mount_base(dr_mount_base, root)
                if not rmp or not rmp.startswith("/"):
                    raise UsageError(f"{dr_ds} has mountpoint {mp or 'none'}; failover mounts it to serve its LUN "
                                     "file", hint=f"zfs set mountpoint=/{group.dr_root} {group.dr_root}")
                mp = f"{rmp.rstrip('/')}/{dr_ds[len(group.dr_root) + 1:]}"
            path = f"{mp.rstrip('/')}/{_relative_file(lu, ds)}"
        spec = specs.get(lu.naa.hex) or group.luns.get(ds)
        out.append(DrillLun(source_dataset=ds, dr_dataset=dr_ds, clone=dr_ds, naa=lu.naa.hex,
                            production_naa=lu.naa.hex, path=path, datastore=spec.datastore if spec else None,
                            vmfs_uuid=spec.vmfs_uuid if spec else None, mountpoint=mp))
    return out


def failover_manifest(manifest: Manifest, luns: list[DrillLun], group_name: str, portal: str,
                      initiator: str | list[str] | None, *, keep_acl: bool = False) -> Manifest:
    """Production's manifest as the DR target serves it after failover: the same IQNs, NAAs,
    serials, vendor and product ids, backed by the DR datasets, on the DR portal, writable,
    only the DR host's initiator admitted (an explicit ACL, never empty). Production's own ACL is
    not carried to DR: DR decides who logs in there. ``keep_acl`` (failback, production presenting
    its own manifest again) keeps production's ACL and adds the hosts the group fails back to."""
    admitted = _admitted(initiator, "failback" if keep_acl else "failover", group_name)
    by_naa = {d.production_naa: d for d in luns}
    m = copy.deepcopy(manifest)
    m.logical_units = [lu for lu in m.logical_units if lu.naa.hex in by_naa]
    for lu in m.logical_units:
        d = by_naa[lu.naa.hex]
        lu.backing = Backing(kind="zvol" if d.path.startswith("/dev/zvol/") else "file", path=d.path,
                             dataset=d.dr_dataset)
        lu.read_only = False
        lu.views = list(lu.views) or [View(lun=1, target=None)]
    used = {v.target for lu in m.logical_units for v in lu.views}
    m.targets = [t for t in m.targets if t.iqn in used or None in used]
    if not m.targets:
        m.targets = [Target(iqn=f"iqn.2024-01.io.esxdr:{safe_name(group_name)}")]
    m = rewrite.set_portals(m, [Portal.parse(portal)])
    group = f"{FAILOVER_ACL_GROUP}-{safe_name(group_name)}"
    if keep_acl:
        m = rewrite.allow_initiators(m, admitted, group=group)
        for t in m.targets:
            if group not in t.acl:
                t.acl.append(group)
        # The hosts' own group first: the present step logs in as the first member it finds, and
        # that must be an initiator name, not one of production's networks.
        m.initiator_groups.sort(key=lambda g: g.name != group)
        return m.validate()
    return _only(m, admitted, group).validate()


def failover_networks(vms, host: HostView | None) -> dict[str, str]:
    """production port group -> failover port group; every failover port group must exist on the host
    (failover does not invent networks: the DR LAN is prepared by `esxdr host apply`)."""
    mapping: dict[str, str] = {}
    for v in vms:
        for prod, nm in v.networks.items():
            if mapping.get(prod, nm.failover) != nm.failover:
                raise UsageError(f"port group {prod} maps to two failover port groups ({mapping[prod]}, {nm.failover})",
                                 hint="give every VM the same failover mapping for one production port group")
            mapping[prod] = nm.failover
    for h in host.hosts if host is not None else ():
        missing = sorted({pg for pg in mapping.values() if pg not in h.port_groups})
        if missing:
            raise ConflictError(f"{h.name} has no port group {', '.join(missing)} (failover networks of the VMs)",
                                hint=f"add them to dr_network and run esxdr host apply {h.name}")
    return mapping


@dataclass(frozen=True)
class Promotion:
    """Per DR dataset: the snapshot it is rolled back to and what that discards."""

    dataset: str
    snapshot: str
    discards: tuple[str, ...] = ()
    held: tuple[str, ...] = ()  # of the discards: replication's hold is released first (--force)

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "snapshot": self.snapshot, "discards": list(self.discards),
                "held": list(self.held)}


def promotions(dr_datasets: list[str], dr_obs: dict, point: Point, chosen: bool, force: bool) -> list[Promotion]:
    """Evidence for the rollbacks. ``latest`` is the newest snapshot on every DR dataset: newer
    snapshots exist only on some datasets (a replication cut half-way) and are not a point of the
    whole group, so discarding them is safe. A point the user chose discards complete, newer
    points: only with --force."""
    out, lost = [], []
    for ds in dr_datasets:
        snaps = dr_obs[ds].snapshots
        at = next(s for s in snaps if s.name == point.name)
        newer = tuple(s.name for s in snaps if s.createtxg > at.createtxg)
        held = tuple(n for n in newer if next(s for s in snaps if s.name == n).held)
        if held and not force:
            raise ConflictError(f"{ds}: rolling back to @{point.name} would destroy held snapshot(s) "
                                + ", ".join("@" + n for n in held),
                                hint="replication holds the newest common snapshot: --force releases its hold; "
                                     "other holds (a drill? esxdr test cleanup) must be released first")
        out.append(Promotion(ds, point.name, newer, held))
        lost += [f"{ds}@{n}" for n in newer]
    if chosen and lost and not force:
        raise ConflictError(f"failover to @{point.name} would discard newer replicated snapshots: "
                            + ", ".join(lost[:6]) + (f" (+{len(lost) - 6} more)" if len(lost) > 6 else ""),
                            hint="pass --force to recover this older point anyway, or use --point latest")
    return out


@dataclass
class FailoverInputs:
    group: Any  # esxdr.site.model.ProtectionGroup (or its reversed view for failback)
    manifest: Manifest
    dr_obs: dict
    mode: str = "disaster"  # planned | disaster
    point: str = "latest"
    force: bool = False
    host: HostView | None = None  # the DR ESXi host
    served: list[ServedLun] = field(default_factory=list)  # the DR target, now
    dr_portal: str = ""
    production_portal: str | None = None  # the production target (split-brain guard)
    manifest_origin: str = ""
    kind: str = "failover"  # failover | failback
    dr_mount_base: str | None = None  # as DrillInputs.dr_mount_base
    initiators: tuple[str, ...] = ()  # as DrillInputs.initiators
    # Pull mode: DR reaches production through a send-only account, so a planned failover cannot
    # stop production from DR. Production hands off first (esxdr failover --planned --hand-off);
    # ``handoff`` is the final snapshot it published (None: not handed off).
    pull: bool = False
    handoff: str | None = None


def plan_failover(inp: FailoverInputs) -> Runbook:
    return with_callouts(_plan_failover(inp), inp.group)


def _plan_failover(inp: FailoverInputs) -> Runbook:
    g = inp.group
    if inp.mode not in FAILOVER_MODES:
        raise UsageError(f"failover mode {inp.mode!r}: choose --planned or --disaster")
    planned = inp.mode == "planned"
    if planned and inp.point != "latest":
        raise UsageError("--point is for --disaster: a planned failover recovers the final snapshot it sends")
    if test_root(g) in inp.dr_obs:
        raise ConflictError(f"a drill of {g.name} is set up ({test_root(g)} exists); its clones and holds pin the "
                            "replicas", hint=f"esxdr test cleanup {g.name}")
    rb = Runbook(kind=inp.kind, group=g.name)
    rb.new_naa = False
    proms: list[Promotion] = []
    handed_off = planned and inp.pull
    if planned:
        missing = [d for d in g.dr_datasets if d not in inp.dr_obs]
        if missing:
            raise UsageError(f"DR dataset(s) {', '.join(missing)} do not exist yet",
                             hint="replicate first: esxdr replicate GROUP" + (" --pull" if inp.pull else ""))
        rb.snapshot = None  # named by the final replication
        if handed_off:
            if not inp.handoff and inp.kind == "failback":
                raise ConflictError(f"the DR box has not handed {g.name} back: production reaches {g.source} through "
                                    "its send-only account and cannot stop DR's VMs or remove its LUNs",
                                    hint=f"on the DR box first: esxdr failback {g.name} --planned --hand-off")
            if not inp.handoff:
                raise ConflictError(f"production has not handed {g.name} off: DR reaches {g.source} through its "
                                    "send-only account and cannot stop production's VMs or remove its LUNs",
                                    hint=f"on production first: esxdr failover {g.name} --planned --hand-off; "
                                         f"or, if production is gone: esxdr failover {g.name} --disaster")
            rb.snapshot = inp.handoff  # the final snapshot production took with its VMs stopped
    else:
        p = choose_point(list(g.dr_datasets), inp.dr_obs, inp.point)
        rb.snapshot, rb.snapshot_created, rb.consistency = p.name, p.creation, p.consistency
        proms = promotions(list(g.dr_datasets), inp.dr_obs, p, inp.point != "latest", inp.force)
    luns = failover_luns(g, inp.manifest, inp.dr_obs, inp.dr_mount_base)
    if not luns:
        raise UsageError(f"the target manifest ({inp.manifest_origin or 'manifest'}) presents none of "
                         f"{g.name}'s datasets", hint="pass the production manifest with --manifest FILE")
    host = inp.host
    iqns = {t.iqn for t in inp.manifest.targets}
    clashes = []
    for d in luns:
        for s in inp.served:
            if s.naa == d.naa and s.target not in iqns:
                clashes.append(f"naa.{d.naa} is already served by the DR target as {s.target} LUN {s.lun} ({s.path})")
        for h in host.hosts if host is not None else ():
            for iqn in h.luns.get(d.naa, ()):
                if iqn and iqn not in iqns:
                    clashes.append(f"{h.name} already sees naa.{d.naa} through {iqn}")
    if clashes:
        raise IdentityConflict("failover cannot present the production NAAs:\n  " + "\n  ".join(sorted(set(clashes))),
                               hint=f"a drill still presents them? esxdr test cleanup {g.name}")
    if host is not None:
        _check_hosts(host, inp.dr_portal, "")
    else:
        rb.notes.append(f"{g.name} names no vsphere_dr: only the storage part of the failover is planned")
    names = [v.name for v in g.vms]
    naas = sorted(d.naa for d in luns)
    guard = Step("guard", "guard",
                 f"split-brain guard: production target {inp.production_portal or '(none in the site file)'} must not "
                 f"serve {len(naas)} NAA(s)",
                 "two live copies of one LUN identity would let both sites write to 'the same' disk"
                 + ("; --force: a refusal is only reported" if inp.force else ""),
                 {"portal": inp.production_portal, "naas": naas, "force": inp.force,
                  "initiator": host.iqn if host else None})
    if handed_off:
        there, how = (("DR", "esxdr failback --planned --hand-off") if inp.kind == "failback" else
                      ("production", "esxdr failover --planned --hand-off"))
        rb.steps.append(Step("replicate", "replicate",
                             f"pull {there}'s hand-off snapshot @{inp.handoff} ({g.source} → {g.destination})",
                             f"{there} stopped its VMs, took this final snapshot and removed its LUNs ({how} "
                             "there); the point recovered is this snapshot",
                             {"pull": True, "handoff": inp.handoff}))
        rb.steps.append(Step("stop-replication", "stop-replication", f"stop replication of {g.name}",
                             "from now on the DR datasets are written; a scheduled pull must not overwrite them",
                             {}))
        rb.steps.append(guard)
    elif planned:
        shut = max((v.shutdown_timeout_seconds for v in g.vms), default=300)
        rb.steps.append(Step("shutdown", "shutdown",
                             f"shut down {len(names) or 'the'} production VM(s) on {g.vsphere_production} "
                             f"(guest shutdown, power off after {shut}s)",
                             "the final snapshot must hold what the guests wrote before they stopped",
                             {"vms": names, "timeout": shut, "endpoint": g.vsphere_production}))
        rb.steps.append(Step("replicate", "replicate", f"final replication of {g.name} ({g.source} → {g.destination})",
                             "the DR datasets get everything production wrote; the point recovered is this snapshot",
                             {}))
        rb.steps.append(Step("stop-replication", "stop-replication", f"stop replication of {g.name}",
                             "from now on the DR datasets are written; a scheduled run must not overwrite them",
                             {}))
        rb.steps.append(Step("unpresent-production", "unpresent-production",
                             f"remove production's presentation of {len(naas)} LUN(s) from {g.source}",
                             "the VMs are down and their last writes are on DR; only one site may serve the NAAs",
                             {"naas": naas}))
        rb.steps.append(guard)
    else:
        rb.steps.append(guard)
        rb.steps.append(Step("stop-replication", "stop-replication", f"stop replication of {g.name}",
                             "from now on the DR datasets are written; a scheduled run must not overwrite them", {}))
    by_dr = {d.dr_dataset: d for d in luns}
    for ds in g.dr_datasets:
        pr = next((x for x in proms if x.dataset == ds), None)
        lun = by_dr.get(ds)
        at = f"@{pr.snapshot}" if pr else f"@{inp.handoff}" if handed_off else "the final snapshot"
        reason = ("the newest snapshot of the group on DR" if not planned and inp.point == "latest" else
                  "production's hand-off snapshot" if handed_off else
                  "the snapshot the final replication sent" if planned else "the point chosen (--point)")
        if pr and pr.discards:
            reason += "; discards partial " + ", ".join("@" + n for n in pr.discards)
        rb.steps.append(Step(f"promote:{ds}", "promote", f"promote {ds} at {at}: writable, mounted",
                             f"rolled back to {reason}, so every LUN shows one consistent point",
                             {"dataset": ds, "snapshot": pr.snapshot if pr else inp.handoff if handed_off else None,
                              "discards": list(pr.discards) if pr else [], "release": list(pr.held) if pr else [],
                              "mount": not (lun and lun.path.startswith("/dev/")), "path": lun.path if lun else None,
                              "mountpoint": lun.mountpoint if lun else None}))
    initiators = list(dict.fromkeys([*(h.iqn for h in host.hosts if h.iqn), *inp.initiators])) if host else \
        list(inp.initiators)
    initiator = ", ".join(initiators) or None
    m = failover_manifest(inp.manifest, luns, g.name, inp.dr_portal or "127.0.0.1:3260", initiators,
                          keep_acl=inp.kind == "failback")
    from esxdr.model.manifest import manifest_to_dict

    rb.steps.append(Step("present", "present",
                         f"present {len(luns)} LUN(s) (production NAAs) on {', '.join(t.iqn for t in m.targets)}",
                         "the volumes' LVM headers name these NAAs: the DR host mounts them as-is"
                         + (f"; only {initiator} may log in" if initiator else ""),
                         {"manifest": manifest_to_dict(m), "luns": [d.to_dict() for d in luns],
                          "iqns": [t.iqn for t in m.targets]}))
    if host is None:
        return rb
    mapping = failover_networks(g.vms, host)
    rb.steps.append(Step("rescan", "rescan", f"rescan {host.label}", "the host finds the LUNs and the VMFS volumes"
                         + ("; every host of the cluster, in parallel (a VM may run on any)" if host.members else ""),
                         {"hosts": [h.name for h in host.members]} if host.members else {}))
    expected = [{"naa": d.naa, "datastore": d.datastore, "vmfs_uuid": d.vmfs_uuid, "production_naa": d.naa,
                 "target": m.lu(d.naa).views[0].target if m.lu(d.naa) and m.lu(d.naa).views else None}  # type: ignore[union-attr]
                for d in luns]
    rb.steps.append(Step("verify", "verify", f"verify {len(luns)} VMFS datastore(s) on {host.label} mounted as-is",
                         "no resignature: the VMs' paths and UUIDs stay those of production",
                         {"expected": expected, "resolve": None,
                          **({"hosts": [h.name for h in host.members]} if host.members else {})}))
    datastores = sorted({d.datastore for d in luns if d.datastore})
    rb.steps.append(Step("register", "register",
                         f"register {len(names) or 'all'} VM(s) (answer: I moved it)" + _into(host),
                         "the production VMs are down: the DR VMs keep their BIOS UUIDs and MAC addresses",
                         {"vms": names, "datastores": datastores, "answer": "moved", "map": mapping,
                          "vmx": {v.name: v.vmx for v in g.vms if getattr(v, "vmx", None)},
                          **_cluster_params(host, g)}))
    rb.steps.append(Step("nics", "nics", "attach NICs to failover port groups: " + (", ".join(
        f"{p} → {t}" for p, t in sorted(mapping.items())) or "no NICs mapped"),
        "the VMs serve users from the DR LAN now", {"map": mapping, "vms": names}))
    _power_steps(rb, g, answer="moved")
    return rb



HANDOFF_PROP = "esxdr:handoff"  # on production's source root: the final snapshot of a hand-off


@dataclass
class HandOffInputs:
    group: Any  # esxdr.site.model.ProtectionGroup as the handing side sees it (failback: reversed_group)
    naas: list[str]  # the group's LUNs on the handing side's own target, observed now (hex)
    target: str | None = None  # that target's stack; None: no target in the site file
    reverse: bool = False  # the DR box hands back (failback in pull mode)


def plan_handoff(inp: HandOffInputs) -> Runbook:
    return with_callouts(_plan_handoff(inp), inp.group)


def _plan_handoff(inp: HandOffInputs) -> Runbook:
    """Production's half of a planned failover in pull mode (``esxdr failover --planned --hand-off``,
    on production). What DR does itself in push mode, production does here, because DR's send-only
    key cannot: stop the VMs, take the final snapshot, stop taking snapshots, remove production's
    presentation. Then it publishes the final snapshot's name on the source root; DR's planned
    failover pulls exactly that snapshot and refuses without it."""
    g, back = inp.group, inp.reverse
    rb = Runbook(kind="failback-hand-off" if back else "hand-off", group=g.name)
    here, there = ("DR", "production") if back else ("production", "DR")
    names = [v.name for v in g.vms]
    shut = max((v.shutdown_timeout_seconds for v in g.vms), default=300)
    rb.steps.append(Step("shutdown", "shutdown",
                         f"shut down {len(names) or 'the'} {here} VM(s) on {g.vsphere_production} "
                         f"(guest shutdown, power off after {shut}s)",
                         "the final snapshot must hold what the guests wrote before they stopped",
                         {"vms": names, "timeout": shut, "endpoint": g.vsphere_production}))
    rb.steps.append(Step("snapshot", "snapshot", f"final snapshot of {g.name} on {g.source} (atomic)"
                         + ("" if back else f", target manifest published on {g.source_root}"),
                         f"the VMs are down: this snapshot holds every write, and {there} recovers it with RPO 0",
                         {}))
    if not back:  # DR's replication has been stopped since the failover
        rb.steps.append(Step("stop-replication", "stop-replication", f"stop taking snapshots of {g.name} on {g.source}",
                             "the final snapshot stays the newest, and production's own retention cannot prune it "
                             "before DR pulled it", {}))
    rb.steps.append(Step("unpresent-production", "unpresent-production",
                         f"remove {here}'s presentation of {len(inp.naas)} LUN(s) from {g.source}",
                         f"only one site may serve the NAAs; {there}'s split-brain guard checks they are gone"
                         + ("" if inp.target else " (no target in the site file: nothing to remove)"),
                         {"naas": sorted(inp.naas)}))
    if back:
        rb.steps.append(Step("seal", "seal", f"seal {len(g.datasets)} DR dataset(s) as replicas again at the final "
                             f"snapshot; unregister the stopped VMs from {g.vsphere_production}",
                             "from here production is the live copy: DR keeps the final snapshot read-only and "
                             "unmounted, and its pull resumes by itself once production is home",
                             {"datasets": list(g.datasets)}))
    rb.steps.append(Step("publish-handoff", "publish-handoff",
                         f"publish the hand-off on {g.source_root} ({HANDOFF_PROP}=<final snapshot>)",
                         (f"production's failback (esxdr failback {g.name} --planned --pull, on production) pulls exactly "
                          "this snapshot, and refuses without it") if back else
                         (f"DR's planned failover (esxdr failover {g.name} --planned, on the DR box) pulls exactly "
                          "this snapshot, and refuses without it"), {}))
    return rb


def _power_steps(rb: Runbook, g: Any, *, answer: str) -> None:
    """One power-on step per priority group (and per dependency wave within it)."""
    for prio, wave, batch in power_waves(list(g.vms)):
        timeout = max((g.vm(n).boot_timeout_seconds for n in batch), default=300)
        label = f"priority {prio}" + (f" wave {wave}" if wave > 1 else "")
        rb.steps.append(Step(f"power:{prio}:{wave}", "power", f"{label}: power on {', '.join(batch)}, wait for heartbeats",
                             "one parallel batch per priority group" + (
                                 "; after the VMs they depend on" if wave > 1 else ""),
                             {"priority": prio, "wave": wave, "vms": batch, "timeout": timeout, "answer": answer}))

def _check_hosts(host: HostView, portal: str, why: str) -> None:
    for h in host.hosts:
        if h.iqn is None:
            raise ConflictError(f"{h.name}: the software iSCSI adapter is off",
                                hint=f"prepare the host first: esxdr host apply {h.name}")
        if portal and portal not in h.send_targets:
            raise ConflictError(f"{h.name} has no send target {portal} (the DR target's portal){why}",
                                hint=f"prepare the host first: esxdr host apply {h.name}")


def _into(host: HostView) -> str:
    return f" into the cluster of {host.label}" if host.members else ""


def _cluster_params(host: HostView, g) -> dict[str, Any]:
    """Register on a cluster: its hosts (spread order when DRS is off) and the VMs' priorities."""
    if not host.members:
        return {}
    return {"hosts": [h.name for h in host.members], "priorities": {v.name: v.priority for v in g.vms}}


def split_brain(seen: dict[str, str], naas: list[str]) -> list[str]:
    """Lines of evidence: which of ``naas`` the production target still serves, and where
    (``seen``: naa hex -> "portal target LUN n", from an iSCSI login)."""
    return [f"naa.{n} is still served by production at {seen[n]}" for n in sorted(naas) if n in seen]

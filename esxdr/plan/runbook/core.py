"""The runbook's values (Runbook, Step, Point, HostView, ServedLun), its names, the recovery
point's choice, and what the plans share about hosts."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from esxdr.errors import ConflictError, UsageError

if TYPE_CHECKING:
    from esxdr.site.model import ProtectionGroup

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


def test_root(group: ProtectionGroup) -> str:
    """The container of a drill's clones; ``esxdr serve`` lets the DR account clone only below it."""
    return f"{group.dr_root}/{TEST_PREFIX}-{group.name}"


def clone_of(group: ProtectionGroup, dr_dataset: str) -> str:
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

def norm_vmx(path: str) -> str:
    """``[ds] dir/x.vmx``, however the host spelled it (``[ds]/dir/x.vmx`` from a datastore search)."""
    m = re.match(r"^\[([^\]]+)\]\s*/?(.*)$", path or "")
    return f"[{m.group(1)}] {m.group(2)}" if m else path


def vmx_datastore(vmx_path: str) -> str | None:
    m = re.match(r"^\[([^\]]+)\]", vmx_path or "")
    return m.group(1) if m else None

def check_hosts(host: HostView, portal: str, why: str) -> None:
    for h in host.hosts:
        if h.iqn is None:
            raise ConflictError(f"{h.name}: the software iSCSI adapter is off",
                                hint=f"prepare the host first: esxdr host apply {h.name}")
        if portal and portal not in h.send_targets:
            raise ConflictError(f"{h.name} has no send target {portal} (the DR target's portal){why}",
                                hint=f"prepare the host first: esxdr host apply {h.name}")


def into_text(host: HostView) -> str:
    return f" into the cluster of {host.label}" if host.members else ""


def cluster_params(host: HostView, g: ProtectionGroup) -> dict[str, Any]:
    """Register on a cluster: its hosts (spread order when DRS is off) and the VMs' priorities."""
    if not host.members:
        return {}
    return {"hosts": [h.name for h in host.members], "priorities": {v.name: v.priority for v in g.vms}}


def split_brain(seen: dict[str, str], naas: list[str]) -> list[str]:
    """Lines of evidence: which of ``naas`` the production target still serves, and where
    (``seen``: naa hex -> "portal target LUN n", from an iSCSI login)."""
    return [f"naa.{n} is still served by production at {seen[n]}" for n in sorted(naas) if n in seen]


def describe_callout(spec: dict[str, Any]) -> str:
    """A step's callout as a plan, a log line and a report show it: the command, or plugin(args)."""
    if "argv" in spec:
        return shlex.join(spec["argv"])
    args = ", ".join(f"{k}={v}" for k, v in sorted((spec.get("args") or {}).items()))
    return f"{spec['plugin']}({args})"

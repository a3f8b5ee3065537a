"""`esxdr plan discover`: the protection group's mapping, found from production. PURE (no pyVmomi, no I/O).

Inputs: what production vSphere shows (VMs with their .vmx and disk datastores and the port
groups of their NICs; datastores with their VMFS UUID and extent NAAs) and the target manifest
(NAA ↔ LUN ↔ dataset). Output: per dataset its NAA, datastore and VMFS UUID, and the VMs whose
files all live on the group's datastores, with priority 3 and network mapping stubs — as data,
and as site-file YAML to paste under ``protection_groups.<group>``.

What the site file already says wins: a VM's priority, dependencies, networks and timeouts are
kept; only what is missing is filled in. VMs with files both on and off the group's datastores
cannot be recovered whole and are reported, not listed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from esxdr.model.manifest import Manifest
from esxdr.plan.runbook import lu_dataset

if TYPE_CHECKING:
    from esxdr.site.model import ProtectionGroup

DEFAULT_PRIORITY = 3


@dataclass(frozen=True)
class SeenDatastore:
    name: str
    vmfs_uuid: str | None
    extents: tuple[str, ...]  # naa hex, lower case, without "naa."


@dataclass(frozen=True)
class SeenVm:
    name: str
    vmx_path: str
    datastores: tuple[str, ...]  # every datastore holding one of its files (.vmx, disks)
    port_groups: tuple[str, ...]  # of its NICs, in device order
    power_state: str = ""


@dataclass
class Discovery:
    group: str
    datasets: list[dict[str, Any]] = field(default_factory=list)  # name (relative), naa, datastore, vmfs_uuid
    vms: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> priority, networks, ... (site form)
    notes: list[str] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"group": self.group, "datasets": self.datasets, "vms": self.vms, "notes": self.notes,
                "sources": self.sources}

    def to_yaml(self) -> str:
        """Site-file YAML for ``protection_groups.<group>`` (datasets and vms); stubs are marked."""
        out = [f"# esxdr plan discover {self.group}: " + ", ".join(f"{k}: {v}" for k, v in self.sources.items()),
               f"# Merge under protection_groups.{self.group} of the site file (datasets and vms replace "
               "those keys).",
               "# Check every line marked 'stub': network mappings must name DR port groups (failover) and",
               "# isolated ones (test) that dr_network defines; priorities 1-5 (1 boots first).",
               *[f"# note: {n}" for n in self.notes],
               "protection_groups:", f"  {_q(self.group)}:", "    datasets:"]
        for d in self.datasets:
            out.append(f"      - name: {_q(d['name'])}")
            for key in ("naa", "datastore", "vmfs_uuid"):
                if d.get(key):
                    out.append(f"        {key}: {_q(d[key])}")
        out.append("    vms:" + ("" if self.vms else " {}"))
        for name, spec in self.vms.items():
            out.append(f"      {_q(name)}:")
            out.append(f"        priority: {spec['priority']}" + ("  # stub: default" if spec.get("stub_priority")
                                                                    else ""))
            if spec.get("vmx"):
                out.append(f"        vmx: {_q(spec['vmx'])}")
            if spec.get("depends_on"):
                out.append("        depends_on: [" + ", ".join(_q(d) for d in spec["depends_on"]) + "]")
            for key in ("boot_timeout", "shutdown_timeout"):
                if spec.get(key):
                    out.append(f"        {key}: {spec[key]}")
            if spec["networks"]:
                out.append("        networks:")
                for pg, m in spec["networks"].items():
                    out.append(f"          {_q(pg)}: {{failover: {_q(m['failover'])}, test: {_q(m['test'])}}}"
                               + ("  # stub: same name at DR; set the DR and the isolated test port group"
                                  if m.get("stub") else ""))
        return "\n".join(out) + "\n"


_PLAIN = re.compile(r"^[A-Za-z0-9_./][A-Za-z0-9_./:@ -]*$")
_RESERVED = {"true", "false", "yes", "no", "on", "off", "null", "~", "y", "n"}


def _q(value: Any) -> str:
    """A YAML scalar: plain when that reads back as the same string, else double-quoted (JSON)."""
    text = str(value)
    if _PLAIN.match(text) and text.lower() not in _RESERVED and not text.endswith((" ", ":")) \
            and ": " not in text and " #" not in text and not re.fullmatch(r"[0-9.e+-]+", text):
        return text
    return json.dumps(text, ensure_ascii=False)


def datastore_of(path: str) -> str | None:
    m = re.match(r"^\[([^\]]+)\]", path or "")
    return m.group(1) if m else None


def discover(group: ProtectionGroup, manifest: Manifest, datastores: list[SeenDatastore], vms: list[SeenVm],
             manifest_origin: str = "", endpoint: str = "") -> Discovery:
    """The mapping datasets ↔ LUNs ↔ datastores ↔ VMs of ``group`` (a ProtectionGroup)."""

    d = Discovery(group=group.name, sources={"vSphere": endpoint or "production", "LUNs": manifest_origin})
    by_naa = {n: ds for ds in datastores for n in ds.extents}
    group_stores: set[str] = set()
    for source_ds in group.datasets:
        lus = [lu for lu in manifest.logical_units if lu_dataset(lu, group) == source_ds]
        rel = source_ds[len(group.source_root) + 1:] if source_ds.startswith(group.source_root + "/") else source_ds
        row: dict[str, Any] = {"name": rel}
        if not lus:
            d.notes.append(f"{source_ds}: no LU of the target manifest is backed by it (no NAA found)")
        else:
            if len(lus) > 1:
                d.notes.append(f"{source_ds}: backs {len(lus)} LUs; the first (naa.{lus[0].naa.hex}) is listed")
            naa = lus[0].naa.hex
            row["naa"] = f"naa.{naa}"
            store = by_naa.get(naa)
            if store is None:
                d.notes.append(f"{source_ds} (naa.{naa}): no datastore of production has it as an extent")
            else:
                row["datastore"] = store.name
                row["vmfs_uuid"] = store.vmfs_uuid
                group_stores.add(store.name)
                if len(store.extents) > 1:
                    others = [e for e in store.extents if e != naa]
                    d.notes.append(f"datastore {store.name} spans {len(store.extents)} extents (also "
                                   + ", ".join("naa." + e for e in others) + "): all must be in the group")
        d.datasets.append(row)
    known = {v.name: v for v in group.vms}
    for vm in sorted(vms, key=lambda v: v.name):
        home = datastore_of(vm.vmx_path)
        stores = set(vm.datastores) | ({home} if home else set())
        inside = stores & group_stores
        if not inside:
            continue
        outside = sorted(stores - group_stores)
        if outside:
            d.notes.append(f"VM {vm.name} has files on {', '.join(outside)} too (outside the group): not listed; "
                           "move them, or add those datastores' LUNs to the group")
            continue
        spec = known.get(vm.name)
        networks: dict[str, dict[str, Any]] = {}
        for pg in dict.fromkeys(vm.port_groups):
            if spec is not None and pg in spec.networks:
                networks[pg] = {"failover": spec.networks[pg].failover, "test": spec.networks[pg].test}
            else:
                networks[pg] = {"failover": pg, "test": pg, "stub": True}
        row = {"priority": spec.priority if spec else DEFAULT_PRIORITY, "networks": networks,
               "vmx": vm.vmx_path, "datastores": sorted(stores)}
        if spec is None:
            row["stub_priority"] = True
        elif spec.depends_on:
            row["depends_on"] = list(spec.depends_on)
        d.vms[vm.name] = row
    for name in sorted(set(known) - set(d.vms)):
        d.notes.append(f"VM {name} is in the site file but not on the group's datastores in production vSphere")
    return d

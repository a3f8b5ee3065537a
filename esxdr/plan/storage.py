"""PURE: whether a DR host sees every expected LUN by its NAA and mounts each VMFS volume as itself
(one host, or every host of a vCenter), and how an unresolved volume would be resolved."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from esxdr.model.host import HostState, ObservedLun, UnresolvedVolume
from esxdr.plan.host import Action, csv_list


# --------------------------------------------------------------------------- storage verification
@dataclass(frozen=True)
class ExpectedLun:
    """One LUN of the target manifest and the VMFS volume expected on it (when known)."""

    naa: str  # lower-case hex, no "naa."
    target: str | None = None  # the target IQN that presents it (manifest view)
    datastore: str | None = None  # expected datastore name (site LunSpec, else the VMFS label)
    vmfs_uuid: str | None = None
    label: str | None = None  # the label read from the LUN's header
    product_id: str | None = None

    @property
    def canonical(self) -> str:
        return "naa." + self.naa


@dataclass
class LunCheck:
    naa: str
    status: str  # ok | missing | unresolved | no-volume | not-mounted
    message: str
    hint: str = ""
    datastore: str | None = None
    vmfs_uuid: str | None = None
    paths: tuple[str, ...] = ()
    unresolved: UnresolvedVolume | None = None
    expected: ExpectedLun | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        return {"naa": "naa." + self.naa, "status": self.status, "message": self.message, "hint": self.hint,
                "datastore": self.datastore, "vmfs_uuid": self.vmfs_uuid, "paths": list(self.paths),
                "notes": list(self.notes),
                "unresolved": None if self.unresolved is None else {
                    "vmfs_uuid": self.unresolved.vmfs_uuid, "label": self.unresolved.label,
                    "extents": list(self.unresolved.extents), "reason": self.unresolved.reason}}


@dataclass
class StorageReport:
    host: str
    checks: list[LunCheck] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def missing(self) -> list[LunCheck]:
        return [c for c in self.checks if c.status == "missing"]

    @property
    def unresolved(self) -> list[LunCheck]:
        return [c for c in self.checks if c.status == "unresolved"]

    def to_dict(self) -> dict[str, Any]:
        return {"host": self.host, "ok": self.ok, "luns": [c.to_dict() for c in self.checks]}

    def render(self) -> str:
        lines = []
        for c in self.checks:
            mark = "ok " if c.ok else "!! "
            lines.append(f"{mark} naa.{c.naa}: {c.message}")
            for n in c.notes:
                lines.append(f"     note: {n}")
            if c.hint:
                lines.append(f"     hint: {c.hint}")
        n_ok = sum(c.ok for c in self.checks)
        lines.append(f"{self.host}: {n_ok}/{len(self.checks)} LUNs verified")
        return "\n".join(lines)


@dataclass
class HostsStorageReport:
    """verify-storage over several hosts of one endpoint: one report per host."""

    endpoint: str
    reports: list[StorageReport] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.reports)

    def to_dict(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "ok": self.ok, "hosts": [r.to_dict() for r in self.reports]}

    def render(self) -> str:
        lines = [f"== {r.host} ==\n{r.render()}" for r in self.reports]
        n_ok = sum(r.ok for r in self.reports)
        lines.append(f"{self.endpoint}: {n_ok}/{len(self.reports)} hosts verified")
        return "\n".join(lines)


def _missing_lun_diagnosis(exp: ExpectedLun, host: HostState) -> tuple[str, str]:
    """Why a LUN is not seen, from what the adapter shows: message tail and hint."""
    iscsi = host.iscsi
    if not host.software_iscsi_enabled or iscsi is None:
        return ("the software iSCSI adapter is off", "run `esxdr host apply` (iscsi: in the site file's dr_network)")
    if not iscsi.send_targets and not iscsi.static_targets:
        return (f"{iscsi.device} has no send or static targets",
                "add send_targets: [portal] under iscsi: in dr_network and run `esxdr host apply`")
    targets = {t[2] for t in iscsi.discovered} | {t[2] for t in iscsi.static_targets}
    lun_targets: dict[str, list[ObservedLun]] = {}
    for lun in host.luns.values():
        for t in lun.targets:
            lun_targets.setdefault(t, []).append(lun)
    portals = ", ".join(f"{a}:{p}" for a, p in iscsi.send_targets) or \
        ", ".join(f"{a}:{p}" for a, p, _ in iscsi.static_targets)
    if exp.target and exp.target in targets:
        others = [x.canonical_name for x in lun_targets.get(exp.target, [])]
        offered = f"offered {len(others)} LUN{'s' if len(others) != 1 else ''}" + \
            (f" ({', '.join(others)})" if others else "")
        return (f"target {exp.target} {offered} to initiator {iscsi.iqn}, not this one",
                f"present naa.{exp.naa} on {exp.target} and allow {iscsi.iqn} in the target's ACL "
                f"(esxdr target import --allow-initiator {iscsi.iqn}), then rerun")
    if not targets:
        return (f"no iSCSI session: discovery on {portals} returned no targets for initiator {iscsi.iqn}",
                "check that the portal address and port are right and reachable from the bound VMkernel NIC "
                "(VLAN id, IP subnet, iSCSI port binding), and that the target's ACL allows "
                f"{iscsi.iqn} (esxdr target import --allow-initiator {iscsi.iqn})")
    shown = ", ".join(sorted(targets))
    what = f"target {exp.target} is not among the discovered targets ({shown})" if exp.target else \
        f"none of the discovered targets ({shown}) offered it to initiator {iscsi.iqn}"
    return (what, f"check the target's LUN mapping and ACL (allow {iscsi.iqn}); "
                  "the LUN must keep its NAA (esxdr target import keeps identities)")


def check_storage(expected: list[ExpectedLun], host: HostState,
                  unresolved: list[UnresolvedVolume] | None = None) -> StorageReport:
    """Is each expected LUN seen (by NAA) and each expected VMFS volume mounted as itself?"""
    report = StorageReport(host=host.name)
    unresolved = unresolved or []
    for exp in expected:
        lun = host.luns.get(exp.canonical)
        paths = lun.paths if lun else ()
        # the volume: by UUID when known, else whatever datastore sits on this LUN
        ds = host.datastore_by_uuid(exp.vmfs_uuid) if exp.vmfs_uuid else None
        if ds is None and not exp.vmfs_uuid:
            ds = next((d for d in host.datastores.values() if exp.canonical in d.extents), None)
        resignatured = False
        if ds is None and exp.datastore and exp.datastore in host.datastores:
            # After --resolve resignature the volume has a new UUID and got its expected name back.
            ds = host.datastores[exp.datastore]
            resignatured = bool(exp.vmfs_uuid and ds.vmfs_uuid != exp.vmfs_uuid)
        unres = None
        if ds is None:
            unres = next((u for u in unresolved if exp.vmfs_uuid and u.vmfs_uuid == exp.vmfs_uuid), None) or \
                next((u for u in unresolved if exp.canonical in u.extents), None)
        name = exp.datastore or exp.label
        label = f" ({name})" if name else ""
        if ds is not None:
            check = LunCheck(exp.naa, "ok", f"datastore {ds.name} mounted, VMFS {ds.vmfs_uuid}",
                             datastore=ds.name, vmfs_uuid=ds.vmfs_uuid, paths=paths, expected=exp)
            if resignatured:
                check.notes.append(f"resignatured: VMFS UUID {ds.vmfs_uuid}, was {exp.vmfs_uuid}")
            if exp.canonical not in ds.extents:
                # Only a resolved copy (force-mount or resignature) mounts from another identity.
                check.notes.append(f"mounted from {csv_list(ds.extents)}, not naa.{exp.naa}: the LUN identity changed")
            if ds.force_mounted:
                check.notes.append("force-mounted (UUID kept, LUN identity differs): resignature when convenient")
            if exp.datastore and ds.name != exp.datastore:
                check.notes.append(f"named {ds.name}, expected {exp.datastore}")
            if lun is not None and lun.adapters and host.iscsi and host.iscsi.device not in lun.adapters:
                check.notes.append(f"reached through {csv_list(lun.adapters)}, not the software iSCSI adapter")
            if not ds.accessible and check.status == "ok":
                check.status = "not-mounted"
                check.message = f"datastore {ds.name} is inaccessible (all paths down)"
                check.hint = "check the iSCSI session to the target serving it"
            report.checks.append(check)
            continue
        if unres is not None:
            served = csv_list(unres.extents) or "?"
            if exp.canonical in unres.extents:
                why = (f"VMFS volume {unres.vmfs_uuid} '{unres.label}' on {served} is unresolved "
                       f"({unres.reason or 'snapshot'}): ESXi sees the NAA it expects, so the device id in the "
                       f"volume header differs in the product id (was the LUN re-created by another target stack?)")
            else:
                why = (f"VMFS volume {unres.vmfs_uuid} '{unres.label}' is unresolved ({unres.reason or 'snapshot'}): "
                       f"expected it on naa.{exp.naa} (the manifest), but the target serves it as {served}; "
                       "the volume header names the old device, so ESXi takes it for a copy")
            report.checks.append(LunCheck(
                exp.naa, "unresolved", why,
                hint=("rebuild the target with the original identity (esxdr target import), or choose: "
                      "--resolve keep-uuid (force-mount, UUID kept, nothing written) or --resolve resignature "
                      f"(new UUID, datastore renamed back to {name or unres.label}; VMs must be re-registered)"),
                vmfs_uuid=unres.vmfs_uuid, paths=paths, unresolved=unres, expected=exp))
            continue
        if lun is None:
            tail, hint = _missing_lun_diagnosis(exp, host)
            report.checks.append(LunCheck(exp.naa, "missing", f"not seen by {host.name}{label}: {tail}", hint=hint,
                                          expected=exp))
            continue
        report.checks.append(LunCheck(
            exp.naa, "no-volume",
            f"LUN seen{label} but no VMFS volume is mounted or unresolved on it"
            + (f" (expected VMFS {exp.vmfs_uuid})" if exp.vmfs_uuid else ""),
            hint="the LUN may be blank or its replica incomplete: check it with `esxdr vmfs inspect`",
            paths=paths, expected=exp))
    return report


def plan_resolution(report: StorageReport, mode: str) -> list[Action]:
    """Actions that resolve the unresolved volumes of ``report``: ``keep-uuid`` or ``resignature``."""
    if mode not in ("keep-uuid", "resignature"):
        raise ValueError(f"unknown resolution {mode!r}")
    acts = []
    for c in report.unresolved:
        u = c.unresolved
        assert u is not None
        want = (c.expected.datastore or c.expected.label) if c.expected else None
        want = want or u.label
        if mode == "keep-uuid":
            acts.append(Action("force_mount", u.vmfs_uuid, "--resolve keep-uuid: mount the copy as the original",
                               {"device_paths": u.device_paths, "extents": u.extents, "label": u.label}))
        else:
            acts.append(Action("resignature", u.vmfs_uuid,
                               "--resolve resignature: give the copy a new UUID and its expected name",
                               {"device_paths": u.device_paths, "extents": u.extents, "rename_to": want,
                                "label": u.label}))
    return acts

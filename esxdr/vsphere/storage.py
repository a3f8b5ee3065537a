"""Storage on a DR host: rescans, verify-storage, and resolving unresolved VMFS volumes.

``verify_storage`` proves that every LUN of the target manifest is seen by its NAA and
every expected VMFS volume is mounted as itself. It reads the host once, rescans only
when something is missing (a rescan is the slow, intrusive part), asks for unresolved
volumes only when a volume is not mounted, and resolves them only when told to
(``resolve="keep-uuid"`` or ``"resignature"``), never silently. Its request count does
not depend on the number of LUNs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyVmomi import vim

from esxdr import vmfs
from esxdr.errors import ConflictError, UsageError, VsphereError
from esxdr.model.host import HostState
from esxdr.plan.host import Action
from esxdr.plan.storage import ExpectedLun, StorageReport, check_storage, plan_resolution
from esxdr.vsphere import inventory
from esxdr.vsphere.session import Session
from esxdr.vsphere.tasks import wait_tasks

RESCAN_INTERVAL_S = 2.0
# How long verify-storage goes on rescanning while LUNs are missing (a target just imported, a
# send target whose discovery has not run yet). A rescan of a real host takes from seconds to
# minutes, so this allows a few; the first rescan always happens, whatever the deadline.
VERIFY_TIMEOUT_S = 300.0


def expected_luns(manifest: Any, lun_specs: list[Any] | None = None, *, read_headers: bool = True) -> list[ExpectedLun]:
    """What the host should see: each manifest LU by NAA, and the VMFS identity expected on it.

    The datastore name and UUID come from the site file's dataset entries (``naa``,
    ``datastore``, ``vmfs_uuid``) when given; otherwise from the VMFS header on the LUN's
    backing file, when esxdr runs where that file is readable (the DR storage server).
    """
    by_naa = {s.naa.removeprefix("naa."): s for s in (lun_specs or []) if getattr(s, "naa", None)}
    out = []
    for lu in manifest.logical_units:
        naa = lu.naa.hex
        spec = by_naa.get(naa)
        label = uuid = None
        if read_headers and lu.backing and lu.backing.path and Path(lu.backing.path).exists():
            try:

                h = vmfs.inspect(lu.backing.path)
                label, uuid = h.label, h.uuid
            except Exception:  # noqa: BLE001 - a blank or unreadable LUN just has no expectation
                pass
        target = lu.views[0].target if lu.views and lu.views[0].target else \
            (manifest.targets[0].iqn if len(manifest.targets) == 1 else None)
        out.append(ExpectedLun(
            naa=naa, target=target,
            datastore=(spec.datastore if spec and spec.datastore else None) or label,
            vmfs_uuid=(spec.vmfs_uuid if spec and spec.vmfs_uuid else None) or uuid,
            label=label, product_id=lu.product_id))
    return out


@dataclass
class VerifyResult:
    report: StorageReport
    resolved: list[Action] = field(default_factory=list)
    rescans: int = 0
    requests: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = self.report.to_dict()
        d["resolved"] = [a.to_dict() for a in self.resolved]
        d["rescans"] = self.rescans
        d["requests"] = self.requests
        return d

    def render(self) -> str:
        lines = [f"done: {a.describe()}" for a in self.resolved]
        lines.append(self.report.render())
        return "\n".join(lines)


def rescan(session: Session, host: HostState, vmfs: bool = True) -> None:
    """Rescan for LUNs, then (``vmfs``) for VMFS volumes on them.

    Every LUN esxdr presents reaches the host through its software iSCSI adapter, so that
    adapter alone is rescanned (``RescanHba``): SendTargets discovery, logins and the LUN scan
    happen there, while ``RescanAllHba`` would also probe every local, FC and other adapter,
    which on a real host can take minutes and disturbs paths esxdr has nothing to do with.
    A host without the software adapter (not set up by ``esxdr host apply``) gets RescanAllHba.
    """
    ss = session.ref("host.StorageSystem", host.refs["storageSystem"])
    adapter = host.iscsi.device if host.iscsi is not None and host.iscsi.device else None
    with session.errors(f"rescanning {'adapter ' + adapter if adapter else 'the HBAs'} of {host.name}"):
        if adapter:
            ss.RescanHba(adapter)
        else:
            ss.RescanAllHba()
        if vmfs:
            ss.RescanVmfs()


def _read(session: Session, host_name: str | None) -> HostState:
    return inventory.read_host(session, host_name, with_vms=False)


def verify_storage(session: Session, host_name: str | None, expected: list[ExpectedLun], *,
                   timeout: float = VERIFY_TIMEOUT_S, rescan_mode: str = "missing", resolve: str | None = None,
                   progress: Callable[[str], None] | None = None) -> VerifyResult:
    """Check (and with ``resolve``, fix) the host's view of the expected LUNs and volumes.

    ``rescan_mode``: ``missing`` rescans only while something is missing (up to ``timeout``),
    ``always`` rescans first, ``never`` only reads.
    """
    say = progress or (lambda _m: None)
    start = session.requests
    rescans = 0
    deadline = time.monotonic() + timeout

    def look() -> tuple[HostState, StorageReport]:
        h = _read(session, host_name)
        r = check_storage(expected, h)
        if not r.ok:
            # Only when something is not mounted: is it an unresolved copy (one more call)?
            r = check_storage(expected, h, inventory.unresolved_volumes(session, h))
        return h, r

    host, report = look()
    if rescan_mode == "always":
        rescan(session, host)
        rescans += 1
        host, report = look()
    # Rescan while LUNs are missing: a target that was just imported may need a moment.
    # Unresolved volumes do not fix themselves, so they do not keep the loop going.
    while rescan_mode != "never" and any(c.status in ("missing", "no-volume") for c in report.checks):
        if rescans and time.monotonic() >= deadline:
            break
        if rescans:
            time.sleep(min(RESCAN_INTERVAL_S, max(0.0, deadline - time.monotonic())))
        say(f"rescanning {host.name}: {len(report.missing)} LUN(s) not seen yet")
        rescan(session, host)
        rescans += 1
        host, report = look()

    done: list[Action] = []
    if report.unresolved and resolve:
        done = plan_resolution(report, resolve)
        apply_resolution(session, host, done, progress=say)
        host, report = look()
    return VerifyResult(report=report, resolved=done, rescans=rescans, requests=session.requests - start)


def raise_for(result: VerifyResult) -> None:
    """The error `esxdr host verify-storage` exits with when the report is not all ok."""
    r = result.report
    if r.ok:
        return
    bad = [c for c in r.checks if not c.ok]
    first = bad[0]
    if r.unresolved:
        raise ConflictError(f"{r.host}: {len(r.unresolved)} VMFS volume(s) unresolved; {first.message}",
                            hint=first.hint)
    raise VsphereError(f"{r.host}: {len(bad)} of {len(r.checks)} LUN(s) not verified; naa.{first.naa}: "
                       f"{first.message}", hint=first.hint)


def apply_resolution(session: Session, host: HostState, actions: list[Action], *,
                     progress: Callable[[str], None] | None = None) -> list[str]:
    """Force-mount (one call for all) or resignature (parallel tasks) and rename back."""
    say = progress or (lambda _m: None)
    ss = session.ref("host.StorageSystem", host.refs["storageSystem"])
    dss = session.ref("host.DatastoreSystem", host.refs["datastoreSystem"])
    names: list[str] = []
    force = [a for a in actions if a.kind == "force_mount"]
    resig = [a for a in actions if a.kind == "resignature"]
    if force:
        for a in force:
            say(a.describe())
        specs = [vim.host.UnresolvedVmfsResolutionSpec(extentDevicePath=list(a.params["device_paths"]),
                                                       uuidResolution="forceMount") for a in force]
        with session.errors(f"force-mounting {len(force)} VMFS volume(s) on {host.name}"):
            res = ss.ResolveMultipleUnresolvedVmfsVolumes(specs) or []
        for a, r in zip(force, res, strict=False):
            if r.fault is not None:
                from esxdr.vsphere.session import translate

                raise translate(r.fault, f"force-mounting VMFS volume {a.target}", endpoint=session.name)
            names.append(a.params.get("label") or a.target)
    if resig:
        tasks = []
        for a in resig:
            say(a.describe())
            spec = vim.host.UnresolvedVmfsResignatureSpec(extentDevicePath=list(a.params["device_paths"]))
            with session.errors(f"resignaturing VMFS volume {a.target} on {host.name}"):
                tasks.append(dss.ResignatureUnresolvedVmfsVolume_Task(spec))
        results = wait_tasks(session, tasks, what=f"resignaturing {len(tasks)} VMFS volume(s) on {host.name}")
        for a, r in zip(resig, results, strict=True):
            ds = r.result
            want = a.params.get("rename_to")
            if want:
                with session.errors(f"renaming the resignatured datastore of {a.target} to {want}",
                                    {"DuplicateName": f"another datastore on {host.name} is already named {want}"}):
                    ds.RenameDatastore(want)
                names.append(want)
    return names


def check_resolve_mode(mode: str | None) -> str | None:
    if mode not in (None, "keep-uuid", "resignature"):
        raise UsageError(f"--resolve {mode}: choose keep-uuid or resignature")
    return mode

"""`esxdr target verify`: check from the initiator side what a target really serves.

For each target of the manifest: one iSCSI session, REPORT LUNS, then per LUN
INQUIRY (standard, VPD 0x80, VPD 0x83) and READ CAPACITY(16), and a handful of
READ(10)s for the VMFS headers: O(LUNs) round trips in all. LUs are matched by
NAA, not by LUN number (tgt moves LUN 0), so a mangled NAA shows up as "expected
LU missing" next to "unexpected LU".

The VMFS prediction follows ESXi's rule: a volume whose LVM header names the
device it sits on mounts as-is; any other stored device id makes it an
unresolved snapshot that needs a resignature or force-mount. A volume spanning
several LUNs needs every extent: the headers of all LUs (of every target) are
grouped by LVM UUID, and a missing extent fails each extent found, naming the
missing device (docs/vmfs.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from esxdr import vmfs
from esxdr.errors import EsxdrError
from esxdr.model.manifest import LogicalUnit, Manifest
from esxdr.targets.probe import Chap, LunIdentity, Session
from esxdr.vmfs import VmfsHeader

MOUNT = "will mount as-is"
SNAPSHOT = "will show as snapshot"
NO_VMFS = "no VMFS volume"
INCOMPLETE = "will not mount: an extent is missing"


@dataclass
class LuCheck:
    naa: str
    target: str
    lun: int | None
    ok: bool
    problems: list[str] = field(default_factory=list)
    wire: LunIdentity | None = None
    vmfs: dict | None = None
    prediction: str | None = None
    notes: list[str] = field(default_factory=list)  # worth knowing, not a failure
    header: VmfsHeader | None = field(default=None, repr=False, compare=False)  # (``vmfs`` is the dict)

    def to_dict(self) -> dict:
        return {"naa": self.naa, "target": self.target, "lun": self.lun, "ok": self.ok,
                "problems": self.problems, "notes": self.notes, "prediction": self.prediction, "vmfs": self.vmfs,
                "wire": self.wire.to_dict() if self.wire else None}


@dataclass
class VerifyReport:
    portal: str
    checks: list[LuCheck] = field(default_factory=list)
    unexpected: list[dict] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    round_trips: int = 0
    sessions: int = 0

    @property
    def ok(self) -> bool:
        # An LU the manifest does not know is a failure too: on DR it is either a mangled identity
        # (the expected LU shows as missing beside it) or a stale LU that ESXi would also see.
        return not self.errors and not self.unexpected and all(c.ok for c in self.checks)

    def to_dict(self) -> dict:
        return {"portal": self.portal, "ok": self.ok, "round_trips": self.round_trips, "sessions": self.sessions,
                "checks": [c.to_dict() for c in self.checks], "unexpected": self.unexpected,
                "errors": self.errors}

    def text(self) -> str:
        lines = []
        for c in self.checks:
            mark = "ok  " if c.ok else "FAIL"
            lun = "-" if c.lun is None else str(c.lun)
            lines.append(f"{mark} naa.{c.naa}  {c.target} LUN {lun}  {c.prediction or ''}".rstrip())
            lines += [f"       {p}" for p in c.problems]
            lines += [f"       note: {n}" for n in c.notes]
        for u in self.unexpected:
            lines.append(f"FAIL unexpected LU {u['esxi_name']} on {u['target']} LUN {u['lun']} "
                         "(not in the manifest)")
        lines += [f"FAIL {e}" for e in self.errors]
        good = sum(c.ok for c in self.checks)
        extra = f", {len(self.unexpected)} not in it" if self.unexpected else ""
        lines.append(f"{good}/{len(self.checks)} LUs as in the manifest{extra}; {self.sessions} session(s), "
                     f"{self.round_trips} iSCSI round trips")
        return "\n".join(lines)


def compare(lu: LogicalUnit, wire: LunIdentity) -> list[str]:
    """Differences between what the manifest promises and what the target serves."""
    problems = []
    if wire.naa != lu.naa.hex:
        problems.append(f"NAA on the wire is {wire.esxi_name}, the manifest says {lu.naa.esxi_name}")
    if lu.serial and (wire.serial or "") != lu.serial:
        problems.append(f"serial {wire.serial!r} differs from the manifest's {lu.serial!r}")
    if lu.product_id and wire.product != lu.product_id.strip():
        problems.append(f"product id {wire.product!r} differs from the manifest's {lu.product_id!r} "
                        "(part of the VMFS device id)")
    if lu.vendor_id and wire.vendor != lu.vendor_id.strip():
        problems.append(f"vendor id {wire.vendor!r} differs from the manifest's {lu.vendor_id!r}")
    if lu.size_bytes and wire.size_bytes < lu.size_bytes:
        problems.append(f"size {wire.size_bytes} bytes is smaller than the manifest's {lu.size_bytes}: "
                        "VMFS would see a truncated volume")
    if lu.block_size and wire.block_size and wire.block_size != lu.block_size:
        problems.append(f"block size {wire.block_size} differs from the manifest's {lu.block_size}")
    return problems


def read_lun_header(session: Session, lun: int, wire: LunIdentity) -> tuple[VmfsHeader | None, str | None]:
    """The VMFS/LVM header of a LUN read over READ(10), or the reason it could not be read (None
    for a LUN that simply holds no VMFS)."""
    try:
        return vmfs.read_header(session.reader(lun, wire.block_size), wire.size_bytes, wire.block_size,
                                source=f"LUN {lun}"), None
    except EsxdrError as e:
        return None, (None if "no VMFS LVM header" in e.message else e.message)


def _predict_one(h: VmfsHeader | None, read_problem: str | None,
                 wire: LunIdentity) -> tuple[str, dict | None, str | None]:
    """(prediction, header dict, problem) for one LUN on its own."""
    if h is None:
        return NO_VMFS, None, read_problem
    if h.problem:  # an LVM head without its VMFS descriptor
        return NO_VMFS, h.to_dict(), h.problem
    if wire.naa and vmfs.matches(h, wire.naa, wire.product):
        return MOUNT, h.to_dict(), None
    what = f"VMFS volume {h.label!r} ({h.uuid})" if h.has_fs else f"LVM extent of volume {h.lvm.lvm_uuid}"
    presents = vmfs.show_device_id(vmfs.expected_device_id(wire.naa or "", wire.product))
    return SNAPSHOT, h.to_dict(), (f"{what} stores device id {h.disk_id.id!r}, the LUN presents {presents!r}: "
                                   "ESXi will list it as an unresolved snapshot")


def predict(session: Session, lun: int, wire: LunIdentity) -> tuple[str, dict | None, str | None]:
    """(prediction, header dict, problem) from the VMFS header read over READ(10)."""
    return _predict_one(*read_lun_header(session, lun, wire), wire)


def _spanned(checks: list[LuCheck]) -> None:
    """Volumes over several LUs: every extent must be served, and one snapshot extent makes the
    whole volume a snapshot. Runs over the checks of all targets (extents may sit on any)."""
    # One LU presented by several targets (or twice) is one extent, not two.
    found = list({c.naa: (c.naa, c.header) for c in checks if c.header is not None}.values())
    by_naa = {c.naa: c for c in checks if c.header is not None}
    for v in vmfs.group_volumes(found):
        if v.num_devices <= 1 and len(v.extents) == 1:
            continue
        missing = v.missing()
        snapshot = [naa for naa, _ in v.extents if by_naa[naa].prediction == SNAPSHOT]
        for naa, _ in v.extents:
            c = by_naa[naa]
            if c.vmfs is not None:
                c.vmfs["volume"] = {"lvm_uuid": v.lvm_uuid, "uuid": v.uuid, "label": v.label,
                                    "devices": v.num_devices, "ordinal": v.ordinal(naa), "missing": missing}
            if missing:
                c.prediction = INCOMPLETE
                c.problems.append(v.describe_missing())
            elif snapshot:
                c.prediction = SNAPSHOT
                if naa not in snapshot:
                    c.problems.append(f"extent {v.ordinal(naa)} of VMFS volume {v.label!r} ({v.uuid}): the volume "
                                      f"shows as a snapshot because of {', '.join('naa.' + n for n in snapshot)}")
            elif c.prediction == MOUNT:
                c.notes.append(f"extent {v.ordinal(naa)} of {v.num_devices} of VMFS volume {v.label!r} ({v.uuid})")
            c.ok = not c.problems


def verify(manifest: Manifest, address: str, port: int = 3260, *, initiator: str,
           secrets=None, chap: Chap | None = None, read_vmfs: bool = True,
           timeout: float = 10.0) -> VerifyReport:
    report = VerifyReport(portal=f"{address}:{port}")
    for t in manifest.targets:
        expected = manifest.luns_of(t.iqn)
        if not expected:
            continue
        creds = chap
        if creds is None and t.auth.mode != "none" and secrets is not None and t.auth.user:
            creds = Chap(t.auth.user, secrets.resolve(t.auth.secret_ref, f"{t.iqn} CHAP"),
                         t.auth.mutual_user,
                         secrets.resolve(t.auth.mutual_secret_ref, f"{t.iqn} mutual CHAP")
                         if t.auth.mode == "mutual-chap" else None)
        session = Session(address, port, target=t.iqn, initiator=initiator, chap=creds, timeout=timeout)
        try:
            session.login()
            report.sessions += 1
            luns = session.report_luns()
            seen: dict[str, tuple[int, LunIdentity]] = {}
            for n in luns:
                ident = session.identify(n)
                if ident.device_type != 0:  # tgt's controller LUN 0 and the like
                    continue
                if ident.naa:
                    seen[ident.naa] = (n, ident)
            for _, lu in expected:
                got = seen.pop(lu.naa.hex, None)
                if got is None:
                    report.checks.append(LuCheck(
                        lu.naa.hex, t.iqn, None, False,
                        [f"not served by {t.iqn} at {address}:{port} (it offers "
                         f"{', '.join('naa.' + k for k in seen) or 'no other LUs'})"]))
                    continue
                n, ident = got
                check = LuCheck(lu.naa.hex, t.iqn, n, True, compare(lu, ident), wire=ident)
                if read_vmfs and ident.size_bytes:
                    check.header, read_problem = read_lun_header(session, n, ident)
                    check.prediction, check.vmfs, problem = _predict_one(check.header, read_problem, ident)
                    if problem:
                        check.problems.append(problem)
                    if check.header is not None and vmfs.lun_differs(check.header, n):
                        check.notes.append(
                            f"the LVM header records LUN {check.header.disk_id.lun}; this LU is LUN {n} here. ESXi's "
                            "disk id includes the LUN number and a LUN presented under another number has been "
                            f"reported to show as a snapshot (docs/vmfs.md): present it as LUN "
                            f"{check.header.disk_id.lun} if ESXi lists its volume as unresolved")
                check.ok = not check.problems
                report.checks.append(check)
            for naa, (n, ident) in seen.items():
                report.unexpected.append({"target": t.iqn, "lun": n, "esxi_name": f"naa.{naa}",
                                          "product": ident.product, "serial": ident.serial})
        except EsxdrError as e:
            report.errors.append(f"{t.iqn}: {e.message}" + (f" ({e.hint})" if e.hint else ""))
            for _, lu in expected:
                if not any(c.naa == lu.naa.hex and c.target == t.iqn for c in report.checks):
                    report.checks.append(LuCheck(lu.naa.hex, t.iqn, None, False, ["target not reachable"]))
        finally:
            session.close()
            report.round_trips += session.round_trips
    if read_vmfs:
        _spanned(report.checks)
    return report

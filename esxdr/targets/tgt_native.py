"""tgt's own formats, read into the manifest: `tgtadm --op show` output and targets.conf, and the
NAA tgt derives from a LU's SCSI id (the backend is esxdr.targets.tgt)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from esxdr.errors import ManifestError
from esxdr.model.manifest import (
    Auth,
    Backing,
    InitiatorGroup,
    LogicalUnit,
    Manifest,
    Naa,
    Source,
    Target,
    View,
)

STACK = "tgt"
SCSI_SN_LEN = 36  # tgt truncates longer serials
NAME_ACL = re.compile(r"^(iqn\.|eui\.|naa\.)")


# --------------------------------------------------------------------------- native model
@dataclass
class TgtLu:
    lun: int
    scsi_id: str
    serial: str
    path: str
    block_size: int = 512
    size_mb: int = 0
    read_only: bool = False
    bs_type: str = "rdwr"
    device_type: str = "disk"


@dataclass
class TgtTarget:
    tid: int
    iqn: str
    luns: dict[int, TgtLu] = field(default_factory=dict)
    incoming: list[str] = field(default_factory=list)
    outgoing: list[str] = field(default_factory=list)
    acl: list[str] = field(default_factory=list)


def parse_show(text: str) -> list[TgtTarget]:
    """Parse `tgtadm --lld iscsi --op show --mode target`."""
    targets: list[TgtTarget] = []
    t: TgtTarget | None = None
    lu: TgtLu | None = None
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        m = re.match(r"^Target (\d+): (\S+)$", raw)
        if m:
            t = TgtTarget(int(m.group(1)), m.group(2))
            targets.append(t)
            section, lu = "", None
            continue
        if t is None or not line:
            continue
        if raw.startswith("    ") and not raw.startswith("     ") and line.endswith(":"):
            section = line[:-1]
            lu = None
            continue
        if section == "LUN information":
            m = re.match(r"^LUN: (\d+)$", line)
            if m:
                lu = TgtLu(int(m.group(1)), "", "", "")
                t.luns[lu.lun] = lu
                continue
            if lu is None:
                continue
            key, _, value = line.partition(":")
            value = value.strip()
            if key == "Type":
                lu.device_type = value
            elif key == "SCSI ID":
                lu.scsi_id = value
            elif key == "SCSI SN":
                lu.serial = value
            elif key == "Size":
                m = re.match(r"(\d+) MB, Block size: (\d+)", value)
                if m:
                    lu.size_mb, lu.block_size = int(m.group(1)), int(m.group(2))
            elif key == "Readonly":
                lu.read_only = value == "Yes"
            elif key == "Backing store type":
                lu.bs_type = value
            elif key == "Backing store path":
                lu.path = "" if value == "None" else value
        elif section == "Account information":
            if line.endswith(" (outgoing)"):
                t.outgoing.append(line[: -len(" (outgoing)")])
            else:
                t.incoming.append(line)
        elif section == "ACL information":
            t.acl.append(line)
    return targets


def parse_conf(text: str, origin: str = "targets.conf") -> tuple[list[TgtTarget], dict[str, dict[str, str]]]:
    """Parse tgt-admin's targets.conf. Returns targets and per-LU extra params (vendor/product/rev).

    Passwords in incominguser/outgoinguser are dropped: manifests keep references only.
    """
    targets: list[TgtTarget] = []
    extras: dict[str, dict[str, str]] = {}
    t: TgtTarget | None = None
    t_defaults: dict[str, str] = {}
    pending: list[tuple[str, dict[str, str]]] = []  # (path, params) for the current target
    block: tuple[str, dict[str, str]] | None = None
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.match(r"^<target\s+(\S+)\s*>$", line)
        if m:
            if t is not None:
                raise ManifestError(f"{origin}:{n}: <target> inside <target {t.iqn}>")
            t = TgtTarget(len(targets) + 1, m.group(1))
            t_defaults, pending = {}, []
            continue
        if line == "</target>":
            if t is None or block is not None:
                raise ManifestError(f"{origin}:{n}: unbalanced </target>")
            next_lun = 1
            used = {int(p["lun"]) for _, p in pending if "lun" in p}
            for path, params in pending:
                merged = {**t_defaults, **params}
                if "lun" in merged and "lun" in params:
                    lun = int(merged["lun"])
                else:
                    while next_lun in used:
                        next_lun += 1
                    lun = next_lun
                    used.add(lun)
                lu = TgtLu(lun, merged.get("scsi_id", ""), merged.get("scsi_sn", ""), path,
                           block_size=int(merged.get("block-size", "512")),
                           read_only=merged.get("readonly", "0") in ("1", "yes", "on"),
                           bs_type=merged.get("bs-type", "rdwr"))
                if lun in t.luns:
                    raise ManifestError(f"{origin}: target {t.iqn}: duplicate LUN {lun}")
                t.luns[lun] = lu
                extras[f"{t.iqn}/{lun}"] = {k: merged[k] for k in ("vendor_id", "product_id", "product_rev")
                                            if k in merged}
            targets.append(t)
            t = None
            continue
        if t is None:
            if line.split()[0] in ("default-driver", "include", "ignore-errors", "control-port", "iSNSServerIP",
                                   "iSNSServerPort", "iSNSAccessControl", "iSNS"):
                continue
            raise ManifestError(f"{origin}:{n}: {line.split()[0]!r} outside a <target> block")
        m = re.match(r"^<(backing-store|direct-store)\s+(\S+)\s*>$", line)
        if m:
            block = (m.group(2), {})
            continue
        if re.match(r"^</(backing-store|direct-store)>$", line):
            if block is None:
                raise ManifestError(f"{origin}:{n}: unbalanced {line}")
            pending.append(block)
            block = None
            continue
        key, _, value = line.partition(" ")
        value = value.strip()
        if block is not None:
            block[1][key] = value
        elif key in ("backing-store", "direct-store"):
            pending.append((value, {}))
        elif key == "initiator-address" or key == "initiator-name":
            t.acl.extend(value.replace(",", " ").split())
        elif key == "incominguser":
            t.incoming.append(value.split()[0])
        elif key == "outgoinguser":
            t.outgoing.append(value.split()[0])
        else:
            t_defaults[key] = value
    if t is not None:
        raise ManifestError(f"{origin}: <target {t.iqn}> is not closed")
    return targets, extras


def to_manifest(targets: list[TgtTarget], sizes: dict[str, int | None] | None = None,
                extras: dict[str, dict[str, str]] | None = None, host: str | None = None) -> Manifest:
    """Turn tgt's view into a manifest. LUs are keyed by NAA: one LU on two targets stays one LU."""
    m = Manifest(source=Source(stack=STACK, host=host))
    by_naa: dict[str, LogicalUnit] = {}
    for t in targets:
        target = Target(iqn=t.iqn, name=str(t.tid))
        if t.incoming:
            mutual = t.outgoing[0] if t.outgoing else None
            target.auth = Auth(mode="mutual-chap" if mutual else "chap", user=t.incoming[0],
                               secret_ref=f"secrets:{t.incoming[0]}", mutual_user=mutual,
                               mutual_secret_ref=f"secrets:{mutual}" if mutual else None)
            if len(t.incoming) > 1:
                m.source.notes.append(f"{t.iqn}: only the first of {len(t.incoming)} CHAP users is kept")
        if t.acl and "ALL" not in t.acl:
            g = InitiatorGroup(name=f"tgt-{t.tid}-acl", members=list(t.acl))
            m.initiator_groups.append(g)
            target.acl = [g.name]
        m.targets.append(target)
        for lun, lu in sorted(t.luns.items()):
            if lu.device_type == "controller" or not lu.path:
                continue
            try:
                naa = naa_from_scsi_id(lu.scsi_id, t.tid, lun)
            except ValueError as e:
                raise ManifestError(f"tgt target {t.iqn} LUN {lun}: {e}") from e
            ex = (extras or {}).get(f"{t.iqn}/{lun}", {})
            if naa.hex in by_naa:
                by_naa[naa.hex].views.append(View(lun=lun, target=t.iqn))
                continue
            size = (sizes or {}).get(lu.path) or lu.size_mb * 1000 * 1000
            size -= size % lu.block_size
            unit = LogicalUnit(naa=naa, backing=Backing(kind=backing_kind(lu.path), path=lu.path),
                               size_bytes=size, block_size=lu.block_size,
                               serial=lu.serial or None, vendor_id=ex.get("vendor_id"),
                               product_id=ex.get("product_id"), revision=ex.get("product_rev"),
                               read_only=lu.read_only, views=[View(lun=lun, target=t.iqn)])
            by_naa[naa.hex] = unit
            m.logical_units.append(unit)
    return m


def backing_kind(path: str) -> str:
    if path.startswith("/dev/zvol/"):
        return "zvol"
    return "block" if path.startswith("/dev/") else "file"


def naa_from_scsi_id(scsi_id: str, tid: int, lun: int) -> Naa:
    """The NAA-6 designator tgt derives from scsi_id (usr/spc.c), as measured on tgt 1.0.85:
    the last 32 characters of scsi_id, right-aligned and zero-filled on the left, each
    non-hex character read as 0, the first nibble forced to 6. An unset scsi_id is
    "IET" + 5 spaces + tid and LUN in hex (tgt's default)."""
    sid = scsi_id or f"IET     {tid:04x}{lun:04x}"
    digits = "".join(ch.lower() if ch in "0123456789abcdefABCDEF" else "0" for ch in sid[-32:])
    return Naa("6" + digits.rjust(32, "0")[1:])

"""Reading the VMFS headers of a LUN: the LVM device header with its device id, the FS3
descriptor, spanned extents grouped into volumes, and the check that decides "mounts as-is".
The layout is the package's docstring and docs/vmfs.md."""

from __future__ import annotations

import os
import string
import struct
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from esxdr.errors import UsageError

LVM_MAGIC = 0xC001D00D
FS3_MAGIC = 0x2FABF15E
FS3_MAGIC_L = 0x2FABF15F  # VMFS-L (ESXi's local system volumes): same descriptor
LVM_OFFSET = 0x100000
FS3_OFFSET = 0x200000
DEFAULT_DATA_OFFSET = 0x1100000
GPT_PART_LBA = 2048
PE_SIZE = 256 << 20  # LVM physical extent ("segment" in vmfs-tools)
FILE_BLOCK = 1 << 20  # the file block size the lab writes
FS3_MAJOR = {14: "VMFS5", 24: "VMFS6"}
VMFS_MAJOR_FOR = {5: 14, 6: 24}
# VMFS partition type AA31E02A-400F-11DB-9590-000C2911D1B8.
VMFS_TYPE_GUID = uuidlib.UUID("AA31E02A-400F-11DB-9590-000C2911D1B8")
# SCSI_DiskId.type: the VPD 0x83 designator type of the id (1 T10 vendor id, as in the real
# images of ATA disks; 3 NAA).
DISKID_TYPE_T10 = 1
DISKID_TYPE_NAA = 3
PRODUCT_CHARS = 6  # characters of the product id (model) after the device's own id
MAX_EXTENTS = 32  # FS_PLIST_DEF_MAX_PARTITIONS: SD table entries

ReadAt = Callable[[int, int], bytes]

# LVM metadata, relative to P + LVM_OFFSET
VT_ENTRY = 0x200
SD_ENTRY = 0x100
PE_ENTRY = 0x80


def lvm_layout(major: int, md_alignment: int) -> dict[str, int]:
    """Offsets of the volume table, SD table, PE bitmap and PE table (LVM_DeviceHeader)."""
    if major >= 6:
        md, volumes, bitmap = md_alignment or 0x1000, 1, max(md_alignment or 0x1000, 0x400)
    else:
        md, volumes, bitmap = 0x200, 512, 0x400
    reserved = (1024 - volumes) * 512 - SD_ENTRY * MAX_EXTENTS
    sd = md + volumes * VT_ENTRY + reserved
    return {"vt": md, "sd": sd, "pe_bitmap": sd + SD_ENTRY * MAX_EXTENTS,
            "pe_table": sd + SD_ENTRY * MAX_EXTENTS + bitmap}


# --------------------------------------------------------------------------- values
@dataclass
class DiskId:
    """SCSI_DiskId: the device an LVM extent was created on, as ESXi identified it."""

    type: int
    length: int
    lun: int
    devtype: int
    scsi_level: int
    vendor: str
    model: str
    revision: str
    raw: bytes  # id[:length]

    @property
    def naa(self) -> str | None:
        """The NAA (lower-case hex) when the id holds one, binary or as hex text."""
        return _split_naa(self.raw, self.type)[0]

    @property
    def suffix(self) -> str:
        """What follows the device's own id: the first characters of the product id."""
        naa, rest, _ = _split_naa(self.raw, self.type)
        return (rest if naa else b"").decode("ascii", "replace")

    @property
    def encoding(self) -> str:
        return _split_naa(self.raw, self.type)[2]

    @property
    def id(self) -> str:
        """Printable form: "naa.<hex>+<suffix>" for an NAA id, else the text."""
        naa, rest, _ = _split_naa(self.raw, self.type)
        if naa:
            return f"naa.{naa}" + (f"+{rest.decode('ascii', 'replace')}" if rest else "")
        return _printable(self.raw)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "length": self.length, "lun": self.lun, "devtype": self.devtype,
                "scsi_level": self.scsi_level, "vendor": self.vendor, "model": self.model,
                "revision": self.revision, "id": self.id, "raw": self.raw.hex(), "naa": self.naa,
                "suffix": self.suffix, "encoding": self.encoding}


@dataclass
class LvmInfo:
    """What one device's LVM metadata says about itself and the logical volume."""

    major: int
    minor: int
    disk_id: DiskId
    device_bytes: int
    data_offset: int
    device_uuid: str
    lvm_uuid: str | None  # the logical volume (shared by its extents); None without a volume table
    volume_name: str
    volume_bytes: int
    first_pe: int
    last_pe: int
    num_devices: int
    device_names: list[str] = field(default_factory=list)  # the SD table: head extent only
    pe_map: list[tuple[int, int, int]] = field(default_factory=list)  # (logical, physical, length)

    @property
    def head(self) -> bool:
        """The head extent holds logical offset 0, hence the FS3 descriptor."""
        return self.first_pe == 0 or any(lo == 0 for lo, _, _ in self.pe_map)

    def to_dict(self) -> dict[str, Any]:
        return {"major": self.major, "minor": self.minor, "device_bytes": self.device_bytes,
                "data_offset": self.data_offset, "device_uuid": self.device_uuid, "lvm_uuid": self.lvm_uuid,
                "volume_name": self.volume_name, "volume_bytes": self.volume_bytes,
                "first_pe": self.first_pe, "last_pe": self.last_pe, "num_devices": self.num_devices,
                "device_names": self.device_names, "head": self.head,
                "pe_map": [{"logical": lo, "physical": ph, "length": n} for lo, ph, n in self.pe_map]}


@dataclass
class VmfsHeader:
    partition_offset: int
    has_gpt: bool
    lvm: LvmInfo
    fs3_offset: int | None  # where the FS3 descriptor was found (head) or looked for
    fs_major: int | None = None
    uuid: str | None = None  # the VMFS UUID (FS3): what ESXi shows as the datastore's UUID
    label: str | None = None
    fs_lvm_uuid: str | None = None  # the LVM UUID the FS3 descriptor names
    block_size: int | None = None
    problem: str | None = None  # head extent without a readable FS3 descriptor
    local: bool = False  # VMFS-L (magic 0x2FABF15F), not a datastore

    @property
    def lvm_major(self) -> int:
        return self.lvm.major

    @property
    def disk_id(self) -> DiskId:
        return self.lvm.disk_id

    @property
    def data_offset(self) -> int:
        return self.lvm.data_offset

    @property
    def has_fs(self) -> bool:
        return self.fs_major is not None

    @property
    def vmfs_version(self) -> str:
        if self.fs_major is None:
            return "none (LVM only)"
        return FS3_MAJOR.get(self.fs_major, f"unknown (FS3 major {self.fs_major})") + ("-L" if self.local else "")

    def to_dict(self) -> dict[str, Any]:
        return {"partition_offset": self.partition_offset, "has_gpt": self.has_gpt, "lvm_major": self.lvm.major,
                "disk_id": self.disk_id.to_dict(), "data_offset": self.data_offset, "fs3_offset": self.fs3_offset,
                "fs_major": self.fs_major, "vmfs_version": self.vmfs_version, "uuid": self.uuid,
                "label": self.label, "block_size": self.block_size, "head_extent": self.lvm.head,
                "lvm": self.lvm.to_dict(), "problem": self.problem}


# --------------------------------------------------------------------------- helpers
def format_uuid(raw: bytes) -> str:
    """ESXi's VMFS UUID text form: 8-8-4-12 hex, the first three fields little-endian."""
    a, b, c = struct.unpack_from("<IIH", raw, 0)
    return f"{a:08x}-{b:08x}-{c:04x}-{raw[10:16].hex()}"


def parse_uuid(text: str) -> bytes:
    parts = text.strip().lower().split("-")
    if [len(x) for x in parts] != [8, 8, 4, 12]:
        raise UsageError(f"bad VMFS UUID {text!r}", hint="format: 5f1e2d3c-a1b2c3d4-e5f6-001122334455")
    try:
        return struct.pack("<IIH", int(parts[0], 16), int(parts[1], 16), int(parts[2], 16)) + \
            bytes.fromhex(parts[3])
    except ValueError as e:
        raise UsageError(f"bad VMFS UUID {text!r}: {e}") from e


def new_uuid() -> str:
    return format_uuid(uuidlib.uuid4().bytes)


def _cstr(b: bytes) -> str:
    i = b.find(b"\0")
    if i >= 0:
        b = b[:i]
    return b.decode("ascii", "replace").rstrip(" ")


def _printable(b: bytes) -> str:
    text = b.decode("ascii", "replace")
    if all(c in string.printable and c not in "\r\n\t\x0b\x0c" for c in text):
        return text.rstrip(" ")
    return "0x" + b.hex()


def naa_hex(naa) -> str:  # Naa or str
    return (naa.hex if hasattr(naa, "hex") and not isinstance(naa, str) else str(naa)).lower().removeprefix("naa.")


_NAA_LEN = {2: 8, 3: 8, 5: 8, 6: 16}
_HEX = set(b"0123456789abcdefABCDEF")


def _split_naa(raw: bytes, dtype: int) -> tuple[str | None, bytes, str]:
    """(NAA hex, rest, encoding) of a stored id of type 3: binary NAA + product characters, or the
    older form with the NAA as hex text; (None, raw, "text") for anything else (the T10 ids of
    ATA disks in the real images are serial + model characters)."""
    if raw and dtype == DISKID_TYPE_NAA:
        n = _NAA_LEN.get(raw[0] >> 4)
        if n and len(raw) >= n and not all(c in _HEX for c in raw[:n]):
            return raw[:n].hex(), raw[n:], "naa-binary"
        for n in (32, 16):  # hex text: as long as an NAA-6, or an NAA-2/3/5
            if len(raw) >= n and all(c in _HEX for c in raw[:n]) and chr(raw[0]) in "2356":
                return raw[:n].decode().lower(), raw[n:], "naa-hex-text"
    return None, raw, "text"


def expected_device_id(naa, product_id: str | None) -> bytes:
    """The id ESXi stores for an NAA LUN: the binary NAA designator + the first 6 characters of the
    product id (docs/vmfs.md)."""
    return bytes.fromhex(naa_hex(naa)) + (product_id or "").strip()[:PRODUCT_CHARS].encode("ascii", "replace")


def show_device_id(raw: bytes) -> str:
    return DiskId(DISKID_TYPE_NAA, len(raw), 0, 0, 0, "", "", "", raw).id


def matches(header: VmfsHeader, naa, product_id: str | None) -> bool:
    """True when the header's stored device id names this LUN (ESXi would mount the volume as-is).

    The binary form is what ESXi writes. The NAA as hex text, with or without the product
    characters, is what esxdr and esxsim wrote before; it is still accepted so that older lab
    images keep their meaning.
    """
    want = naa_hex(naa)
    if not want:
        return False
    stored, rest, encoding = _split_naa(header.disk_id.raw.rstrip(b"\0"), header.disk_id.type)
    if stored != want:
        return False
    suffix = (product_id or "").strip()[:PRODUCT_CHARS].encode("ascii", "replace")
    if encoding == "naa-binary":
        return rest == suffix
    return rest.rstrip(b" ") in (b"", suffix)


def lun_differs(header: VmfsHeader, lun: int | None) -> bool:
    """The LUN number recorded in the disk id differs from the one the LU is presented as."""
    return lun is not None and header.disk_id.lun != lun


# --------------------------------------------------------------------------- reading
def _parse_disk_id(b: bytes) -> DiskId:
    dtype, dlen, dlun, devtype, level = struct.unpack_from("<BBHBB", b, 0)
    raw = b[0x22:0x22 + (dlen if 0 < dlen <= 44 else 0)]
    return DiskId(type=dtype, length=dlen, lun=dlun, devtype=devtype, scsi_level=level,
                  vendor=_cstr(b[0x06:0x0E]), model=_cstr(b[0x0E:0x1E]), revision=_cstr(b[0x1E:0x22]), raw=raw)


def _read_lvm(read_at: ReadAt, lvm_at: int, size: int) -> LvmInfo | None:
    """The LVM metadata at ``lvm_at`` (P + 0x100000), or None without the magic."""
    h = read_at(lvm_at, 0x200)
    if len(h) < 0xD6 or struct.unpack_from("<I", h, 0)[0] != LVM_MAGIC:
        return None
    major, minor = struct.unpack_from("<II", h, 4)
    disk = _parse_disk_id(h[0x0C:0x5A])
    total, = struct.unpack_from("<Q", h, 0x5E)
    num_pes, = struct.unpack_from("<I", h, 0x6A)
    data_offset, = struct.unpack_from("<Q", h, 0x7A)
    md_alignment, = struct.unpack_from("<I", h, 0xCA)
    lay = lvm_layout(major, md_alignment)
    info = LvmInfo(major=major, minor=minor, disk_id=disk, device_bytes=total, data_offset=data_offset,
                   device_uuid=format_uuid(h[0x82:0x92]), lvm_uuid=None, volume_name="", volume_bytes=0,
                   first_pe=0, last_pe=0, num_devices=0)
    if lvm_at + lay["pe_table"] + PE_ENTRY > size:
        return info  # a header without the rest (older lab writers, truncated images)
    vt = read_at(lvm_at + lay["vt"], VT_ENTRY)
    if any(vt[0x54:0x64]):
        info.lvm_uuid = format_uuid(vt[0x54:0x64])
        info.volume_bytes, = struct.unpack_from("<Q", vt, 0)
        info.volume_name = _cstr(vt[0x14:0x54])
        info.first_pe, info.last_pe = struct.unpack_from("<QQ", vt, 0x78)
        info.num_devices, = struct.unpack_from("<I", vt, 0x90)
        # A handful of PE descriptors is enough to place logical offset 0 (LVM6 has one per
        # device, LVM5 one per 256 MiB); each entry costs a read over iSCSI.
        want = min(max(num_pes, 1), 4)
        table = read_at(lvm_at + lay["pe_table"], want * PE_ENTRY)
        for i in range(want):
            e = table[i * PE_ENTRY:(i + 1) * PE_ENTRY]
            if len(e) < 0x25 or not e[0]:
                continue
            physical, logical, length = struct.unpack_from("<QQQ", e, 9)
            info.pe_map.append((logical, physical, length))
        if info.first_pe == 0 and major >= 5 and 0 < info.num_devices <= MAX_EXTENTS:
            sd = read_at(lvm_at + lay["sd"], info.num_devices * SD_ENTRY)
            info.device_names = [_cstr(sd[i * SD_ENTRY:(i + 1) * SD_ENTRY]) for i in range(info.num_devices)]
    return info


def _partitions(read_at: ReadAt, block_size: int) -> list[tuple[int, bool]]:
    candidates: list[tuple[int, bool]] = []
    # Image files do not say their logical block size; 4Kn LUNs put the GPT header at byte 4096.
    for bs in dict.fromkeys([block_size, 512, 4096]):
        try:
            gpt = read_at(bs, 92)
            if gpt[:8] != b"EFI PART":
                continue
            entries_lba = struct.unpack_from("<Q", gpt, 72)[0]
            entry = read_at(entries_lba * bs, 128)
            first_lba = struct.unpack_from("<Q", entry, 32)[0]
            if first_lba:
                candidates.append((first_lba * bs, True))
                break
        except (OSError, struct.error, ValueError):
            continue
    candidates.append((0, False))
    return candidates


def read_header(read_at: ReadAt, size: int, block_size: int = 512, source: str = "device") -> VmfsHeader:
    """Find the LVM header (GPT partition first, then bare) and, on the head extent, the FS3
    descriptor. A device without a volume's logical offset 0 is a non-head extent: its header
    carries the LVM UUID and its place in the volume, no FS3 descriptor.

    Raises UsageError naming what was looked for when there is no LVM header at all.
    """
    candidates = _partitions(read_at, block_size)
    for part, has_gpt in candidates:
        if part + LVM_OFFSET + 0x200 > size:
            continue
        lvm = _read_lvm(read_at, part + LVM_OFFSET, size)
        if lvm is None:
            continue
        h = VmfsHeader(partition_offset=part, has_gpt=has_gpt, lvm=lvm, fs3_offset=None)
        if not lvm.head:
            return h
        # The PE holding logical offset FS3_OFFSET says where it is; without a PE table (older lab
        # writers) the volume starts at the data offset. V = P is tried last: an early reading of
        # "volume offset" some writers followed.
        tried: list[int] = []
        for lo, ph, n in lvm.pe_map:
            if lo <= FS3_OFFSET < lo + n:
                tried.append(part + ph + FS3_OFFSET - lo)
        tried += ([part + lvm.data_offset + FS3_OFFSET] if lvm.data_offset else []) + [part + FS3_OFFSET]
        tried = [x for x in dict.fromkeys(tried) if x + 0x200 <= size]
        for fs_at in tried:
            fs = read_at(fs_at, 0x200)
            if len(fs) >= 0xE1 and struct.unpack_from("<I", fs, 0)[0] in (FS3_MAGIC, FS3_MAGIC_L):
                h.local = struct.unpack_from("<I", fs, 0)[0] == FS3_MAGIC_L
                h.fs3_offset = fs_at
                h.fs_major = struct.unpack_from("<I", fs, 4)[0]
                h.uuid = format_uuid(fs[0x09:0x19])
                h.label = _cstr(fs[0x1D:0x1D + 128])
                h.block_size = struct.unpack_from("<Q", fs, 0xA1)[0]
                h.fs_lvm_uuid = format_uuid(fs[0xB1:0xC1]) if any(fs[0xB1:0xC1]) else None
                return h
        h.fs3_offset = tried[0] if tried else None
        h.problem = (f"{source}: VMFS LVM header at 0x{part + LVM_OFFSET:x} but no FS3 descriptor (magic "
                     f"0x{FS3_MAGIC:08X}) at " + (" or ".join(f"0x{x:x}" for x in tried) or "any offset inside it")
                     + ": an LVM volume without VMFS, or a damaged or truncated one")
        return h
    where = "at LBA 2048 (GPT) nor at offset 0 (bare partition)" if len(candidates) > 1 else \
        "in a GPT partition nor at offset 0 (bare partition)"
    raise UsageError(f"{source}: no VMFS LVM header (magic 0x{LVM_MAGIC:08X}) {where}",
                     hint="is this a VMFS5/6 LUN or partition image? `esxdr vmfs inspect` reads "
                          "whole LUNs (GPT) and bare partition images")


def inspect(path: str | Path) -> VmfsHeader:
    """Read the VMFS/LVM headers of a LUN image, a block device or a bare partition image."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError as e:
        raise UsageError(f"cannot open {path}: {e.strerror}") from e
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
        if size == 0:
            raise UsageError(f"{path}: empty file", hint="a VMFS LUN is at least a few tens of MiB")
        return read_header(lambda off, n: os.pread(fd, n, off), size, source=str(path))
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- spanned volumes
@dataclass
class Volume:
    """The extents of one logical volume among the devices looked at."""

    lvm_uuid: str
    extents: list[tuple[str, VmfsHeader]]  # (where, header), in PE order
    num_devices: int

    @property
    def head(self) -> tuple[str, VmfsHeader] | None:
        return next((e for e in self.extents if e[1].lvm.head), None)

    @property
    def label(self) -> str | None:
        h = self.head
        return h[1].label if h else None

    @property
    def uuid(self) -> str | None:
        h = self.head
        return h[1].uuid if h else None

    @staticmethod
    def _naas_of(where: str, h: VmfsHeader) -> set[str]:
        """The NAAs an extent answers to: the one its header stores, and the one it is found at
        (``where`` names a LUN by NAA in target verify; a path in `vmfs inspect`)."""
        out = {h.disk_id.naa} if h.disk_id.naa else set()
        w = where.lower().removeprefix("naa.")
        if len(w) in (16, 32) and all(c in string.hexdigits for c in w):
            out.add(w)
        return out

    def _table(self) -> list[str]:
        head = self.head
        return [n.split(":")[0].removeprefix("naa.").lower() for n in (head[1].lvm.device_names if head else [])]

    def ordinal(self, where: str) -> int | None:
        """The extent's place in the volume (0 = head), from the head's device table when the
        head is known, else from the PE order of the extents found."""
        hdr = dict(self.extents).get(where)
        if hdr is None or self.head is None:
            return None
        table = self._table()
        for naa in self._naas_of(where, hdr):
            if naa in table:
                return table.index(naa)
        return [w for w, _ in self.extents].index(where)

    def missing(self) -> list[str]:
        """What is missing for the volume to be complete, one phrase per missing extent. Extents
        belong to the volume by LVM UUID; the head's device table only names the missing ones."""
        head = self.head
        if head is None:
            return ["the head extent (the one holding the VMFS descriptor)"]
        # PE ranges must follow each other from the head on (dissect.vmfs checks the same).
        nxt, gap = 0, None
        for _, h in self.extents:
            if h.lvm.first_pe != nxt:
                gap = f"the extent holding physical extents {nxt}..{h.lvm.first_pe - 1}"
                break
            nxt = h.lvm.last_pe + 1
        if len(self.extents) >= self.num_devices and gap is None:
            return []
        have = set().union(*(self._naas_of(w, h) for w, h in self.extents))
        named = [f"extent {i} on naa.{naa}" for i, naa in enumerate(self._table())
                 if len(naa) in (16, 32) and naa not in have]
        if named:
            return named
        return [gap] if gap else [f"{self.num_devices - len(self.extents)} of its {self.num_devices} extents"]

    def describe_missing(self) -> str:
        name = f"VMFS volume {self.label!r} ({self.uuid})" if self.head else f"LVM volume {self.lvm_uuid}"
        found = ", ".join(f"{w} (extent {self.ordinal(w) if self.ordinal(w) is not None else '?'})"
                          for w, _ in self.extents)
        return (f"{name} spans {self.num_devices} LUNs; missing {'; '.join(self.missing())} "
                f"(found {found}): ESXi will not mount it until every extent is presented")


def group_volumes(found: list[tuple[str, VmfsHeader]]) -> list[Volume]:
    """Extents grouped by LVM UUID. Headers without a volume table (older single-LUN lab images)
    are volumes of their own."""
    groups: dict[str, list[tuple[str, VmfsHeader]]] = {}
    for where, h in found:
        groups.setdefault(h.lvm.lvm_uuid or f"device {h.lvm.device_uuid} ({where})", []).append((where, h))
    out = []
    for key, extents in groups.items():
        extents.sort(key=lambda e: e[1].lvm.first_pe)
        n = max([h.lvm.num_devices for _, h in extents] + [1])
        out.append(Volume(lvm_uuid=key, extents=extents, num_devices=n))
    return out


def try_read_header(read_at: ReadAt, size: int, block_size: int = 512, source: str = "device") -> VmfsHeader | None:
    """:func:`read_header`, or None for a LUN without an LVM header (blank, or not VMFS)."""
    try:
        return read_header(read_at, size, block_size, source)
    except UsageError:
        return None


def incomplete(found: list[tuple[str, VmfsHeader]]) -> list[str]:
    """One sentence per volume among ``found`` that misses an extent (an empty list: all whole)."""
    return [v.describe_missing() for v in group_volumes(found) if v.missing()]


# --------------------------------------------------------------------------- text
def describe(h: VmfsHeader, volume: Volume | None = None, where: str | None = None) -> str:
    d, lv = h.disk_id, h.lvm
    lines = [f"VMFS version:     {h.vmfs_version}" + (f" (FS3 major {h.fs_major}, LVM major {lv.major})"
                                                       if h.has_fs else f" (LVM major {lv.major})")]
    if h.has_fs:
        lines += [f"volume UUID:      {h.uuid}", f"label:            {h.label}"]
    lines += [
        f"partition:        {'GPT, ' if h.has_gpt else 'bare image, '}offset 0x{h.partition_offset:x}",
        f"data offset:      0x{h.data_offset:x}",
    ]
    if h.fs3_offset is not None and h.has_fs:
        lines.append(f"FS3 descriptor:   at 0x{h.fs3_offset:x}")
    lines += [
        f"device id:        {d.id}",
        f"  type/len/lun:   {d.type}/{d.length}/{d.lun}",
        f"  vendor/model:   {d.vendor!r} / {d.model!r} rev {d.revision!r}",
        f"LVM UUID:         {lv.lvm_uuid or '(no volume table)'}",
    ]
    if lv.lvm_uuid:
        ordinal = volume.ordinal(where) if volume is not None and where is not None else (0 if lv.head else None)
        place = "head extent" if lv.head else "not the head extent"
        lines.append(f"extent:           {ordinal if ordinal is not None else '?'} of {lv.num_devices} ({place}), "
                     f"physical extents {lv.first_pe}..{lv.last_pe}")
        if ordinal is None:
            lines.append("                  (its ordinal is in the head extent's device table: inspect both)")
        if lv.device_names:
            lines.append(f"devices:          {', '.join(lv.device_names)}")
    if h.problem:
        lines.append(f"problem:          {h.problem}")
    return "\n".join(lines)

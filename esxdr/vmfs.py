"""Read (and, for the lab, write) the VMFS volume headers esxdr needs.

ESXi decides whether a VMFS volume "mounts as-is" or "shows as a snapshot" by
comparing the device id stored in the volume's LVM header with the id of the
LUN it now sits on; a volume spanning several LUNs needs all of them. esxdr
reads those headers to predict the outcome before ESXi is touched. dissect.vmfs
is AGPL-3.0, so the fields are read here; docs/vmfs.md gives the layout, where
each part of it comes from and how it was checked against independent readers
(vmfs-tools, vmfs6-tools) and real images (dissect.vmfs's test data).

Layout on a LUN, in short (P = partition start, V = P + dataOffset)::

    LBA 2048                 GPT partition (P = 0 for a bare partition image)
    P + 0x100000             LVM device header: magic 0xC001D00D, major 5/6, SCSI_DiskId
                             at +0x0C, totalBytes, dataOffset (0x1100000), device UUID
    P + 0x100000 + md        volume table (md = 0x200 for LVM5, mdAlignment 0x1000 for
                             LVM6): logical size, LVM UUID, first/last 256 MiB physical
                             extent (PE) of this device, number of devices
    ... + SD table           device names of every extent ("naa.<hex>:1"), head only
    ... PE bitmap + table    physical -> logical offset of this device's PEs
    V + 0x200000             FS3 descriptor (head extent only): magic 0x2FABF15E, major
                             (14 = VMFS5, 24 = VMFS6), UUID, label, block size, LVM UUID
    V + 0x300000 ...         heartbeats, then the file descriptor cluster (FDC: inodes),
                             the root directory and the resource files (.fbb.sf, .fdc.sf,
                             .pbc.sf, .sbc.sf, .vh.sf, .pb2.sf)

The lab writer (:func:`write_volume`) writes all of that, so that vmfs6-tools'
``debugvmfs6`` (and vmfs-tools' ``debugvmfs`` for VMFS5) open the filesystem
and print UUID and label. The resource bitmaps are present but empty: these
are identity-carrying images for tests, not a filesystem ESXi could write to.

Device id of an NAA LUN (SCSI_DiskId): type 3 (the VPD 0x83 designator type),
``id`` = the NAA designator as binary bytes followed by the first 6 characters
of the product id, ``len`` = 22 for an NAA-6. docs/vmfs.md holds the evidence;
:func:`matches` also accepts the NAA as 32 hex characters (what esxdr and
esxsim wrote before) so that older lab images still match.
"""

from __future__ import annotations

import os
import string
import struct
import time
import uuid as uuidlib
import zlib
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
_VT_ENTRY = 0x200
_SD_ENTRY = 0x100
_PE_ENTRY = 0x80


def _lvm_layout(major: int, md_alignment: int) -> dict[str, int]:
    """Offsets of the volume table, SD table, PE bitmap and PE table (LVM_DeviceHeader)."""
    if major >= 6:
        md, volumes, bitmap = md_alignment or 0x1000, 1, max(md_alignment or 0x1000, 0x400)
    else:
        md, volumes, bitmap = 0x200, 512, 0x400
    reserved = (1024 - volumes) * 512 - _SD_ENTRY * MAX_EXTENTS
    sd = md + volumes * _VT_ENTRY + reserved
    return {"vt": md, "sd": sd, "pe_bitmap": sd + _SD_ENTRY * MAX_EXTENTS,
            "pe_table": sd + _SD_ENTRY * MAX_EXTENTS + bitmap}


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


def _naa_hex(naa) -> str:  # Naa or str
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
    return bytes.fromhex(_naa_hex(naa)) + (product_id or "").strip()[:PRODUCT_CHARS].encode("ascii", "replace")


def show_device_id(raw: bytes) -> str:
    return DiskId(DISKID_TYPE_NAA, len(raw), 0, 0, 0, "", "", "", raw).id


def matches(header: VmfsHeader, naa, product_id: str | None) -> bool:
    """True when the header's stored device id names this LUN (ESXi would mount the volume as-is).

    The binary form is what ESXi writes. The NAA as hex text, with or without the product
    characters, is what esxdr and esxsim wrote before; it is still accepted so that older lab
    images keep their meaning.
    """
    want = _naa_hex(naa)
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
    lay = _lvm_layout(major, md_alignment)
    info = LvmInfo(major=major, minor=minor, disk_id=disk, device_bytes=total, data_offset=data_offset,
                   device_uuid=format_uuid(h[0x82:0x92]), lvm_uuid=None, volume_name="", volume_bytes=0,
                   first_pe=0, last_pe=0, num_devices=0)
    if lvm_at + lay["pe_table"] + _PE_ENTRY > size:
        return info  # a header without the rest (older lab writers, truncated images)
    vt = read_at(lvm_at + lay["vt"], _VT_ENTRY)
    if any(vt[0x54:0x64]):
        info.lvm_uuid = format_uuid(vt[0x54:0x64])
        info.volume_bytes, = struct.unpack_from("<Q", vt, 0)
        info.volume_name = _cstr(vt[0x14:0x54])
        info.first_pe, info.last_pe = struct.unpack_from("<QQ", vt, 0x78)
        info.num_devices, = struct.unpack_from("<I", vt, 0x90)
        # A handful of PE descriptors is enough to place logical offset 0 (LVM6 has one per
        # device, LVM5 one per 256 MiB); each entry costs a read over iSCSI.
        want = min(max(num_pes, 1), 4)
        table = read_at(lvm_at + lay["pe_table"], want * _PE_ENTRY)
        for i in range(want):
            e = table[i * _PE_ENTRY:(i + 1) * _PE_ENTRY]
            if len(e) < 0x25 or not e[0]:
                continue
            physical, logical, length = struct.unpack_from("<QQQ", e, 9)
            info.pe_map.append((logical, physical, length))
        if info.first_pe == 0 and major >= 5 and 0 < info.num_devices <= MAX_EXTENTS:
            sd = read_at(lvm_at + lay["sd"], info.num_devices * _SD_ENTRY)
            info.device_names = [_cstr(sd[i * _SD_ENTRY:(i + 1) * _SD_ENTRY]) for i in range(info.num_devices)]
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


# --------------------------------------------------------------------------- writing (lab)
def _gpt(total_sectors: int, bs: int, disk_guid: bytes, part_guid: bytes) -> tuple[bytes, bytes, int, int]:
    """Protective MBR + primary GPT, and the backup GPT, with one VMFS partition from LBA 2048."""
    first, last = GPT_PART_LBA, total_sectors - 34
    mbr = bytearray(bs)
    mbr[446 + 4] = 0xEE
    struct.pack_into("<II", mbr, 446 + 8, 1, min(total_sectors - 1, 0xFFFFFFFF))
    mbr[510:512] = b"\x55\xaa"
    entries = bytearray(128 * 128)
    entries[0:16] = VMFS_TYPE_GUID.bytes_le
    entries[16:32] = part_guid
    struct.pack_into("<QQ", entries, 32, first, last)
    name = "esxdr VMFS".encode("utf-16-le")
    entries[56:56 + len(name)] = name
    ent_crc = zlib.crc32(entries)

    def header(cur: int, backup: int, ent_lba: int) -> bytes:
        h = bytearray(bs)
        h[0:8] = b"EFI PART"
        struct.pack_into("<II", h, 8, 0x00010000, 92)
        struct.pack_into("<QQQQ", h, 24, cur, backup, 34, total_sectors - 34)
        h[56:72] = disk_guid
        struct.pack_into("<QIII", h, 72, ent_lba, 128, 128, ent_crc)
        struct.pack_into("<I", h, 16, zlib.crc32(bytes(h[:92])))
        return bytes(h)

    primary = bytes(mbr) + header(1, total_sectors - 1, 2) + bytes(entries)
    backup = bytes(entries) + header(total_sectors - 1, 1, total_sectors - 33)
    return primary, backup, first, last


def disk_id_bytes(*, naa, product_id: str, vendor: str = "", revision: str = "", lun: int = 0,
                  device_id: bytes | str | None = None, devtype: int = 0, scsi_level: int = 5) -> bytes:
    """SCSI_DiskId (0x4E bytes) for an NAA LUN; ``device_id`` overrides the stored id."""
    if device_id is None:
        did = expected_device_id(naa, product_id)
    else:
        did = device_id.encode("ascii") if isinstance(device_id, str) else device_id
    if len(did) > 44:
        raise UsageError(f"device id {did!r} is longer than the 44 bytes the LVM header holds")
    b = bytearray(0x4E)
    struct.pack_into("<BBHBB", b, 0, DISKID_TYPE_NAA, len(did), lun, devtype, scsi_level)
    b[0x06:0x0E] = vendor.encode("ascii")[:8].ljust(8, b" ")
    b[0x0E:0x1E] = product_id.encode("ascii")[:16].ljust(16, b" ")
    b[0x1E:0x22] = revision.encode("ascii")[:4].ljust(4, b" ")
    b[0x22:0x22 + len(did)] = did
    return bytes(b)


@dataclass(frozen=True)
class _Fs:
    """The layout differences between VMFS5 (as vmfs-tools reads it) and VMFS6 (vmfs6-tools)."""

    major: int
    minor: int
    mdh: int  # metadata header size
    inode: int  # inode (file descriptor) size
    blocks_at: int  # block address array in an inode
    block_addr: int  # bytes per block address
    resident_at: int  # inline content of a resident file
    bitmap_entry: int  # resource cluster (bitmap entry) size
    fdc_block: int  # file block of the FDC: right after the heartbeat region
    subblock: int

    def fb(self, n: int) -> int:
        """Address of file block n."""
        if self.major >= 24:  # VMFS6: 9 low bits at 51, the next 17 at 15
            return ((n & 0x1FF) << 51) | (((n >> 9) & 0x1FFFF) << 15) | 1
        return (n << 6) | 1


_FS = {6: _Fs(24, 82, 0x1000, 0x2000, 0x1600, 8, 0x1200, 0x2000, 7, 0x10000),
       5: _Fs(14, 81, 0x200, 0x800, 0x400, 4, 0x400, 0x400, 4, 0x2000)}
_INODE_MAGIC = 0x10C00001
_FDC_MAGIC = 0x10C00005
_RESIDENT_ZLA = 4301 + 4  # VMFS5_ZLA_BASE + the file descriptor address type: content in the inode
_FB_ZLA = 1
_TYPE_DIR, _TYPE_SYSFILE = 2, 5
_FDC_HDR = 0x10000
_FDC_ITEMS = 64
# System files at the file descriptor slots real volumes use (dissect.vmfs names the same
# addresses): root 0, .fbb.sf 1, .fdc.sf 2, .pbc.sf 3, .sbc.sf 4, .vh.sf 5, .pb2.sf 6.
_SYSFILES = [(".fbb.sf", 1, 0x10C00002), (".fdc.sf", 2, _FDC_MAGIC), (".pbc.sf", 3, 0x10C00004),
             (".sbc.sf", 4, 0x10C00003), (".vh.sf", 5, 0), (".pb2.sf", 6, 0x10C00006)]
FS_BLOCKS = 9  # file blocks 0..8 hold heartbeats, the FDC and the root directory


def _fd(item: int) -> int:
    return (item << 22) | 4


def _bitmap_header(items_per_entry: int, entries_per_area: int, hdr: int, data: int, total: int,
                   areas: int, bitmap_entry: int) -> bytes:
    b = bytearray(0x200)
    struct.pack_into("<7I", b, 0, items_per_entry, entries_per_area, hdr, data,
                     entries_per_area * bitmap_entry + items_per_entry * entries_per_area * data, total, areas)
    return bytes(b)


def _inode(fs: _Fs, *, item: int, pos: int, ftype: int, mode: int, size: int, now: int, blocks: tuple[int, ...] = (),
           content: bytes | None = None, nlink: int = 1) -> bytes:
    b = bytearray(fs.inode)
    struct.pack_into("<IQ", b, 0, _INODE_MAGIC, pos)
    o = fs.mdh
    zla = _RESIDENT_ZLA if content is not None else _FB_ZLA
    struct.pack_into("<IIIIIQQQIIIIIIIII", b, o, _fd(item), 1, nlink, ftype, 0, size, FILE_BLOCK,
                     len(blocks), now, now, now, 0, 0, mode, zla, 0, 0)
    if content is not None:
        b[fs.resident_at:fs.resident_at + len(content)] = content
    else:
        fmt = "<Q" if fs.block_addr == 8 else "<I"
        for i, addr in enumerate(blocks):
            struct.pack_into(fmt, b, fs.blocks_at + i * fs.block_addr, addr)
    return bytes(b)


def _root_directory(fs: _Fs, names: list[tuple[str, int, int]]) -> bytes:
    """The root directory file: ".", ".." and the system files, in the layout each tool reads."""
    if fs.major >= 24:
        # VMFS6 (vmfs6-tools): "." and ".." at 0x3b8, one flag nibble per 4 KiB page at 0x10040
        # (1 = in use, 8 = end), entries of 0x120 bytes from 0x11040 in the first page.
        d = bytearray(0x12000)

        def put(at: int, ftype: int, addr: int, name: str) -> None:
            struct.pack_into("<IIIIQ", d, at, ftype, addr, 1, 0, at)
            d[at + 0x18:at + 0x18 + len(name)] = name.encode()

        put(0x3B8, _TYPE_DIR, _fd(0), ".")
        put(0x3B8 + 0x120, _TYPE_DIR, _fd(0), "..")
        d[0x10040] = 0x01
        d[0x10041:0x10080] = b"\x88" * 0x3F
        for i, (name, ftype, addr) in enumerate(names):
            put(0x11040 + i * 0x120, ftype, addr, name)
        return bytes(d)
    # VMFS5 (vmfs-tools): a plain array of 0x8c-byte entries.
    entries = [(".", _TYPE_DIR, _fd(0)), ("..", _TYPE_DIR, _fd(0))] + names
    d = bytearray(0x8C * len(entries))
    for i, (name, ftype, addr) in enumerate(entries):
        struct.pack_into("<III", d, i * 0x8C, ftype, addr, 1)
        d[i * 0x8C + 12:i * 0x8C + 12 + len(name)] = name.encode()
    return bytes(d)


def filesystem_writes(*, vmfs: int, uuid: str, label: str, lvm_uuid: bytes, volume_bytes: int,
                      now: int) -> list[tuple[int, bytes]]:
    """(volume offset, bytes) of the FS3 descriptor and the metadata readers open: the FDC with its
    inodes, the root directory and the resource files' headers (kept in their inodes)."""
    if vmfs not in _FS:
        raise UsageError(f"VMFS version {vmfs} is not 5 or 6")
    fs = _FS[vmfs]
    raw_label = label.encode("utf-8")
    if len(raw_label) > 127:
        raise UsageError(f"VMFS label {label!r} is longer than 127 bytes")
    d = bytearray(0x200)
    struct.pack_into("<IIB", d, 0, FS3_MAGIC, fs.major, fs.minor)
    d[0x09:0x19] = parse_uuid(uuid)
    # config: low bits 2 = "public" (a volume on shared storage, as vmfs-tools names them); real
    # volumes carry further flags about their resource layout, which the lab's has none of.
    struct.pack_into("<I", d, 0x19, 0x2)
    d[0x1D:0x1D + len(raw_label)] = raw_label
    struct.pack_into("<IQII", d, 0x9D, 512, FILE_BLOCK, now, 0)
    d[0xB1:0xC1] = lvm_uuid  # volInfo: the logical volume this filesystem lives on
    struct.pack_into("<I", d, 0xC1, 1)  # ... and its snapshot id, as in LVM_VolID
    struct.pack_into("<III", d, 0xD1, _FDC_HDR, 1, fs.subblock)
    writes: list[tuple[int, bytes]] = [(FS3_OFFSET, bytes(d))]

    fdc = fs.fdc_block * FILE_BLOCK
    root = (fs.fdc_block + 1) * FILE_BLOCK
    item0 = fdc + _FDC_HDR + fs.bitmap_entry  # one cluster group: one bitmap entry, then the inodes
    fdc_size = _FDC_HDR + fs.bitmap_entry + _FDC_ITEMS * fs.inode
    writes.append((fdc, _bitmap_header(_FDC_ITEMS, 1, _FDC_HDR, fs.inode, _FDC_ITEMS, 1, fs.bitmap_entry)))
    # The bitmap entry (resource cluster) of the FDC: a set bit is a free slot.
    used = 1 + len(_SYSFILES)
    bme = bytearray(fs.bitmap_entry)
    struct.pack_into("<IQ", bme, 0, _FDC_MAGIC, fdc + _FDC_HDR)
    struct.pack_into("<IIII", bme, fs.mdh, 0, _FDC_ITEMS, _FDC_ITEMS - used, used)
    bits = (1 << _FDC_ITEMS) - 1 - ((1 << used) - 1)
    bme[fs.mdh + 16:fs.mdh + 16 + _FDC_ITEMS // 8] = bits.to_bytes(_FDC_ITEMS // 8, "little")
    writes.append((fdc + _FDC_HDR, bytes(bme)))

    directory = _root_directory(fs, [(name, _TYPE_SYSFILE, _fd(item)) for name, item, _ in _SYSFILES])
    writes.append((root, directory))
    writes.append((item0, _inode(fs, item=0, pos=item0, ftype=_TYPE_DIR, mode=0o1755, size=len(directory),
                                 now=now, blocks=(fs.fb(fs.fdc_block + 1),), nlink=2)))
    for name, item, magic in _SYSFILES:
        pos = item0 + item * fs.inode
        if name == ".fdc.sf":  # the FDC itself: the block written above
            ino = _inode(fs, item=item, pos=pos, ftype=_TYPE_SYSFILE, mode=0o400, size=fdc_size, now=now,
                         blocks=(fs.fb(fs.fdc_block),))
        elif name == ".vh.sf":  # the heartbeat region: the blocks before the FDC
            ino = _inode(fs, item=item, pos=pos, ftype=_TYPE_SYSFILE, mode=0o400, size=fdc, now=now,
                         blocks=tuple(fs.fb(n) for n in range(fs.fdc_block)))
        else:
            # Resource files with no resources: a bitmap header alone, kept inside the inode.
            hdr = _bitmap_header(8, 1, 0x200, FILE_BLOCK if magic == 0x10C00002 else fs.subblock, 0, 0,
                                 fs.bitmap_entry)
            ino = _inode(fs, item=item, pos=pos, ftype=_TYPE_SYSFILE, mode=0o400, size=len(hdr), now=now,
                         content=hdr)
        writes.append((pos, ino))
    if FS_BLOCKS * FILE_BLOCK > volume_bytes:
        raise UsageError(f"a VMFS volume of {volume_bytes} bytes cannot hold the {FS_BLOCKS} MiB of metadata "
                         "the lab writes", hint="use a LUN of at least 28 MiB")
    return writes


def _lvm_writes(*, major: int, disk_id: bytes, device_bytes: int, data_offset: int, device_uuid: bytes,
                lvm_uuid: bytes, volume_bytes: int, first_pe: int, num_pes: int, pe_bytes: int,
                num_devices: int, device_names: list[str] | None, now_us: int) -> list[tuple[int, bytes]]:
    """(offset from P + LVM_OFFSET, bytes) of one device's LVM metadata."""
    md = 0x1000 if major >= 6 else 0
    lay = _lvm_layout(major, md)
    # LVM6 maps a device with one PE descriptor; LVM5 with one per 256 MiB.
    if major >= 6:
        descriptors = [(first_pe * PE_SIZE, data_offset, pe_bytes)]
    else:
        descriptors = [((first_pe + i) * PE_SIZE, data_offset + i * PE_SIZE, min(PE_SIZE, pe_bytes - i * PE_SIZE))
                       for i in range(num_pes)]
    h = bytearray(0x200)
    struct.pack_into("<III", h, 0, LVM_MAGIC, major, 21)
    h[0x0C:0x5A] = disk_id
    struct.pack_into("<IQIIIQQ", h, 0x5A, 512, device_bytes, 1, len(descriptors), len(descriptors) - 1, 1,
                     data_offset)
    h[0x82:0x92] = device_uuid
    struct.pack_into("<QQ", h, 0x92, now_us, now_us)
    struct.pack_into("<IQIII", h, 0xBE, 0 if major >= 6 else 1, 0, md, num_pes if major >= 6 else 0, 0)
    vt = bytearray(_VT_ENTRY)
    struct.pack_into("<QQI", vt, 0, volume_bytes, 1, 1)  # state 1: normal
    name = format_uuid(lvm_uuid).encode()
    vt[0x14:0x14 + len(name)] = name
    vt[0x54:0x64] = lvm_uuid
    struct.pack_into("<IQIIQQQI", vt, 0x64, 1, now_us, 0, num_pes, first_pe, first_pe + num_pes - 1, now_us,
                     num_devices)
    bitmap = bytearray(0x400)
    table = bytearray(_PE_ENTRY * len(descriptors))
    for i, (logical, physical, length) in enumerate(descriptors):
        bitmap[i // 8] |= 1 << (i % 8)
        table[i * _PE_ENTRY] = 1
        struct.pack_into("<IIQQQI", table, i * _PE_ENTRY + 1, i, 0, physical, logical, length, 1)
    writes = [(0, bytes(h)), (lay["vt"], bytes(vt)), (lay["pe_bitmap"], bytes(bitmap)), (lay["pe_table"], bytes(table))]
    sd = bytearray(_SD_ENTRY * MAX_EXTENTS)
    for i, n in enumerate(device_names or []):
        sd[i * _SD_ENTRY:i * _SD_ENTRY + len(n)] = n.encode()
    writes.append((lay["sd"], bytes(sd)))  # zeroed on every extent but the head: it belongs to devZero
    return writes


@dataclass
class Extent:
    """One LUN of a volume to write (lab and tests)."""

    path: str | Path
    naa: Any
    product_id: str
    vendor: str = ""
    revision: str = ""
    lun: int = 0
    size: int | None = None  # grow (sparsely) or create the file to this size
    bare: bool = False  # a partition image without GPT
    block_size: int = 512
    device_id: bytes | str | None = None  # override the stored id (to build "snapshot" volumes)


def _device_size(p: Path) -> int:
    fd = os.open(str(p), os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def min_size(bare: bool = False, data_offset: int = DEFAULT_DATA_OFFSET, block_size: int = 512) -> int:
    """The smallest LUN a single-extent volume fits on."""
    part = 0 if bare else GPT_PART_LBA * block_size
    return part + data_offset + FS_BLOCKS * FILE_BLOCK + (0 if bare else 34 * block_size)


def write_volume(extents: list[Extent], *, uuid: str, label: str, vmfs: int = 6,
                 data_offset: int = DEFAULT_DATA_OFFSET, lvm_uuid: str | None = None,
                 now: float | None = None) -> list[VmfsHeader]:
    """Write a VMFS volume over one or more LUNs (lab and tests only): GPT, LVM metadata on each
    extent, and on the first (the head) the FS3 descriptor and the metadata readers open.

    Every extent but the last holds whole 256 MiB physical extents (as real LVM does: logical
    offsets must follow each other); the last may be smaller than one, which real ESXi would
    not create but which keeps lab LUNs small. Files are grown sparsely.
    """
    if vmfs not in _FS:
        raise UsageError(f"VMFS version {vmfs} is not 5 or 6")
    if not extents or len(extents) > MAX_EXTENTS:
        raise UsageError(f"a VMFS volume has 1 to {MAX_EXTENTS} extents, not {len(extents)}")
    t = time.time() if now is None else now
    lvm_raw = parse_uuid(lvm_uuid) if lvm_uuid else uuidlib.uuid4().bytes
    plans = []
    first_pe = 0
    for i, e in enumerate(extents):
        p = Path(e.path)
        if e.size is not None:
            with open(p, "ab") as f:
                if f.tell() < e.size:
                    f.truncate(e.size)
        try:
            total = p.stat().st_size if p.is_file() else _device_size(p)
        except OSError as err:
            raise UsageError(f"cannot open {p}: {err.strerror}") from err
        part = 0 if e.bare else GPT_PART_LBA * e.block_size
        part_bytes = total - part - (0 if e.bare else 34 * e.block_size)
        usable = part_bytes - data_offset
        last = i == len(extents) - 1
        need = FS_BLOCKS * FILE_BLOCK if i == 0 else FILE_BLOCK
        if usable < need:
            raise UsageError(f"{p}: {total} bytes is too small for a VMFS {'head ' if i == 0 else ''}extent; "
                             f"need at least {total - usable + need}", hint="pass size= or grow the image")
        pes, rest = divmod(usable, PE_SIZE)
        if pes and (rest or not last):
            pe_bytes = pes * PE_SIZE  # real LVM drops the tail that does not fill a PE
        elif last:
            pes, pe_bytes = max(pes, 1), (usable if not pes else pes * PE_SIZE) // FILE_BLOCK * FILE_BLOCK
        else:
            raise UsageError(f"{p}: extent {i} of {len(extents)} holds {usable} bytes after the LVM metadata; "
                             f"every extent but the last needs whole 256 MiB physical extents",
                             hint=f"make it at least {total - usable + PE_SIZE} bytes (sparse files cost nothing)")
        plans.append((e, p, total, part, part_bytes, first_pe, pes, pe_bytes))
        first_pe += pes
    volume_bytes = sum(pl[7] for pl in plans)
    names = [f"naa.{_naa_hex(e.naa)}:1" for e in extents]
    fs_writes = filesystem_writes(vmfs=vmfs, uuid=uuid, label=label, lvm_uuid=lvm_raw, volume_bytes=volume_bytes,
                                  now=int(t))
    for i, (e, p, total, part, part_bytes, fpe, pes, pe_bytes) in enumerate(plans):
        fd = os.open(str(p), os.O_RDWR)
        try:
            if not e.bare:
                primary, backup, _, _ = _gpt(total // e.block_size, e.block_size, uuidlib.uuid4().bytes,
                                             uuidlib.uuid4().bytes)
                os.pwrite(fd, primary, 0)
                os.pwrite(fd, backup, (total // e.block_size - 33) * e.block_size)
            did = disk_id_bytes(naa=e.naa, product_id=e.product_id, vendor=e.vendor, revision=e.revision,
                                lun=e.lun, device_id=e.device_id)
            for off, data in _lvm_writes(major=vmfs, disk_id=did, device_bytes=part_bytes, data_offset=data_offset,
                                         device_uuid=uuidlib.uuid4().bytes, lvm_uuid=lvm_raw,
                                         volume_bytes=volume_bytes, first_pe=fpe, num_pes=pes, pe_bytes=pe_bytes,
                                         num_devices=len(extents), device_names=names if i == 0 else None,
                                         now_us=int(t * 1e6)):
                os.pwrite(fd, data, part + LVM_OFFSET + off)
            if i == 0:
                for off, data in fs_writes:
                    os.pwrite(fd, data, part + data_offset + off)
            os.fsync(fd)
        finally:
            os.close(fd)
    return [inspect(pl[1]) for pl in plans]


def write_vmfs(path: str | Path, *, uuid: str, label: str, naa, product_id: str,
               vendor: str = "", revision: str = "", lun: int = 0, vmfs: int = 6, size: int | None = None,
               bare: bool = False, block_size: int = 512, data_offset: int = DEFAULT_DATA_OFFSET,
               device_id: bytes | str | None = None) -> VmfsHeader:
    """A single-LUN VMFS volume (see :func:`write_volume`). ``size`` grows (sparsely) or creates
    the file; ``bare`` writes a partition image without GPT; ``device_id`` overrides the stored
    id (to build "snapshot" volumes in tests)."""
    return write_volume([Extent(path, naa, product_id, vendor, revision, lun, size, bare, block_size, device_id)],
                        uuid=uuid, label=label, vmfs=vmfs, data_offset=data_offset)[0]


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

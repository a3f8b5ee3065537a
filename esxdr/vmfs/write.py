"""Writing VMFS images for the lab and the tests: GPT, the LVM device header and volume tables,
the FS3 descriptor, the file descriptor cluster and the root directory, so that vmfs-tools and
vmfs6-tools open them (the package's docstring and docs/vmfs.md)."""

from __future__ import annotations

import os
import struct
import time
import uuid as uuidlib
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from esxdr.errors import UsageError
from esxdr.vmfs.header import (
    DEFAULT_DATA_OFFSET,
    DISKID_TYPE_NAA,
    FILE_BLOCK,
    FS3_MAGIC,
    FS3_OFFSET,
    GPT_PART_LBA,
    LVM_MAGIC,
    LVM_OFFSET,
    MAX_EXTENTS,
    PE_ENTRY,
    PE_SIZE,
    SD_ENTRY,
    VMFS_TYPE_GUID,
    VT_ENTRY,
    VmfsHeader,
    expected_device_id,
    format_uuid,
    inspect,
    lvm_layout,
    naa_hex,
    parse_uuid,
)


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
    lay = lvm_layout(major, md)
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
    vt = bytearray(VT_ENTRY)
    struct.pack_into("<QQI", vt, 0, volume_bytes, 1, 1)  # state 1: normal
    name = format_uuid(lvm_uuid).encode()
    vt[0x14:0x14 + len(name)] = name
    vt[0x54:0x64] = lvm_uuid
    struct.pack_into("<IQIIQQQI", vt, 0x64, 1, now_us, 0, num_pes, first_pe, first_pe + num_pes - 1, now_us,
                     num_devices)
    bitmap = bytearray(0x400)
    table = bytearray(PE_ENTRY * len(descriptors))
    for i, (logical, physical, length) in enumerate(descriptors):
        bitmap[i // 8] |= 1 << (i % 8)
        table[i * PE_ENTRY] = 1
        struct.pack_into("<IIQQQI", table, i * PE_ENTRY + 1, i, 0, physical, logical, length, 1)
    writes = [(0, bytes(h)), (lay["vt"], bytes(vt)), (lay["pe_bitmap"], bytes(bitmap)), (lay["pe_table"], bytes(table))]
    sd = bytearray(SD_ENTRY * MAX_EXTENTS)
    for i, n in enumerate(device_names or []):
        sd[i * SD_ENTRY:i * SD_ENTRY + len(n)] = n.encode()
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
    names = [f"naa.{naa_hex(e.naa)}:1" for e in extents]
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

"""esxdr.vmfs on real VMFS5/6 and LVM images made by ESXi: dissect.vmfs's test data.

The images come from dissect.vmfs's sdist on PyPI, fetched with `pip download` into a cache
(ESXDR_TEST_DATA, default ~/.cache/esxdr-test-data) and read as data: dissect itself is AGPL
and never imported. They are gzip files; headers are read straight from the gzip stream. Every
expected value below was read independently with vmfs6-tools/vmfs-tools (`debugvmfs6 IMG show`,
`show lvm`, `show lvm.extent[0]`; `debugvmfs` for VMFS5) on the decompressed images, or from the
hex where those tools show nothing (the device id). When the tools are installed, the VMFS5 and
VMFS6 images are also decompressed once (sparse, about 150 MB each in the cache) and the tools' output
compared with esxdr's reading at test time.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest

from esxdr import vmfs
from esxdr.errors import UsageError

SDIST = "dissect.vmfs==3.13"
SDIST_FILE = "dissect_vmfs-3.13.tar.gz"
SDIST_SHA256 = "904a4116b944acfc6a7a9de013ae1db14c760cb76138fd77c6a5b510b98c828d"
DATA_PREFIX = "dissect_vmfs-3.13/tests/_data/"
CACHE = Path(os.environ.get("ESXDR_TEST_DATA") or Path.home() / ".cache" / "esxdr-test-data") / "dissect.vmfs-3.13"
QEMU_ID = b"QM00013" + b" " * 13 + b"QEMU H"  # ATA serial (20 characters as the disk reports it) + model[:6]


def _fetch() -> Path:
    """The sdist in the cache, downloaded with pip when missing; skip when that is impossible."""
    CACHE.mkdir(parents=True, exist_ok=True)
    target = CACHE / SDIST_FILE
    if not target.exists():
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            p = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                                "--disable-pip-version-check", "-q", "-d", tmp, SDIST],
                               capture_output=True, text=True, timeout=300)
            got = Path(tmp) / SDIST_FILE
            if p.returncode != 0 or not got.exists():
                pytest.skip(f"cannot download {SDIST} with pip (no network or no index?): "
                            f"{(p.stderr or p.stdout).strip().splitlines()[-1:]}")
            got.rename(target)
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        target.unlink()
        pytest.fail(f"{SDIST_FILE} has sha256 {digest}, not the {SDIST_SHA256} these expectations were read "
                    "from; removed from the cache")
    return target


@pytest.fixture(scope="module")
def images() -> Path:
    """dissect.vmfs's tests/_data, extracted from the sdist once."""
    sdist = _fetch()
    out = CACHE / "_data"
    if not (out / "vmfs" / "vmfs6.bin.gz").exists():
        with tarfile.open(sdist) as tar:
            for m in tar.getmembers():
                if m.isfile() and m.name.startswith(DATA_PREFIX) and m.name.endswith(".gz"):
                    dest = out / m.name[len(DATA_PREFIX):]
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    src = tar.extractfile(m)
                    assert src is not None
                    dest.write_bytes(src.read())
    return out


def header(images: Path, name: str) -> vmfs.VmfsHeader:
    """esxdr's reading of an image, straight from its gzip stream (the headers sit in the first
    20 MiB; a forward seek decompresses up to them)."""
    with gzip.open(images / name) as f:
        def read_at(offset: int, length: int) -> bytes:
            f.seek(offset)
            return f.read(length)
        return vmfs.read_header(read_at, 1 << 40, source=name)


# name: (VMFS version, VMFS UUID, label, LVM UUID, device UUID, first PE, last PE, devices), read with
# debugvmfs6/debugvmfs; labels are dissect.vmfs's own (its tests assert label == the image's name).
VOLUMES = {
    "vmfs/vmfs6.bin.gz": ("VMFS6", "68626f2d-90e23158-8a2e-bc2411b17e28", "vmfs6", "68626f2d-86473108-d4e1-bc2411b17e28",
                          "68626f2d-8e63dfd0-028d-bc2411b17e28", 0, 7, 1),
    "vmfs/vmfs5.bin.gz": ("VMFS5", "68626efc-2ea12e18-b4ef-bc2411b17e28", "vmfs5", "68626efc-23ce1cd0-1f8b-bc2411b17e28",
                          "68626efc-2be4f100-0635-bc2411b17e28", 0, 7, 1),
    "vmfs/span/vmfs6-span-0.bin.gz": ("VMFS6", "6862738b-d20b2898-167a-bc2411b17e28", "vmfs6-span",
                                      "6862738b-c7203ba8-d2d6-bc2411b17e28", None, 0, 7, 2),
}


@pytest.mark.parametrize("name", sorted(VOLUMES))
def test_real_volume(images, name):
    version, uuid, label, lvm_uuid, device_uuid, first, last, devices = VOLUMES[name]
    h = header(images, name)
    assert (h.vmfs_version, h.uuid, h.label) == (version, uuid, label)
    assert (h.lvm.lvm_uuid, h.lvm.first_pe, h.lvm.last_pe, h.lvm.num_devices) == (lvm_uuid, first, last, devices)
    assert h.fs_lvm_uuid == lvm_uuid and h.lvm.head and not h.has_gpt and h.block_size == 1 << 20
    if device_uuid:
        assert h.lvm.device_uuid == device_uuid
    assert h.fs3_offset == 0x1100000 + 0x200000 and h.data_offset == 0x1100000
    # The device id of a QEMU ATA disk (hex): T10 designator type, serial + 6 model characters.
    d = h.disk_id
    assert (d.type, d.length, d.lun, d.raw, d.naa, d.encoding) == (1, 26, 0, QEMU_ID, None, "text")
    assert (d.vendor, d.model, d.revision) == ("", "", "")
    assert not vmfs.matches(h, "600144f0b6a1c6b0000051a4d5e20001", "COMSTAR")


def test_real_non_head_extent_and_span(images):
    head = header(images, "vmfs/span/vmfs6-span-0.bin.gz")
    other = header(images, "vmfs/span/vmfs6-span-1.bin.gz")
    # debugvmfs6 A B show lvm.extent[1]: UUID 68627394-1486b630-8265-…, First/Last Segment 8/15
    assert not other.has_fs and not other.lvm.head and other.problem is None
    assert (other.lvm.lvm_uuid, other.lvm.device_uuid) == (head.lvm.lvm_uuid, "68627394-1486b630-8265-bc2411b17e28")
    assert (other.lvm.first_pe, other.lvm.last_pe, other.lvm.num_devices) == (8, 15, 2)
    assert other.disk_id.raw == b"QM00015" + b" " * 13 + b"QEMU H"
    assert head.lvm.device_names == [f"t10.ATA_____QEMU_HARDDISK{'_' * 27}QM000{n}{'_' * 13}:1" for n in (13, 15)]
    (v,) = vmfs.group_volumes([("span-0", head), ("span-1", other)])
    assert (v.label, v.missing(), v.ordinal("span-0"), v.ordinal("span-1")) == ("vmfs6-span", [], 0, 1)
    (alone,) = vmfs.group_volumes([("span-1", other)])
    assert alone.missing() == ["the head extent (the one holding the VMFS descriptor)"]
    (head_only,) = vmfs.group_volumes([("span-0", head)])
    assert head_only.missing() == ["1 of its 2 extents"]  # ATA names: no NAA to name it by


@pytest.mark.parametrize("major", [3, 4, 5, 6])
def test_real_lvm_devices_without_vmfs(images, major):
    # dissect.vmfs's own tests: one logical volume named lvm<N> of 512 MiB on each.
    h = header(images, f"lvm/lvm{major}.bin.gz")
    assert h.lvm.major == major and not h.has_fs and h.lvm.head
    assert (h.lvm.volume_name, h.lvm.volume_bytes) == (f"lvm{major}", 512 << 20)
    assert "no FS3 descriptor" in h.problem
    assert h.disk_id.raw == b"QM00007" + b" " * 13 + b"QEMU H"


@pytest.mark.parametrize("name, version", [("vmfs/vmfs6l.bin.gz", "VMFS6-L"), ("vmfs/vmfs5l.bin.gz", "VMFS5-L")])
def test_real_vmfs_l(images, name, version):
    h = header(images, name)
    assert h.vmfs_version == version and h.local and h.label == Path(name).name.split(".")[0]


@pytest.mark.parametrize("name", ["vmfs/vmfs6d.bin.gz", "vmfs/vmfs5d.bin.gz"])
def test_real_volume_without_lvm_is_refused_clearly(images, name):
    with pytest.raises(UsageError, match="no VMFS LVM header"):
        header(images, name)


# --------------------------------------------------------------------------- live cross-check
def _sparse(images: Path, name: str) -> Path:
    """The image decompressed once into the cache, zero runs left as holes."""
    out = CACHE / "bin" / name.removesuffix(".gz")
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        with gzip.open(images / name) as src, open(tmp, "wb") as dst:
            pos = 0
            while chunk := src.read(1 << 20):
                for i in range(0, len(chunk), 1 << 16):  # holes at 64 KiB: most of a test image is zeros
                    piece = chunk[i:i + (1 << 16)]
                    if piece.count(0) != len(piece):
                        dst.seek(pos + i)
                        dst.write(piece)
                pos += len(chunk)
            dst.truncate(pos)
        tmp.rename(out)
    return out


@pytest.mark.parametrize("name, tool", [("vmfs/vmfs6.bin.gz", "debugvmfs6"), ("vmfs/vmfs5.bin.gz", "debugvmfs")])
def test_independent_reader_agrees(images, name, tool):
    path = shutil.which(tool) or f"/usr/sbin/{tool}"
    if not Path(path).exists():
        pytest.skip(f"{tool} is not installed (Debian {'vmfs6-tools' if tool.endswith('6') else 'vmfs-tools'})")
    image = _sparse(images, name)

    def show(*what: str) -> dict[str, str]:
        p = subprocess.run([path, str(image), "show", *what], capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        return {m[1].strip(): m[2].strip() for m in re.finditer(r"^\s*([^:\n]+):\s*(.*)$", p.stdout, re.M)}

    h = header(images, name)
    fs, lvm, extent = show(), show("lvm"), show("lvm.extent[0]")
    assert (fs["UUID"], fs["Label"], int(fs["Volume Version"])) == (h.uuid, h.label, h.fs_major)
    assert (lvm["UUID"], int(lvm["Num. Extents"])) == (h.lvm.lvm_uuid, h.lvm.num_devices)
    assert (extent["UUID"], int(extent["LUN"])) == (h.lvm.device_uuid, h.disk_id.lun)
    assert (int(extent["First Segment"]), int(extent["Last Segment"])) == (h.lvm.first_pe, h.lvm.last_pe)

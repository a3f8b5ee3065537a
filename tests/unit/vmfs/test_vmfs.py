"""esxdr.vmfs: volumes written by the lab writer, read back by esxdr and by independent readers.

debugvmfs6 (Debian vmfs6-tools) and debugvmfs (vmfs-tools, VMFS5) were written by no one here:
when they open a volume esxdr wrote and print its UUID and label, the layout is what those
readers, built from real volumes, expect. They read partitions (MBR type 0xfb at most, no GPT),
so the tests hand them the partition of a whole-LUN image, as `losetup -o` would.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from esxdr import vmfs
from esxdr.cli.main import run
from esxdr.errors import UsageError

NAA = "600144f0b6a1c6b0000051a4d5e20001"
NAA2 = "600144f0b6a1c6b0000051a4d5e20002"
UUID = "5f1e2d3c-a1b2c3d4-e5f6-001122334455"
DEBUGVMFS6 = shutil.which("debugvmfs6") or "/usr/sbin/debugvmfs6"
DEBUGVMFS = shutil.which("debugvmfs") or "/usr/sbin/debugvmfs"


@pytest.fixture()
def lun(tmp_path):
    p = tmp_path / "lun0.img"
    vmfs.write_vmfs(p, uuid=UUID, label="datastore1", naa=NAA, product_id="COMSTAR", vendor="SUN",
                    revision="1.0", lun=3, size=64 << 20)
    return p


def partition_of(image: Path, out: Path) -> Path:
    """The GPT partition of a LUN image as a file of its own (sparse), like `losetup -o 1MiB`."""
    h = vmfs.inspect(image)
    size = image.stat().st_size - h.partition_offset - 34 * 512
    with open(image, "rb") as src, open(out, "wb") as dst:
        src.seek(h.partition_offset)
        done = 0
        while done < size:
            chunk = src.read(min(1 << 20, size - done))
            if chunk.count(0) != len(chunk):
                dst.seek(done)
                dst.write(chunk)
            done += len(chunk)
        dst.truncate(size)
    return out


def tool(path: str, *args: str | Path) -> dict[str, str]:
    """`debugvmfs[6] FILE... show ...`: its "Name: value" lines."""
    if not Path(path).exists():
        pytest.skip(f"{path} is not installed (Debian {'vmfs6-tools' if path.endswith('6') else 'vmfs-tools'}; "
                    "scripts/setup installs it)")
    p = subprocess.run([path, *map(str, args)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, f"{path} {args}: exit {p.returncode}: {p.stderr.strip()}"
    return {m[1].strip(): m[2].strip() for m in re.finditer(r"^\s*([^:\n]+):\s*(.*)$", p.stdout, re.M)}


# --------------------------------------------------------------------------- independent readers
def test_debugvmfs6_reads_what_the_lab_writes(lun, tmp_path):
    part = partition_of(lun, tmp_path / "lun0.part")
    shown = tool(DEBUGVMFS6, part, "show")
    assert (shown["UUID"], shown["Label"], shown["Volume Version"]) == (UUID, "datastore1", "24")
    h = vmfs.inspect(lun)
    lvm = tool(DEBUGVMFS6, part, "show", "lvm")
    assert (lvm["UUID"], lvm["Num. Extents"]) == (h.lvm.lvm_uuid, "1")
    extent = tool(DEBUGVMFS6, part, "show", "lvm.extent[0]")
    assert (extent["UUID"], extent["LUN"], extent["First Segment"]) == (h.lvm.device_uuid, "3", "0")
    listing = subprocess.run([DEBUGVMFS6, str(part), "ls", "/"], capture_output=True, text=True).stdout.split()
    assert {".fbb.sf", ".fdc.sf", ".pbc.sf", ".sbc.sf", ".pb2.sf"} <= set(listing)


def test_debugvmfs_reads_a_vmfs5_partition_image(tmp_path):
    p = tmp_path / "part5.img"
    h = vmfs.write_vmfs(p, uuid=UUID, label="old5", naa=NAA, product_id="SOLARIS", vmfs=5, bare=True, size=32 << 20)
    shown = tool(DEBUGVMFS, p, "show")
    assert (shown["UUID"], shown["Label"], shown["Volume Version"]) == (UUID, "old5", "14")
    assert tool(DEBUGVMFS, p, "show", "lvm")["UUID"] == h.lvm.lvm_uuid


def test_debugvmfs6_reads_a_volume_spanning_two_luns(tmp_path):
    # Every extent but the last holds whole 256 MiB physical extents: a sparse 300 MiB file.
    a, b = tmp_path / "a.img", tmp_path / "b.img"
    heads = vmfs.write_volume([vmfs.Extent(a, NAA, "COMSTAR", lun=1, size=300 << 20, bare=True),
                               vmfs.Extent(b, NAA2, "COMSTAR", lun=2, size=48 << 20, bare=True)],
                              uuid=UUID, label="spanned")
    shown = tool(DEBUGVMFS6, a, b, "show")
    assert (shown["UUID"], shown["Label"]) == (UUID, "spanned")
    lvm = tool(DEBUGVMFS6, a, b, "show", "lvm")
    assert (lvm["UUID"], lvm["Num. Extents"]) == (heads[0].lvm.lvm_uuid, "2")
    second = tool(DEBUGVMFS6, a, b, "show", "lvm.extent[1]")
    assert (second["First Segment"], second["Last Segment"], second["LUN"]) == ("1", "1", "2")


# --------------------------------------------------------------------------- esxdr's own reading
def test_whole_lun_round_trip(lun):
    h = vmfs.inspect(lun)
    assert h.has_gpt and h.partition_offset == 2048 * 512
    assert (h.lvm_major, h.fs_major, h.vmfs_version) == (6, 24, "VMFS6")
    assert h.uuid == UUID and h.label == "datastore1" and h.block_size == 1 << 20
    assert h.data_offset == vmfs.DEFAULT_DATA_OFFSET
    assert h.lvm.head and h.lvm.num_devices == 1 and h.lvm.device_names == [f"naa.{NAA}:1"]
    assert h.fs_lvm_uuid == h.lvm.lvm_uuid  # the filesystem names the logical volume it lives on
    assert vmfs.matches(h, NAA, "COMSTAR") and vmfs.matches(h, "naa." + NAA.upper(), "COMSTAR")
    assert not vmfs.matches(h, NAA[:-1] + "2", "COMSTAR")
    assert not vmfs.matches(h, NAA, "SOLARIS")


def test_device_id_is_the_binary_naa_and_six_product_characters(lun):
    # docs/vmfs.md: type 3 (NAA designator), the 16 designator bytes, "COMSTA"; len 22.
    h = vmfs.inspect(lun)
    d = h.disk_id
    assert (d.type, d.length, d.lun) == (3, 22, 3)
    assert d.raw == bytes.fromhex(NAA) + b"COMSTA"
    assert (d.naa, d.suffix, d.encoding, d.id) == (NAA, "COMSTA", "naa-binary", f"naa.{NAA}+COMSTA")
    assert (d.vendor, d.model, d.revision) == ("SUN", "COMSTAR", "1.0")
    assert vmfs.expected_device_id(NAA, "COMSTAR ") == d.raw
    assert vmfs.lun_differs(h, 1) and not vmfs.lun_differs(h, 3) and not vmfs.lun_differs(h, None)


def test_exact_offsets(lun):
    raw = lun.read_bytes()
    part = 2048 * 512
    lvm = part + 0x100000
    assert raw[512:520] == b"EFI PART"
    assert struct.unpack_from("<II", raw, lvm) == (0xC001D00D, 6)
    assert raw[lvm + 0x0C:lvm + 0x0E] == bytes([3, 22])
    assert raw[lvm + 0x2E:lvm + 0x2E + 22] == bytes.fromhex(NAA) + b"COMSTA"
    assert struct.unpack_from("<Q", raw, lvm + 0x7A)[0] == 0x1100000
    fs = part + 0x1100000 + 0x200000  # the volume starts at the data offset (vmfs-tools, dissect.vmfs)
    assert struct.unpack_from("<II", raw, fs) == (0x2FABF15E, 24)
    assert raw[fs + 0x1D:fs + 0x1D + 10] == b"datastore1"
    assert vmfs.format_uuid(raw[fs + 9:fs + 25]) == UUID
    # LVM6: volume table at mdAlignment (0x1000), the LVM UUID at +0x54, logical volume size first
    vt = lvm + 0x1000
    assert vmfs.format_uuid(raw[vt + 0x54:vt + 0x64]) == vmfs.inspect(lun).lvm.lvm_uuid
    assert raw[fs + 0xB1:fs + 0xC1] == raw[vt + 0x54:vt + 0x64]


@pytest.mark.parametrize("stored, product, ok", [
    (NAA + "COMSTA", "COMSTAR", True),  # what esxdr and esxsim wrote before: hex text + product
    (NAA, "COMSTAR", True),  # hex text alone (older esxsim volumes)
    (NAA + "SOLARI", "COMSTAR", False),
    (bytes.fromhex(NAA) + b"COMSTA", "COMSTAR", True),
    (bytes.fromhex(NAA), "COMSTAR", False),  # ESXi's form always carries the product characters
    ("60000000000000000e00000000010001IET", "COMSTAR", False),
], ids=["hex-text+product", "hex-text", "hex-text+other-product", "binary+product", "binary-alone", "other-naa"])
def test_stored_forms(tmp_path, stored, product, ok):
    h = vmfs.write_vmfs(tmp_path / "x.img", uuid=UUID, label="x", naa=NAA, product_id="COMSTAR", size=32 << 20,
                        device_id=stored)
    assert vmfs.matches(h, NAA, product) is ok


def test_bare_partition_and_vmfs5(tmp_path):
    p = tmp_path / "part.img"
    vmfs.write_vmfs(p, uuid=UUID, label="old", naa=NAA, product_id="SOLARIS", vmfs=5, bare=True, size=32 << 20)
    h = vmfs.inspect(p)
    assert not h.has_gpt and h.partition_offset == 0 and h.vmfs_version == "VMFS5"
    assert h.lvm.major == 5 and h.lvm.lvm_uuid and h.disk_id.naa == NAA


def test_older_single_lun_header_without_volume_table(tmp_path):
    # What tests/integration/conftest_esxsim.py writes: an LVM header and an FS3 descriptor only.
    p = tmp_path / "old.img"
    with open(p, "wb") as f:
        f.truncate(64 << 20)
        lvm = bytearray(0x200)
        struct.pack_into("<II", lvm, 0, 0xC001D00D, 6)
        lvm[0x0C], lvm[0x0D] = 3, 38
        lvm[0x2E:0x2E + 38] = (NAA + "VIRTUA").encode()
        struct.pack_into("<Q", lvm, 0x7A, 0x1100000)
        f.seek(0x100000)
        f.write(lvm)
        fs3 = bytearray(0x200)
        struct.pack_into("<II", fs3, 0, 0x2FABF15E, 24)
        fs3[0x09:0x19] = vmfs.parse_uuid(UUID)
        fs3[0x1D:0x1D + 3] = b"old"
        f.seek(0x1100000 + 0x200000)
        f.write(fs3)
    h = vmfs.inspect(p)
    assert (h.uuid, h.label, h.lvm.lvm_uuid, h.lvm.head) == (UUID, "old", None, True)
    assert vmfs.matches(h, NAA, "VIRTUAL-DISK")


@pytest.mark.parametrize("content, words", [
    (b"", "empty file"),
    (b"\0" * (4 << 20), "no VMFS LVM header"),
])
def test_unknown_data(tmp_path, content, words):
    p = tmp_path / "x.img"
    p.write_bytes(content)
    with pytest.raises(UsageError, match=words):
        vmfs.inspect(p)


def test_head_without_fs3_is_read_and_named(lun):
    with open(lun, "r+b") as f:
        f.seek(2048 * 512 + 0x1100000 + 0x200000)
        f.write(b"\0" * 16)
    h = vmfs.inspect(lun)
    assert not h.has_fs and h.lvm.head and h.lvm.lvm_uuid
    assert "no FS3 descriptor" in h.problem and "damaged" in h.problem


def test_too_small(tmp_path):
    with pytest.raises(UsageError, match="too small"):
        vmfs.write_vmfs(tmp_path / "s.img", uuid=UUID, label="x", naa=NAA, product_id="P", size=20 << 20)


@pytest.mark.parametrize("bad", ["xyz", "5f1e2d3c-a1b2c3d4-e5f6", "5f1e2d3c-a1b2c3d4-e5f6-00112233445g"])
def test_bad_uuid(bad):
    with pytest.raises(UsageError):
        vmfs.parse_uuid(bad)


# --------------------------------------------------------------------------- spanned volumes
@pytest.fixture()
def spanned(tmp_path):
    a, b = tmp_path / "a.img", tmp_path / "b.img"
    vmfs.write_volume([vmfs.Extent(a, NAA, "COMSTAR", lun=1, size=300 << 20),
                       vmfs.Extent(b, NAA2, "COMSTAR", lun=2, size=64 << 20)], uuid=UUID, label="spanned")
    return a, b


def test_non_head_extent_is_read(spanned):
    a, b = spanned
    head, other = vmfs.inspect(a), vmfs.inspect(b)
    assert head.lvm.head and head.uuid == UUID and head.lvm.device_names == [f"naa.{NAA}:1", f"naa.{NAA2}:1"]
    assert not other.lvm.head and not other.has_fs and other.problem is None
    assert other.lvm.lvm_uuid == head.lvm.lvm_uuid and other.lvm.num_devices == 2
    assert (other.lvm.first_pe, other.lvm.last_pe) == (1, 1)
    assert other.disk_id.naa == NAA2 and other.disk_id.lun == 2 and vmfs.matches(other, NAA2, "COMSTAR")
    assert other.lvm.pe_map == [(256 << 20, 0x1100000, other.lvm.pe_map[0][2])]


def test_grouped_extents_and_what_is_missing(spanned):
    a, b = spanned
    found = [("a", vmfs.inspect(a)), ("b", vmfs.inspect(b))]
    (v,) = vmfs.group_volumes(found)
    assert (v.label, v.uuid, v.num_devices, v.missing()) == ("spanned", UUID, 2, [])
    assert (v.ordinal("a"), v.ordinal("b")) == (0, 1)
    (only_head,) = vmfs.group_volumes(found[:1])
    assert only_head.missing() == [f"extent 1 on naa.{NAA2}"]
    assert "spans 2 LUNs" in only_head.describe_missing() and f"naa.{NAA2}" in only_head.describe_missing()
    (only_other,) = vmfs.group_volumes(found[1:])
    assert only_other.missing() == ["the head extent (the one holding the VMFS descriptor)"]
    assert only_other.ordinal("b") is None  # known only from the head's device table


def test_every_extent_but_the_last_holds_whole_physical_extents(tmp_path):
    with pytest.raises(UsageError, match="whole 256 MiB physical extents"):
        vmfs.write_volume([vmfs.Extent(tmp_path / "a.img", NAA, "COMSTAR", size=64 << 20),
                           vmfs.Extent(tmp_path / "b.img", NAA2, "COMSTAR", size=64 << 20)], uuid=UUID, label="x")


# --------------------------------------------------------------------------- CLI
def test_cli_inspect(lun, tmp_path, capsys):
    assert run(["vmfs", "inspect", str(lun), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["uuid"] == UUID and d["disk_id"]["id"] == f"naa.{NAA}+COMSTA" and d["vmfs_version"] == "VMFS6"
    assert d["ordinal"] == 0 and d["volume"]["complete"]
    assert run(["vmfs", "inspect", str(lun)]) == 0
    assert "datastore1" in capsys.readouterr().out
    assert run(["vmfs", "inspect", str(tmp_path / "missing.img")]) == 2
    assert "cannot open" in capsys.readouterr().err


def test_cli_inspect_lvm_only_extent(spanned, capsys):
    a, b = spanned
    assert run(["vmfs", "inspect", str(b), "--json"]) == 0  # it used to be refused: no FS3 descriptor
    d = json.loads(capsys.readouterr().out)
    assert d["disk_id"]["naa"] == NAA2 and d["lvm"]["lvm_uuid"] and not d["head_extent"]
    assert d["ordinal"] is None and d["volume"]["missing"] == ["the head extent (the one holding the VMFS descriptor)"]
    assert run(["vmfs", "inspect", str(a), str(b), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert [(e["path"], e["ordinal"]) for e in d["extents"]] == [(str(a), 0), (str(b), 1)]
    assert d["volumes"][0]["complete"] and d["volumes"][0]["label"] == "spanned"
    assert run(["vmfs", "inspect", str(b)]) == 0
    out = capsys.readouterr().out
    assert "not the head extent" in out and "missing the head extent" in out and f"naa.{NAA2}+COMSTA" in out

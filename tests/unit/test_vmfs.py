"""esxdr.vmfs: the LVM header and FS3 descriptor at DESIGN.md's offsets, written and read back."""

from __future__ import annotations

import json
import struct

import pytest

from esxdr import vmfs
from esxdr.cli.main import run
from esxdr.errors import UsageError

NAA = "600144f0b6a1c6b0000051a4d5e20001"
UUID = "5f1e2d3c-a1b2c3d4-e5f6-001122334455"


@pytest.fixture()
def lun(tmp_path):
    p = tmp_path / "lun0.img"
    vmfs.write_vmfs(p, uuid=UUID, label="datastore1", naa=NAA, product_id="COMSTAR", vendor="SUN",
                    revision="1.0", lun=0, size=32 << 20)
    return p


def test_whole_lun_round_trip(lun):
    h = vmfs.inspect(lun)
    assert h.has_gpt and h.partition_offset == 2048 * 512
    assert (h.lvm_major, h.fs_major, h.vmfs_version) == (6, 24, "VMFS6")
    assert h.uuid == UUID and h.label == "datastore1"
    assert h.disk_id.id == NAA + "COMSTA" and h.disk_id.model == "COMSTAR" and h.disk_id.vendor == "SUN"
    assert h.data_offset == vmfs.DEFAULT_DATA_OFFSET
    assert vmfs.matches(h, NAA, "COMSTAR") and vmfs.matches(h, "naa." + NAA.upper(), "COMSTAR")
    assert not vmfs.matches(h, NAA[:-1] + "2", "COMSTAR")
    assert not vmfs.matches(h, NAA, "SOLARIS")


def test_exact_offsets(lun):
    raw = lun.read_bytes()
    part = 2048 * 512
    lvm = part + 0x100000
    assert raw[512:520] == b"EFI PART"
    assert struct.unpack_from("<II", raw, lvm) == (0xC001D00D, 6)
    assert raw[lvm + 0x2E:lvm + 0x2E + 32].decode() == NAA
    assert struct.unpack_from("<Q", raw, lvm + 0x7A)[0] == 0x1100000
    for fs in (part + 0x1100000 + 0x200000, part + 0x200000):  # both readings of "volume offset"
        assert struct.unpack_from("<II", raw, fs) == (0x2FABF15E, 24)
        assert raw[fs + 0x1D:fs + 0x1D + 10] == b"datastore1"
    assert vmfs.format_uuid(raw[part + 0x200000 + 9:part + 0x200000 + 25]) == UUID


def test_bare_partition_and_vmfs5(tmp_path):
    p = tmp_path / "part.img"
    vmfs.write_vmfs(p, uuid=UUID, label="old", naa=NAA, product_id="SOLARIS", vmfs=5, bare=True, size=24 << 20)
    h = vmfs.inspect(p)
    assert not h.has_gpt and h.partition_offset == 0 and h.vmfs_version == "VMFS5"


def test_expected_device_id():
    assert vmfs.expected_device_id(NAA, "COMSTAR ") == NAA + "COMSTA"
    assert vmfs.expected_device_id("naa." + NAA, None) == NAA


def test_snapshot_device_id(tmp_path):
    p = tmp_path / "snap.img"
    h = vmfs.write_vmfs(p, uuid=UUID, label="x", naa=NAA, product_id="COMSTAR", size=32 << 20,
                        device_id="60000000000000000e00000000010001IET")
    assert not vmfs.matches(h, NAA, "COMSTAR")


@pytest.mark.parametrize("content, words", [
    (b"", "empty file"),
    (b"\0" * (4 << 20), "no VMFS LVM header"),
])
def test_unknown_data(tmp_path, content, words):
    p = tmp_path / "x.img"
    p.write_bytes(content)
    with pytest.raises(UsageError, match=words):
        vmfs.inspect(p)


def test_damaged_fs3(lun):
    with open(lun, "r+b") as f:
        for off in (2048 * 512 + 0x1100000 + 0x200000, 2048 * 512 + 0x200000):
            f.seek(off)
            f.write(b"\0" * 16)
    with pytest.raises(UsageError, match="no FS3 descriptor"):
        vmfs.inspect(lun)


def test_too_small(tmp_path):
    with pytest.raises(UsageError, match="too small"):
        vmfs.write_vmfs(tmp_path / "s.img", uuid=UUID, label="x", naa=NAA, product_id="P", size=1 << 20)


@pytest.mark.parametrize("bad", ["xyz", "5f1e2d3c-a1b2c3d4-e5f6", "5f1e2d3c-a1b2c3d4-e5f6-00112233445g"])
def test_bad_uuid(bad):
    with pytest.raises(UsageError):
        vmfs.parse_uuid(bad)


def test_cli_inspect(lun, tmp_path, capsys):
    assert run(["vmfs", "inspect", str(lun), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["uuid"] == UUID and d["disk_id"]["id"] == NAA + "COMSTA" and d["vmfs_version"] == "VMFS6"
    assert run(["vmfs", "inspect", str(lun)]) == 0
    assert "datastore1" in capsys.readouterr().out
    assert run(["vmfs", "inspect", str(tmp_path / "missing.img")]) == 2
    assert "cannot open" in capsys.readouterr().err

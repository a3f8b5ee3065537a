"""The drill's present step refuses a datastore that spans LUNs when one of its extents is not presented.

The step imports the drill manifest into tgt, then logs in as the DR host and reads each LU's
identity and VMFS headers. Here tgt and the iSCSI session are stand-ins: the session serves
LUN images written by esxdr.vmfs (a volume over two LUNs), so the refusal is checked without a
target; tests/integration/test_spanned_datastore.py does the same against tgtd and esxsim.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from esxdr import vmfs
from esxdr.errors import ConflictError
from esxdr.model.manifest import Backing, LogicalUnit, Manifest, Naa, Target, View
from esxdr.recovery import steps as recovery_steps
from esxdr.targets import probe
from esxdr.targets.probe import LunIdentity

IQN = "iqn.2024-01.io.esxdr:drill"
HEAD = "600144f0b6a1c6b0000051a4d5e20001"
TAIL = "600144f0b6a1c6b0000051a4d5e20002"
OTHER = "600144f0b6a1c6b0000051a4d5e20003"


class FakeSession:
    """Serves `luns`: LUN number -> (NAA, image file)."""

    luns: dict[int, tuple[str, Path]] = {}

    def __init__(self, *a, **kw) -> None:
        pass

    def __enter__(self) -> FakeSession:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def report_luns(self) -> list[int]:
        return sorted(self.luns)

    def identify(self, n: int) -> LunIdentity:
        naa, path = self.luns[n]
        return LunIdentity(lun=n, device_type=0, vendor="SUN", product="COMSTAR", revision="1.0", serial=None,
                           naa=naa, block_size=512, size_bytes=path.stat().st_size)

    def reader(self, n: int, block_size: int):
        path = self.luns[n][1]

        def read_at(offset: int, length: int) -> bytes:
            with open(path, "rb") as f:
                f.seek(offset)
                return f.read(length)
        return read_at


@pytest.fixture()
def images(tmp_path) -> dict[str, Path]:
    out = {}
    for naa, size in ((HEAD, 300 << 20), (TAIL, 64 << 20), (OTHER, 64 << 20)):
        p = tmp_path / f"{naa[-4:]}.img"
        with open(p, "wb") as f:
            f.truncate(size)
        out[naa] = p
    vmfs.write_volume([vmfs.Extent(out[HEAD], HEAD, "COMSTAR", lun=1), vmfs.Extent(out[TAIL], TAIL, "COMSTAR", lun=2)],
                      uuid=vmfs.new_uuid(), label="wide")
    vmfs.write_vmfs(out[OTHER], uuid=vmfs.new_uuid(), label="single", naa=OTHER, product_id="COMSTAR", lun=3)
    return out


def present(monkeypatch, images: dict[str, Path], naas: list[str]) -> list[str]:
    monkeypatch.setattr(FakeSession, "luns", {i + 1: (n, images[n]) for i, n in enumerate(naas)})
    monkeypatch.setattr(probe, "Session", FakeSession)
    monkeypatch.setattr("esxdr.targets.tgt.apply", lambda *a, **kw: None)
    m = Manifest(targets=[Target(iqn=IQN)], logical_units=[
        LogicalUnit(naa=Naa.parse(n), backing=Backing("file", str(images[n])), size_bytes=images[n].stat().st_size,
                    product_id="COMSTAR", vendor_id="SUN", views=[View(lun=i + 1, target=IQN)])
        for i, n in enumerate(naas)])
    d = SimpleNamespace(target=lambda: None, g=SimpleNamespace(name="core"),
                        server=SimpleNamespace(target=SimpleNamespace(control_port=1, portal_address="127.0.0.2",
                                                                      portal_port=3260)))
    step = SimpleNamespace(params={"manifest": m.to_dict(), "luns": [{"naa": n} for n in naas]})
    return recovery_steps._s_present(d, step, None)


def test_every_extent_presented(monkeypatch, images):
    said = present(monkeypatch, images, [HEAD, TAIL, OTHER])
    assert said == [f"naa.{n} on the wire (SUN/COMSTAR)" for n in (HEAD, TAIL, OTHER)]


def test_an_extent_left_out_is_refused_naming_it(monkeypatch, images):
    # The group holds the head LUN and another datastore's LUN, not the second extent.
    with pytest.raises(ConflictError) as e:
        present(monkeypatch, images, [HEAD, OTHER])
    assert "VMFS volume 'wide'" in e.value.message and f"missing extent 1 on naa.{TAIL}" in e.value.message
    assert "protection group core" in e.value.hint


def test_the_head_left_out_is_refused(monkeypatch, images):
    with pytest.raises(ConflictError, match="missing the head extent"):
        present(monkeypatch, images, [TAIL])

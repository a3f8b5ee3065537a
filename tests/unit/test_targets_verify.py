"""`esxdr target verify` without a target: the report's verdict, and verify() over a scripted session.

tests/integration/test_targets_tgt.py probes a real tgtd; here the iSCSI session is replaced by one that
answers from a table, so every verdict (and the CLI's exit status) is checked on its own.
"""

from __future__ import annotations

import json

import pytest

from esxdr.cli.main import run
from esxdr.targets import verify as verify_mod
from esxdr.targets.manifest import Backing, LogicalUnit, Manifest, Naa, Target, View, save
from esxdr.targets.probe import LunIdentity
from esxdr.targets.verify import LuCheck, VerifyReport, verify

IQN = "iqn.2010-09.org.example:dr"
INITIATOR = "iqn.1998-01.com.vmware:esxi-dr"
NAA_A = "600144f0b6a1c6b0000051a4d5e20001"
NAA_B = "600144f0b6a1c6b0000051a4d5e20002"
STRAY = "600144f0b6a1c6b0000051a4d5e2ffff"


def _lu(naa: str, lun: int) -> LogicalUnit:
    return LogicalUnit(naa=Naa.parse(naa), backing=Backing("file", f"/tank/{naa[-4:]}.img"), size_bytes=1 << 20,
                       serial=f"SN{naa[-4:]}", product_id="COMSTAR", vendor_id="SUN",
                       views=[View(lun=lun, target=IQN)])


def _manifest() -> Manifest:
    return Manifest(targets=[Target(iqn=IQN)], logical_units=[_lu(NAA_A, 1), _lu(NAA_B, 2)])


def _wire(lun: int, naa: str, device_type: int = 0) -> LunIdentity:
    return LunIdentity(lun=lun, device_type=device_type, vendor="SUN", product="COMSTAR", revision="1.0",
                       serial=f"SN{naa[-4:]}", naa=naa, block_size=512, size_bytes=1 << 20)


class ScriptedSession:
    """Stands in for esxdr.targets.probe.Session: serves the LUNs of `served`, one round trip per call."""

    served: dict[int, LunIdentity] = {}

    def __init__(self, address: str, port: int, *, target: str, initiator: str, chap: object = None,
                 timeout: float = 10.0) -> None:
        self.round_trips = 0

    def login(self) -> None:
        self.round_trips += 2

    def report_luns(self) -> list[int]:
        self.round_trips += 1
        return sorted(self.served)

    def identify(self, lun: int) -> LunIdentity:
        self.round_trips += 3
        return self.served[lun]

    def close(self) -> None:
        pass


@pytest.fixture
def serve(monkeypatch: pytest.MonkeyPatch):
    def serve(*luns: LunIdentity) -> None:
        monkeypatch.setattr(ScriptedSession, "served", {w.lun: w for w in luns})
    monkeypatch.setattr(verify_mod, "Session", ScriptedSession)
    return serve


# ---------------------------------------------------------------- the report's verdict

def test_report_with_every_check_ok_is_ok():
    r = VerifyReport(portal="127.0.0.2:3260", checks=[LuCheck(NAA_A, IQN, 1, True)])
    assert r.ok and r.to_dict()["ok"] is True
    assert "FAIL" not in r.text()


def test_an_unexpected_lu_fails_the_report():
    # It used to print "FAIL unexpected LU" and still report ok (and exit 0 from the CLI).
    r = VerifyReport(portal="127.0.0.2:3260", checks=[LuCheck(NAA_A, IQN, 1, True)],
                     unexpected=[{"target": IQN, "lun": 7, "esxi_name": f"naa.{STRAY}", "product": "COMSTAR",
                                  "serial": None}])
    assert r.ok is False
    assert r.to_dict()["ok"] is False
    text = r.text()
    assert f"FAIL unexpected LU naa.{STRAY} on {IQN} LUN 7 (not in the manifest)" in text
    assert "1/1 LUs as in the manifest, 1 not in it;" in text


def test_a_failed_check_or_an_error_fails_the_report():
    assert VerifyReport(portal="p", checks=[LuCheck(NAA_A, IQN, 1, False, ["x"])]).ok is False
    assert VerifyReport(portal="p", checks=[LuCheck(NAA_A, IQN, 1, True)], errors=["t: login failed"]).ok is False


# ---------------------------------------------------------------- verify() over a scripted session

def test_verify_every_lu_as_in_the_manifest(serve):
    serve(_wire(0, "", device_type=0x0C), _wire(1, NAA_A), _wire(2, NAA_B))  # LUN 0: tgt's controller
    r = verify(_manifest(), "127.0.0.2", initiator=INITIATOR, read_vmfs=False)
    assert [(c.naa, c.lun, c.ok, c.problems) for c in r.checks] == [(NAA_A, 1, True, []), (NAA_B, 2, True, [])]
    assert r.unexpected == [] and r.errors == []
    assert r.ok
    assert (r.sessions, r.round_trips) == (1, 2 + 1 + 3 * 3)


def test_verify_an_extra_lu_on_the_target_is_not_ok(serve):
    serve(_wire(1, NAA_A), _wire(2, NAA_B), _wire(7, STRAY))
    r = verify(_manifest(), "127.0.0.2", initiator=INITIATOR, read_vmfs=False)
    assert all(c.ok for c in r.checks)
    assert r.unexpected == [{"target": IQN, "lun": 7, "esxi_name": f"naa.{STRAY}", "product": "COMSTAR",
                             "serial": "SNffff"}]
    assert not r.ok


def test_verify_a_mangled_naa_is_missing_and_unexpected(serve):
    serve(_wire(1, NAA_A), _wire(2, STRAY))
    r = verify(_manifest(), "127.0.0.2", initiator=INITIATOR, read_vmfs=False)
    by = {c.naa: c for c in r.checks}
    assert by[NAA_A].ok
    assert not by[NAA_B].ok and by[NAA_B].lun is None
    assert by[NAA_B].problems == [f"not served by {IQN} at 127.0.0.2:3260 (it offers naa.{STRAY})"]
    assert [u["esxi_name"] for u in r.unexpected] == [f"naa.{STRAY}"]
    assert not r.ok


def test_cli_exits_5_and_counts_the_unexpected_lu(serve, tmp_path, capsys):
    serve(_wire(1, NAA_A), _wire(2, NAA_B), _wire(7, STRAY))
    path = tmp_path / "m.yaml"
    save(_manifest(), path)
    rc = run(["target", "verify", str(path), "--probe-portal", "127.0.0.2:3260", "--initiator", INITIATOR,
              "--no-vmfs", "--json"])
    out, err = capsys.readouterr()
    assert rc == 5
    assert json.loads(out.split('\n{\n  "error"')[0])["ok"] is False
    assert "1 problem(s): the DR target does not serve exactly the manifest's identities" in out + err

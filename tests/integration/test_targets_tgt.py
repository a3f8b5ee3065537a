"""Target identity on a real tgtd (127.0.0.3): import manifests from other stacks, then look from
the initiator side with esxdr's own iSCSI client. No mocks: tgtadm runs through LocalTransport.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from esxdr import vmfs
from esxdr.errors import UsageError
from esxdr.lab import tgtd as labtgtd
from esxdr.model.manifest import Auth, Manifest, Naa, Portal, load, save
from esxdr.plan import rewrite
from esxdr.targets import read_native, tgt
from esxdr.targets.base import Secrets
from esxdr.targets.probe import Chap, Session, discover
from esxdr.targets.verify import MOUNT, SNAPSHOT, verify
from esxdr.transport import LocalTransport

pytestmark = pytest.mark.integration

CORPUS = Path(__file__).parents[1] / "unit" / "targets" / "target_corpus"
ADDRESS = "127.0.0.3"
DR_INITIATOR = "iqn.1998-01.com.vmware:esxi-dr"


@pytest.fixture(scope="module")
def tgtd(tmp_path_factory):
    log = tmp_path_factory.mktemp("tgtd") / "tgtd.log"
    d = labtgtd.start(labtgtd.free_control_port(), ADDRESS, labtgtd.free_port(ADDRESS), str(log))
    yield d
    d.stop()


@pytest.fixture
def clean(tgtd):
    """Each test starts with an empty tgtd and leaves it empty."""
    tgtd.stop_targets = None
    yield tgtd
    for tid in tgtd.target_ids():
        tgtd.tgtadm("--op", "delete", "--mode", "target", "--tid", str(tid), "--force", check=False)


def comstar_prod() -> Manifest:
    m = read_native("comstar", sorted(str(p) for p in (CORPUS / "comstar").iterdir()))
    # Production's second target uses per-initiator CHAP; the DR lab network does without.
    for t in m.targets:
        t.auth = Auth()
    return m


def for_dr(m: Manifest, tmp: Path, tgtd) -> Manifest:
    """Production manifest -> DR: LUN files under tmp, DR portal, DR initiator in the ACLs."""
    m = rewrite.zvols_to_files(m, str(tmp / "{name}.img"))
    m = rewrite.map_paths(m, {"/export/iscsi": str(tmp / "files"), "/sp2/files": str(tmp / "files"),
                              "/tank/lab": str(tmp / "lab")})
    assert all(lu.backing.path.startswith(str(tmp)) for lu in m.logical_units)
    m = rewrite.set_portals(m, [Portal(tgtd.address, tgtd.port)])
    m = rewrite.allow_initiators(m, [DR_INITIATOR])
    for lu in m.logical_units:
        p = Path(lu.backing.path)
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(p, "wb") as f:
            f.truncate(lu.size_bytes)  # sparse: the size the LU had on production
    return m.validate()


def wire_identities(tgtd, m: Manifest, chap: Chap | None = None) -> dict[str, object]:
    out = {}
    for t in m.targets:
        with Session(tgtd.address, tgtd.port, target=t.iqn, initiator=DR_INITIATOR, chap=chap) as s:
            for n in s.report_luns():
                ident = s.identify(n)
                if ident.device_type == 0:
                    out[ident.naa] = ident
    return out


def test_comstar_origin_manifest_on_tgt(clean, tmp_path):
    tgtd = clean
    prod = comstar_prod()
    m = for_dr(prod, tmp_path, tgtd)
    # A VMFS6 volume on the first LU, written for this LUN's identity.
    lu0 = m.lu("600144f0b6a1c6b0000051a4d5e20001")
    vmfs.write_vmfs(lu0.backing.path, uuid="5f1e2d3c-a1b2c3d4-e5f6-001122334455", label="prod-ds1",
                    naa=lu0.naa, product_id=lu0.product_id, vendor=lu0.vendor_id)
    transport = LocalTransport("dr")
    result = tgt.apply(transport, m, control_port=tgtd.control_port)
    assert result.commands and not result.dry_run
    assert any("LUN 0 is tgt's controller" in n for n in result.notes)

    seen = wire_identities(tgtd, m)
    for lu in m.logical_units:
        if not lu.views:
            continue  # COMSTAR LU without views: not presented, as on production
        ident = seen[lu.naa.hex]
        assert ident.esxi_name == lu.naa.esxi_name
        assert ident.size_bytes == lu.size_bytes and ident.block_size == lu.block_size
        assert ident.serial == (lu.serial or ident.serial)
        assert ident.product == lu.product_id and ident.vendor == lu.vendor_id

    report = verify(m, tgtd.address, tgtd.port, initiator=DR_INITIATOR)
    assert report.ok, report.text()
    by_naa = {c.naa: c for c in report.checks}
    assert by_naa[lu0.naa.hex].prediction == MOUNT
    assert by_naa[lu0.naa.hex].vmfs["label"] == "prod-ds1"
    # One session per target, a bounded number of round trips per LU: the identity and header reads
    # (12), plus the LVM volume table and device table that place an extent in its volume (2).
    assert report.sessions == len([t for t in m.targets if m.luns_of(t.iqn)])
    assert report.round_trips <= report.sessions * 3 + len(report.checks) * 14

    # Idempotent: observe again, nothing left to do.
    again = tgt.apply(transport, m, control_port=tgtd.control_port)
    assert again.commands == [], again.text()
    # And export from the live tgt gives the same identities back.
    observed = tgt.observe(transport, tgtd.control_port)
    assert {lu.naa.hex for lu in observed.logical_units} == {lu.naa.hex for lu in m.logical_units if lu.views}


def test_iscsitgt_origin_manifest_with_chap(clean, tmp_path):
    tgtd = clean
    prod = read_native("iscsitgt", [str(CORPUS / "iscsitgt/iscsitgt.xml")])
    m = rewrite.set_chap(for_dr(prod, tmp_path, tgtd), "dr-chap", "secrets:dr-chap")
    secrets = Secrets({"dr-chap": "dr-chap-secret-1"})
    dry = tgt.apply(LocalTransport("dr"), m, control_port=tgtd.control_port, secrets=secrets, dry_run=True)
    assert dry.dry_run and tgtd.target_ids() == []  # dry run changed nothing
    assert "dr-chap-secret-1" not in dry.text()  # secrets masked in what is printed
    tgt.apply(LocalTransport("dr"), m, control_port=tgtd.control_port, secrets=secrets)

    found = dict(discover(tgtd.address, tgtd.port, initiator=DR_INITIATOR))
    assert set(found) == {t.iqn for t in m.targets}
    seen = wire_identities(tgtd, m, Chap("dr-chap", "dr-chap-secret-1"))
    for lu in m.logical_units:
        assert seen[lu.naa.hex].esxi_name == lu.naa.esxi_name
        assert seen[lu.naa.hex].size_bytes == lu.size_bytes
    report = verify(m, tgtd.address, tgtd.port, initiator=DR_INITIATOR, secrets=secrets)
    assert report.ok, report.text()
    # Without CHAP the login fails and verify says so instead of raising.
    bad = verify(m, tgtd.address, tgtd.port, initiator=DR_INITIATOR)
    assert not bad.ok and "authentication failed" in bad.text()


def test_mangled_naa_is_caught_by_verify(clean, tmp_path, capsys):
    tgtd = clean
    prod = comstar_prod()
    m = for_dr(prod, tmp_path, tgtd)
    tgt.apply(LocalTransport("dr"), m, control_port=tgtd.control_port)
    wrong = copy.deepcopy(m)
    lu = wrong.lu("600144f0b6a1c6b0000051a4d5e20002")
    lu.naa = Naa("600144f0b6a1c6b0000051a4d5e2ffff")
    report = verify(wrong, tgtd.address, tgtd.port, initiator=DR_INITIATOR)
    assert not report.ok
    failed = [c for c in report.checks if not c.ok]
    assert [c.naa for c in failed] == ["600144f0b6a1c6b0000051a4d5e2ffff"]
    assert "naa.600144f0b6a1c6b0000051a4d5e20002" in failed[0].problems[0]
    assert report.unexpected[0]["esxi_name"] == "naa.600144f0b6a1c6b0000051a4d5e20002"

    # The same through the CLI: exit 5, JSON on stdout.
    from esxdr.cli.main import run

    path = tmp_path / "wrong.yaml"
    save(wrong, path)
    assert run(["target", "verify", str(path), "--probe-portal", f"{tgtd.address}:{tgtd.port}",
                "--initiator", DR_INITIATOR, "--json"]) == 5
    out = json.loads(capsys.readouterr().out.split("\n{\n  \"error\"")[0])
    assert out["ok"] is False


def test_vmfs_header_of_another_device_predicts_snapshot(clean, tmp_path):
    tgtd = clean
    prod = read_native("tgt", [str(CORPUS / "tgt/targets.conf")])
    prod = rewrite.set_chap(prod, "c", "secrets:c")
    for lu in prod.logical_units:
        lu.size_bytes = 64 << 20
    m = for_dr(prod, tmp_path, tgtd)
    m.targets[0].auth.mode = "none"
    a, b = m.logical_units[0], m.logical_units[1]
    vmfs.write_vmfs(a.backing.path, uuid=vmfs.new_uuid(), label="same", naa=a.naa, product_id=a.product_id)
    vmfs.write_vmfs(b.backing.path, uuid=vmfs.new_uuid(), label="copied", naa=a.naa, product_id=a.product_id,
                    block_size=4096)
    tgt.apply(LocalTransport("dr"), m, control_port=tgtd.control_port)
    report = verify(m, tgtd.address, tgtd.port, initiator=DR_INITIATOR)
    by = {c.naa: c for c in report.checks}
    assert by[a.naa.hex].prediction == MOUNT and by[a.naa.hex].ok
    assert by[b.naa.hex].prediction == SNAPSHOT and not by[b.naa.hex].ok
    assert "unresolved snapshot" in by[b.naa.hex].problems[0]


def test_missing_backing_store_applies_nothing(clean, tmp_path):
    tgtd = clean
    prod = comstar_prod()
    m = for_dr(prod, tmp_path, tgtd)
    Path(m.logical_units[1].backing.path).unlink()
    with pytest.raises(UsageError, match="does not exist"):
        tgt.apply(LocalTransport("dr"), m, control_port=tgtd.control_port)
    assert tgtd.target_ids() == []


def test_present_clone_swap_with_new_naa(clean, tmp_path):
    tgtd = clean
    prod = read_native("tgt", [str(CORPUS / "tgt/targets.conf")])
    prod.targets[0].auth.mode = "none"
    for lu in prod.logical_units:
        lu.size_bytes = 32 << 20
    m = for_dr(prod, tmp_path, tgtd)
    transport = LocalTransport("dr")
    tgt.apply(transport, m, control_port=tgtd.control_port)
    lu = m.logical_units[0]
    clone = tmp_path / "clone.img"
    clone.write_bytes(b"")
    with open(clone, "wb") as f:
        f.truncate(lu.size_bytes)
    new = rewrite.clone_naa(lu.naa, "tank/lun0@validation")
    for c in tgt.swap_backing_commands(1, lu.lun_on(m.targets[0].iqn), lu, str(clone),
                                       control_port=tgtd.control_port, new_naa=new):
        transport.run(c.argv)
    seen = wire_identities(tgtd, m)
    assert new.hex in seen and lu.naa.hex not in seen


def test_cli_export_import_diff_verify_through_the_site(clean, tmp_path, capsys):
    """The whole path a user takes: export from production, dry run, import, diff, verify."""
    from esxdr.cli.main import run

    prod_d = clean
    prod = comstar_prod()
    m = for_dr(prod, tmp_path, prod_d)
    tgt.apply(LocalTransport("prod"), m, control_port=prod_d.control_port)
    dr_d = labtgtd.start(labtgtd.free_control_port(), "127.0.0.6", labtgtd.free_port("127.0.0.6"),
                         str(tmp_path / "dr-tgtd.log"))
    try:
        site = tmp_path / "site.yaml"
        site.write_text(f"""version: 1
name: lab
state_dir: {tmp_path / 'state'}
storage:
  prod:
    role: production
    local: true
    target: {{stack: tgt, portal: "{prod_d.portal}", control_port: {prod_d.control_port}}}
  dr:
    role: dr
    local: true
    target: {{stack: tgt, portal: "{dr_d.portal}", control_port: {dr_d.control_port}}}
protection_groups: {{}}
""")
        manifest = tmp_path / "prod.yaml"
        assert run(["target", "export", "--site", str(site), "-o", str(manifest),
                    "--initiator", DR_INITIATOR]) == 0
        capsys.readouterr()
        exported = load(manifest)
        assert {lu.product_id for lu in exported.logical_units} == {"COMSTAR"}  # read over iSCSI
        rw = ["--allow-initiator", DR_INITIATOR]
        assert run(["target", "import", str(manifest), "--site", str(site), "--dry-run", *rw]) == 0
        out = capsys.readouterr().out
        assert "would run" in out and "scsi_id=600144f0b6a1c6b0000051a4d5e20002" in out
        assert dr_d.target_ids() == []
        assert run(["target", "import", str(manifest), "--site", str(site), *rw, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["commands"]
        # A third-party initiator (libiscsi) reads the manifest's NAAs from VPD 0x83 on the DR portal.
        import libiscsi

        libiscsi.assert_served(dr_d.portal, [lu.naa.hex for lu in exported.logical_units], initiator=DR_INITIATOR)
        assert run(["target", "diff", str(manifest), "--site", str(site), *rw]) == 0
        assert "already matches" in capsys.readouterr().out
        assert run(["target", "verify", str(manifest), "--site", str(site), *rw,
                    "--initiator", DR_INITIATOR]) == 0
        out = capsys.readouterr().out
        assert "will mount as-is" not in out or "ok" in out
        assert "3/3 LUs as in the manifest" in out  # LU ...0001 is on both targets
    finally:
        dr_d.stop()

"""Native formats of every stack: parse the corpus, render, parse again; identity never changes."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from esxdr.errors import IdentityConflict, ManifestError
from esxdr.model.manifest import Backing, LogicalUnit, Manifest, Naa, Target, View
from esxdr.targets import backend, comstar, iscsitgt, lio, read_native, tgt
from esxdr.targets.base import Secrets

CORPUS = Path(__file__).parent / "target_corpus"
DR_IQN = "iqn.1998-01.com.vmware:esxi-dr"


def files(stack: str) -> list[str]:
    return sorted(str(p) for p in (CORPUS / stack).iterdir())


def identity(m: Manifest) -> dict[str, tuple]:
    return {lu.naa.hex: (lu.serial, lu.vendor_id, lu.product_id, lu.size_bytes, lu.block_size, lu.read_only,
                         lu.backing.path) for lu in m.logical_units}


# --------------------------------------------------------------------------- parse the corpus
# One case per export: a stack's files that only make sense together (COMSTAR's list-lu, list-view,
# sbdadm, ... outputs of one box) are one case; tgt's two files describe two different setups, so
# each is its own case. Values are read from the files by hand: (serial, vendor, product, size,
# block size, read-only, backing path) per NAA.
EXPECTED = {
    "comstar": {
        "600144f0b6a1c6b0000051a4d5e20001": (None, "SUN", "COMSTAR", 107374182400, 512, False,
                                             "/dev/zvol/rdsk/sp2/iscsi/lun0"),
        "600144f0b6a1c6b0000051a4d5e20002": ("600144f0b6a1c6b0-0002", "SUN", "COMSTAR", 53687091200, 512, False,
                                             "/dev/zvol/rdsk/sp2/iscsi/lun1"),
        "600144f0b6a1c6b0000051a4d5e20003": (None, "SUN", "COMSTAR", 10737418240, 4096, True, "/sp2/files/iso.lun"),
    },
    "iscsitgt": {
        "600144f04a3c2b3e00000c2911d1b800": (None, "SUN", "SOLARIS", 0x6400000 * 512, 512, False,
                                             "/dev/zvol/rdsk/sp2/vmfs0"),
        "600144f04a3c2b3e00000c2911d1b801": (None, "SUN", "SOLARIS", 41943040 * 512, 512, False,
                                             "/dev/zvol/rdsk/sp2/vmfs0b"),
        "600144f04a3c2b3f00000c2911d1b802": (None, "SUN", "SOLARIS", 2097152 * 512, 512, False,
                                             "/export/iscsi/iqn.1986-03.com.sun:02:vmfs1/lun.0"),
    },
    "lio": {
        "60014053f1d2c4b5a6947889a0b1c2d3": ("3f1d2c4b-5a69-4788-9a0b-1c2d3e4f5061", "LIO-ORG", "vmfs0", 0, 512,
                                             False, "/dev/zvol/tank/iscsi/vmfs0"),
        "60014058e7d6c5b4a3942819f0ed1c2b": ("8e7d6c5b-4a39-4281-9f0e-d1c2b3a49586", "LIO-ORG", "FILEIO",
                                             21474836480, 4096, False, "/tank/files/vmfs1.img"),
    },
    # `stmfadm list-lu -v` beside one `stmfadm list-view -l GUID > GUID.txt` per LU, the GUID only in
    # the file name (the layout `target convert --help` suggests); same LUs as the "comstar" case.
    "comstar-per-lu": {
        "600144f0b6a1c6b0000051a4d5e20001": (None, "SUN", "COMSTAR", 107374182400, 512, False,
                                             "/dev/zvol/rdsk/sp2/iscsi/lun0"),
        "600144f0b6a1c6b0000051a4d5e20002": ("600144f0b6a1c6b0-0002", "SUN", "COMSTAR", 53687091200, 512, False,
                                             "/dev/zvol/rdsk/sp2/iscsi/lun1"),
        "600144f0b6a1c6b0000051a4d5e20003": (None, "SUN", "COMSTAR", 10737418240, 4096, True, "/sp2/files/iso.lun"),
    },
    # targets.conf has no sizes (0: unknown until the backing store is read); vendor and product are
    # the target's; lun1.img is auto-numbered LUN 2, lun2.img LUN 3 without a scsi_id: tgt's default
    # designator "IET" + tid 1 + LUN 3.
    "tgt/targets.conf": {
        "600144f0b6a1c6b0000051a4d5e20001": ("SN-0001", "SUN", "COMSTAR", 0, 512, False, "/tank/lab/lun0.img"),
        "600144f0b6a1c6b0000051a4d5e20002": (None, "SUN", "COMSTAR", 0, 4096, True, "/tank/lab/lun1.img"),
        "60000000000000000e00000000010003": (None, "SUN", "COMSTAR", 0, 512, False, "/tank/lab/lun2.img"),
    },
    # tgtadm --op show: no vendor or product, sizes in MB (10^6 bytes) kept as the whole blocks in
    # that many bytes (observe() reads exact sizes); controller LUNs 0 are not LUs; LUN 6 of tid 2
    # has the default "IET 00020006" designator.
    "tgt/tgtadm-show.txt": {
        "600144f0c0ffee000000000000000001": ("SN12345", None, None, 41015 * 512, 512, True, "/tank/lab/lun1.img"),
        "600144f0c0ffee000000000000000009": ("abc", None, None, 15625 * 512, 512, True, "/tank/lab/l0.img"),
        "60000000000000000e00000000020006": ("beaf26", None, None, 1953 * 4096, 4096, False, "/tank/lab/l6.img"),
    },
}


def case_files(case: str) -> list[str]:
    """A case is a stack (all of its files) or one file of a stack."""
    return files(case) if (CORPUS / case).is_dir() else [str(CORPUS / case)]


# Corpus directories named after a layout rather than a stack.
STACK_OF = {"comstar-per-lu": "comstar"}


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_parse_corpus(case):
    top = case.split("/")[0]
    m = read_native(STACK_OF.get(top, top), case_files(case))
    assert identity(m) == EXPECTED[case]


def test_every_corpus_file_is_in_a_case():
    # A file added to the corpus without an expectation would only be read by the looser tests below.
    covered = sorted(f for case in EXPECTED for f in case_files(case))
    assert covered == sorted(str(p) for p in CORPUS.glob("*/*"))


def test_comstar_details():
    m = read_native("comstar", files("comstar"))
    lu2 = m.lu("600144F0B6A1C6B0000051A4D5E20002")  # upper case GUID finds the same LU
    assert lu2.alias == "vmfs-datastore2"
    assert {(v.lun, v.initiator_group, v.target) for v in lu2.views} == {
        (1, "esx-prod", "iqn.2010-09.org.openindiana:02:3e1e4cc3-3a4b-c25a-c5f6-e1a1c0b22b5e"),
        (1, "esx-backup", "iqn.2010-09.org.openindiana:02:3e1e4cc3-3a4b-c25a-c5f6-e1a1c0b22b5e")}
    assert m.lu("600144f0b6a1c6b0000051a4d5e20003").views == []  # "no views found"
    assert m.lu("600144f0b6a1c6b0000051a4d5e20001").backing.dataset == "sp2/iscsi/lun0"
    t2 = m.targets[1]
    assert [(g.name, g.tag, [str(p) for p in g.portals]) for g in t2.tpgs] == [
        ("tpg-san", 2, ["10.10.10.5:3260", "10.10.11.5:3260"]), ("tpg-mgmt", 3, ["192.168.1.20:3260"])]
    assert t2.auth.mode == "mutual-chap" and t2.auth.mutual_user == "sp2-target"
    assert m.targets[0].alias == "sp2-vmfs" and t2.alias is None  # "-" is not an alias


def test_comstar_sbdadm_alone_gives_data_files():
    m = comstar.parse([("sbd.txt", (CORPUS / "comstar/sbdadm-list-lu.txt").read_text())])
    assert m.lu("600144f0b6a1c6b0000051a4d5e20003").backing.path == "/sp2/files/iso.lun"


def test_comstar_missing_view_file_noted():
    m = comstar.parse([("lu.txt", (CORPUS / "comstar/list-lu-v.txt").read_text())])
    assert any("no `stmfadm list-view -l` output" in n for n in m.source.notes)


def test_comstar_list_view_guid_from_filename():
    st = comstar.ComstarState()
    comstar.parse_text("view-600144F0B6A1C6B0000051A4D5E20001.txt",
                       "View Entry: 0\n    Host group   : All\n    Target group : All\n    LUN          : 7\n", st)
    assert st.lus["600144f0b6a1c6b0000051a4d5e20001"].views[0]["LUN"] == "7"


def test_comstar_list_view_files_named_by_guid():
    # Each view file holds only `stmfadm list-view -l GUID` output for an LU that list-lu -v already
    # introduced: it adds views, not LUs, and must still count as recognised (it used to be refused).
    m = read_native("comstar", files("comstar-per-lu"))
    assert [v.lun for v in m.lu("600144f0b6a1c6b0000051a4d5e20001").views] == [0]
    assert [v.lun for v in m.lu("600144f0b6a1c6b0000051a4d5e20002").views] == [1, 5]
    assert m.lu("600144f0b6a1c6b0000051a4d5e20003").views == []
    assert not any("list-view" in n for n in m.source.notes)  # every LU's views are known
    # The order of the files does not matter: list-lu -v first, then the view files.
    texts = [(Path(f).name, Path(f).read_text()) for f in files("comstar-per-lu")]
    again = comstar.parse(sorted(texts, key=lambda t: not t[0].startswith("list-lu")))
    assert {lu.naa.hex: [v.lun for v in lu.views] for lu in again.logical_units} == \
        {lu.naa.hex: [v.lun for v in lu.views] for lu in m.logical_units}


def test_comstar_list_view_without_guid_is_refused():
    with pytest.raises(ManifestError, match="without the LU"):
        comstar.parse([("views.txt", "View Entry: 0\n    LUN          : 0\n")])


def test_iscsitgt_details():
    m, secrets = iscsitgt.parse_xml((CORPUS / "iscsitgt/iscsitgt.xml").read_text())
    t = m.target("iqn.1986-03.com.sun:02:8d7c0b2a-51e6-c0a4-e5b8-d8a1b2c3d4e5.sp2.vmfs0")
    assert t.name == "sp2.vmfs0"  # target_sp2__1vmfs0 decoded
    assert t.acl == ["esx01", "esx02.lab"]  # multi-valued acl-list, encoded initiator name
    assert [str(p) for p in t.tpgs[0].portals] == ["192.168.50.10:3260", "192.168.51.10:3260"]
    assert m.group("esx01").chap_user == "esx01" and m.group("esx01").secret_ref == "secrets:initiator_esx01"
    assert secrets == {"initiator_esx01": "esx01chapsecret"}
    assert "esx01chapsecret" not in json.dumps(m.to_dict())
    assert m.target("iqn.1986-03.com.sun:02:vmfs1").name == "iqn.1986-03.com.sun:02:vmfs1"


@pytest.mark.parametrize("guid", ["0", ""])
def test_iscsitgt_guid_not_generated(guid):
    xml = (CORPUS / "iscsitgt/iscsitgt.xml").read_text().replace("600144F04A3C2B3E00000C2911D1B800", guid)
    with pytest.raises(ManifestError, match="never generated"):
        iscsitgt.parse_xml(xml)


def test_iscsitgt_malformed_xml():
    with pytest.raises(ManifestError, match="malformed XML"):
        iscsitgt.parse_xml("<service_bundle><property_group name='x'>")


def test_iscsitgt_not_an_export():
    with pytest.raises(ManifestError, match="no target_"):
        iscsitgt.parse_xml("<service_bundle/>")


@pytest.mark.parametrize("name, encoded", [
    ("sp2.vmfs0", "sp2__1vmfs0"), ("iqn.1986-03.com.sun:02:x", "iqn__11986-03__1com__1sun__202__2x"),
    ("plain-name", "plain-name")])
def test_iscsitgt_name_encoding(name, encoded):
    assert iscsitgt.encode_name(name) == encoded and iscsitgt.decode_name(encoded) == name


def test_lio_details():
    m = read_native("lio", files("lio"))
    assert any("ramdisk" in n for n in m.source.notes)
    assert any("company_id" in n for n in m.source.notes)
    assert m.group("iqn.1998-01.com.vmware:esx02-5e6f7a8b").chap_user == "esx02"
    assert "notinthemanifest" not in json.dumps(m.to_dict())


def test_lio_identity_from_configfs_overrides_defaults():
    text = (CORPUS / "lio/saveconfig.json").read_text()
    m = lio.parse_saveconfig(text, identity={"vmfs0": {"company_id": "0x00144f", "vendor_id": "SUN",
                                                        "product_id": "COMSTAR"}})
    lu = m.lu("600144f3f1d2c4b5a6947889a0b1c2d3")
    assert lu is not None and lu.vendor_id == "SUN" and lu.product_id == "COMSTAR"


def test_lio_malformed_json():
    with pytest.raises(ManifestError, match=r"saveconfig.json:1:\d+: malformed JSON"):
        lio.parse_saveconfig('{"storage_objects": [', "saveconfig.json")


def test_lio_dangling_lun():
    data = json.loads((CORPUS / "lio/saveconfig.json").read_text())
    data["targets"][0]["tpgs"][0]["luns"][0]["storage_object"] = "/backstores/block/gone"
    with pytest.raises(ManifestError, match="not among the storage_objects"):
        lio.parse_saveconfig(json.dumps(data))


def test_tgt_show_and_conf():
    m = tgt.parse([("show", (CORPUS / "tgt/tgtadm-show.txt").read_text())])
    lu = m.lu("600144f0c0ffee000000000000000001")
    assert lu.serial == "SN12345" and lu.read_only and lu.backing.path == "/tank/lab/lun1.img"
    t1 = m.target("iqn.2010-01.org.example:t1")
    assert t1.auth.mode == "mutual-chap" and t1.auth.user == "chapuser" and t1.auth.mutual_user == "outu"
    assert m.group(t1.acl[0]).members == ["127.0.0.1", "iqn.1998-01.com.vmware:esx1"]
    # Unset scsi_id: tgt's default designator, "IET" + tid/LUN.
    assert m.lu("60000000000000000e00000000020006") is not None
    c = tgt.parse([("targets.conf", (CORPUS / "tgt/targets.conf").read_text())])
    lu0 = c.lu("600144f0b6a1c6b0000051a4d5e20001")
    assert (lu0.serial, lu0.vendor_id, lu0.product_id, lu0.revision) == ("SN-0001", "SUN", "COMSTAR", "1.0")
    assert [v.lun for v in c.lu("600144f0b6a1c6b0000051a4d5e20002").views] == [2]  # auto-numbered
    assert c.lu("600144f0b6a1c6b0000051a4d5e20002").block_size == 4096


@pytest.mark.parametrize("scsi_id, naa", [
    ("600144f0c0ffee000000000000000001", "600144f0c0ffee000000000000000001"),
    ("abc", "60000000000000000000000000000abc"),
    ("0123456789abcdef0123456789abcdef99", "63456789abcdef0123456789abcdef99"),
    ("x123456789abcdef0123456789abcdef", "6123456789abcdef0123456789abcdef"),
    ("", "60000000000000000e00000000010001"),
])
def test_tgt_naa_from_scsi_id(scsi_id, naa):
    # Measured against tgt 1.0.85 over the wire (see tests/integration/test_targets_tgt.py).
    assert tgt.naa_from_scsi_id(scsi_id, 1, 1).hex == naa


@pytest.mark.parametrize("text", ["<target iqn.2000-01.a:b>\nbacking-store /x\n", "</target>\n",
                                  "lun 1\n"])
def test_tgt_conf_errors(text):
    with pytest.raises(ManifestError):
        tgt.parse_conf(text)


# --------------------------------------------------------------------------- round trips
def _roundtrip(stack: str, m: Manifest) -> Manifest:
    text = backend(stack).render(m)
    if stack == "iscsitgt":
        return iscsitgt.parse_xml(text)[0]
    if stack == "lio":
        return lio.parse_saveconfig(text, identity={
            name: {"company_id": lu.naa.company_id, "vendor_id": lu.vendor_id, "product_id": lu.product_id,
                   "revision": lu.revision}
            for lu in m.logical_units for (_, name) in [lio._so_names(m)[lu.naa.hex]]})
    return tgt.parse([("targets.conf", text)])


def _with_chap_user(m: Manifest) -> Manifest:
    from esxdr.plan import rewrite

    return rewrite.set_chap(m, "dr-chap", "secrets:dr-chap") if any(t.auth.mode != "none" for t in m.targets) \
        else m


@pytest.mark.parametrize("source", ["comstar", "iscsitgt", "lio", "tgt"])
@pytest.mark.parametrize("dest", ["iscsitgt", "lio", "tgt"])
def test_cross_stack_round_trip_keeps_identity(source, dest):
    m = read_native(source, files(source))
    if dest in ("tgt",):
        m = _with_chap_user(m)
    if source == "lio":
        # saveconfig.json has no size for block devices; a real export reads it from the device.
        for lu in m.logical_units:
            lu.size_bytes = lu.size_bytes or 1 << 30
    back = _roundtrip(dest, m)
    presented = [lu for lu in m.logical_units if lu.views or dest == "lio"]  # tgt, iscsitgt: no view-less LUs
    for lu in presented:
        got = back.lu(lu.naa)
        assert got is not None, f"{dest} lost {lu.naa.esxi_name}"
        assert got.backing.path == lu.backing.path
        if lu.product_id:
            assert got.product_id == lu.product_id
        if dest == "lio":
            assert lio.naa_from_serial(got.serial, lu.naa.company_id).hex == lu.naa.hex
        elif dest == "tgt":
            assert got.serial == lu.serial
        # iscsitgtd keeps no serial at all.
    assert len(back.logical_units) == len(presented)


def test_comstar_render_commands():
    m = read_native("iscsitgt", files("iscsitgt"))
    script = comstar.render(m)
    assert "stmfadm create-lu -p guid=600144F04A3C2B3E00000C2911D1B800" in script
    assert "/dev/zvol/rdsk/sp2/vmfs0" in script and "stmfadm add-view" in script
    cmds, _ = comstar.commands(m)
    assert sum(c.argv[:2] == ["stmfadm", "create-lu"] for c in cmds) == 3


def test_comstar_existing_guid_elsewhere_conflicts():
    m = read_native("comstar", files("comstar"))
    st = comstar.ComstarState()
    comstar.parse_list_lu((CORPUS / "comstar/list-lu-v.txt").read_text().replace(
        "/dev/zvol/rdsk/sp2/iscsi/lun0", "/dev/zvol/rdsk/other/vol"), st)
    with pytest.raises(IdentityConflict, match="other/vol"):
        comstar.commands(m, existing=st)


def test_iscsitgt_render_splits_host_groups_and_carries_secrets():
    m = read_native("comstar", files("comstar"))
    m.logical_units[0].views = [View(lun=0, target=m.targets[0].iqn)]
    m.targets[0].acl = ["esx-prod"]
    m.initiator_groups[0].chap_user, m.initiator_groups[0].secret_ref = "esx", "secrets:esx"
    xml = iscsitgt.render(m, Secrets({"esx": "esxsecret123", "sp2-target": "targetsecret1"}))
    back, secrets = iscsitgt.parse_xml(xml)
    t = back.target(m.targets[0].iqn)
    assert t.acl == ["esx-prod-1", "esx-prod-2"]
    assert back.group("esx-prod-2").members == ["iqn.1998-01.com.vmware:esx02-7a8e9f10"]
    assert secrets["initiator_esx-prod-1"] == "esxsecret123"
    assert base64.b64encode(b"esxsecret123").decode() in xml
    assert [c.argv[:2] for c in iscsitgt.commands()] == [["svcadm", "disable"], ["svccfg", "delete"],
                                                         ["svccfg", "import"], ["svcadm", "enable"]]


def _lu(naa: str, **kw) -> LogicalUnit:
    return LogicalUnit(naa=Naa.parse(naa), backing=Backing("file", "/x"), size_bytes=512,
                       views=[View(lun=1, target="iqn.2000-01.a:b")], **kw)


@pytest.mark.parametrize("stack", ["tgt", "lio", "comstar", "iscsitgt"])
def test_naa5_cannot_be_reproduced(stack):
    m = Manifest(targets=[Target(iqn="iqn.2000-01.a:b")], logical_units=[_lu("5000c5001234abcd")])
    with pytest.raises(IdentityConflict, match="NAA-5"):
        backend(stack).render(m)


def test_lio_serial_derivation():
    lu = _lu("600144f0b6a1c6b0000051a4d5e20001", serial="not-hex-at-all")
    assert lio.serial_for(lu) == "0b6a1c6b0000051a4d5e20001"
    assert lio.naa_from_serial(lio.serial_for(lu), "00144f").hex == lu.naa.hex
    keep = _lu("60014053f1d2c4b5a6947889a0b1c2d3", serial="3f1d2c4b-5a69-4788-9a0b-1c2d3e4f5061")
    assert lio.serial_for(keep) == keep.serial


def test_lio_company_id_not_settable_conflicts():
    m = Manifest(targets=[Target(iqn="iqn.2000-01.a:b")], logical_units=[_lu("600144f0b6a1c6b0000051a4d5e20001")])
    assert lio.identity_problems(m, company_id_settable=False)
    assert not lio.identity_problems(m, company_id_settable=True)
    ok = Manifest(targets=[Target(iqn="iqn.2000-01.a:b")], logical_units=[_lu("60014053f1d2c4b5a6947889a0b1c2d3")])
    assert not lio.identity_problems(ok, company_id_settable=False)


@pytest.mark.parametrize("out, expected", [
    ("/sys/kernel/config/target/core/iblock_0/x/wwn/company_id\n4.19.0\n", True),
    ("6.1.0-18-amd64\n", True), ("5.4.0-150-generic\n", False), ("", False)])
def test_lio_company_id_detection(out, expected):
    assert lio.company_id_supported(out) is expected


def test_lio_commands_order():
    m = read_native("comstar", files("comstar"))
    cmds = [c.argv for c in lio.commands(m)]
    flat = [" ".join(a) for a in cmds]
    first_company = next(i for i, c in enumerate(flat) if "company_id" in c)
    first_lun = next(i for i, c in enumerate(flat) if "/luns create" in c)
    assert first_company < first_lun  # identity before export: the kernel refuses it afterwards
    assert any("wwn=0b6a1c6b0000051a4d5e20001" in c for c in flat)


def test_tgt_plan_fresh_and_idempotent():
    from esxdr.plan import rewrite

    m = rewrite.set_chap(read_native("comstar", files("comstar")), "dr", "secrets:dr")
    m = rewrite.allow_initiators(m, [DR_IQN])  # tgt refuses a target that would admit every initiator
    m.logical_units = [lu for lu in m.logical_units if lu.views and not any(v.initiator_group for v in lu.views)]
    cmds, notes = tgt.plan(m, [], None, control_port=1234)
    argv = [c.argv for c in cmds]
    assert all(a[:3] == ["tgtadm", "-C", "1234"] for a in argv)
    assert any("scsi_id=600144f0b6a1c6b0000051a4d5e20001" in " ".join(a) for a in argv)
    assert any("LUN 0" in n for n in notes)
    # Simulate what tgtd would then show, and plan again: nothing left to do.
    pl = tgt.place(m)
    shown = []
    for t in m.targets:
        tt = tgt.TgtTarget(pl.tids[t.iqn], t.iqn, acl=[DR_IQN])
        for n, lu in pl.luns[t.iqn]:
            tt.luns[n] = tgt.TgtLu(n, lu.naa.hex, lu.serial or "", lu.backing.path, lu.block_size, 0, lu.read_only)
        shown.append(tt)
        tt.incoming = ["dr"]
    assert tgt.plan(m, shown, None, accounts={"dr"})[0] == []


def test_tgt_plan_refuses_naa_served_by_unmanaged_target():
    m = read_native("comstar", files("comstar"))
    m.logical_units = m.logical_units[:1]
    other = tgt.TgtTarget(9, "iqn.2000-01.other:t", {1: tgt.TgtLu(1, "600144f0b6a1c6b0000051a4d5e20001", "", "/y")})
    with pytest.raises(IdentityConflict, match="already served"):
        tgt.plan(m, [other], None)


def test_tgt_swap_backing_commands():
    lu = _lu("600144f0b6a1c6b0000051a4d5e20001", product_id="COMSTAR")
    cmds = tgt.swap_backing_commands(1, 1, lu, "/tank/clone.img", control_port=5)
    assert [c.argv[6] for c in cmds] == ["delete", "new", "update"]
    assert "scsi_id=600144f0b6a1c6b0000051a4d5e20001" in cmds[2].argv[-1]

"""The target manifest: NAA rules, dict/YAML/JSON round trips, and errors that name the field."""

from __future__ import annotations

import copy
import json

import pytest

from esxdr.errors import ManifestError
from esxdr.model.manifest import (
    Backing,
    LogicalUnit,
    Manifest,
    Naa,
    Target,
    View,
    dumps,
    loads,
    manifest_from_dict,
)

GOOD = {
    "kind": "esxdr.target-manifest",
    "version": 1,
    "source": {"stack": "comstar", "host": "prod-nas"},
    "targets": [{"iqn": "iqn.2010-09.org.openindiana:02:abc", "alias": "sp2",
                 "tpgs": [{"tag": 2, "portals": ["10.0.0.5:3260", "10.0.1.5"]}],
                 "auth": {"mode": "chap", "user": "esx", "secret_ref": "secrets:esx"},
                 "acl": ["esx-prod"]}],
    "initiator_groups": [{"name": "esx-prod", "members": ["iqn.1998-01.com.vmware:esx01"]}],
    "logical_units": [
        {"naa": "600144f0b6a1c6b0000051a4d5e20001", "serial": "SN1", "vendor_id": "SUN", "product_id": "COMSTAR",
         "revision": "1.0", "block_size": 512, "size_bytes": 1073741824,
         "backing": {"kind": "zvol", "path": "/dev/zvol/rdsk/sp2/lun0", "dataset": "sp2/lun0"},
         "read_only": False, "views": [{"lun": 0}]},
        {"naa": "600144f0b6a1c6b0000051a4d5e20002", "size_bytes": 4096 * 10, "block_size": 4096,
         "backing": {"kind": "file", "path": "/sp2/files/a.img"},
         "views": [{"lun": 1, "target": "iqn.2010-09.org.openindiana:02:abc", "initiator_group": "esx-prod"}]},
    ],
}


@pytest.mark.parametrize("text, hexs, typ", [
    ("600144f0b6a1c6b0000051a4d5e20001", "600144f0b6a1c6b0000051a4d5e20001", 6),
    ("600144F0B6A1C6B0000051A4D5E20001", "600144f0b6a1c6b0000051a4d5e20001", 6),
    ("naa.600144f0b6a1c6b0000051a4d5e20001", "600144f0b6a1c6b0000051a4d5e20001", 6),
    ("0x6001405a1b2c3d4e5f60718293a4b5c6", "6001405a1b2c3d4e5f60718293a4b5c6", 6),
    ("6001-405a-1b2c-3d4e-5f60-7182-93a4-b5c6", "6001405a1b2c3d4e5f60718293a4b5c6", 6),
    ("5000c5001234abcd", "5000c5001234abcd", 5),
    ("3000000100000001", "3000000100000001", 3),
    ("2000001b32123456", "2000001b32123456", 2),
])
def test_naa_parse(text, hexs, typ):
    n = Naa.parse(text)
    assert n.hex == hexs and n.naa_type == typ and n.esxi_name == f"naa.{hexs}"


@pytest.mark.parametrize("text, words", [
    ("600144f0b6a1c6b0000051a4d5e2000", "32 hex digits"),
    ("600144f0b6a1c6b0000051a4d5e200011", "32 hex digits"),
    ("600144f0b6a1c6b0000051a4d5e2000g", "hex digits only"),
    ("400144f0b6a1c6b0000051a4d5e20001", "type 4"),
    ("5000c5001234abcd5000c5001234abcd", "16 hex digits"),
    ("", "hex digits only"),
])
def test_naa_rejects(text, words):
    with pytest.raises(ValueError, match=words):
        Naa.parse(text)


def test_naa_parts():
    n = Naa.parse("600144f0b6a1c6b0000051a4d5e20001")
    assert n.company_id == "00144f" and n.vendor_specific == "0b6a1c6b0000051a4d5e20001"
    assert Naa.parse("3000000100000001").company_id is None


def test_round_trip_dict_yaml_json():
    m = manifest_from_dict(copy.deepcopy(GOOD))
    assert m.to_dict()["logical_units"][0]["naa"] == GOOD["logical_units"][0]["naa"]
    for fmt in ("yaml", "json"):
        again = loads(dumps(m, fmt))
        assert again.to_dict() == m.to_dict()
    assert m.luns_of("iqn.2010-09.org.openindiana:02:abc")[0][0] == 0
    assert m.targets[0].tpgs[0].portals[1].port == 3260


def _bad(mutate):
    d = copy.deepcopy(GOOD)
    mutate(d)
    return d


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d["logical_units"][0].__setitem__("naa", "600144f0"), "logical_units[0].naa"),
    (lambda d: d["logical_units"][1].__setitem__("naa", d["logical_units"][0]["naa"]), "logical_units[1].naa"),
    (lambda d: d["logical_units"][1]["views"].__setitem__(0, {"lun": 0}), "duplicate LUN 0"),
    (lambda d: d["logical_units"][0].pop("backing"), "logical_units[0].backing: missing"),
    (lambda d: d["logical_units"][0]["backing"].__setitem__("kind", "nfs"), "logical_units[0].backing.kind"),
    (lambda d: d["logical_units"][0].__setitem__("size_bytes", "big"), "logical_units[0].size_bytes"),
    (lambda d: d["logical_units"][0].__setitem__("size_bytes", 1000), "multiple of the block size"),
    (lambda d: d["logical_units"][0].__setitem__("product_id", "X" * 17), "logical_units[0].product_id"),
    (lambda d: d["targets"][0]["auth"].__setitem__("secret", "hunter2"), "targets[0].auth.secret: secrets are never"),
    (lambda d: d["targets"][0].__setitem__("iqn", "target1"), "targets[0].iqn"),
    (lambda d: d["targets"][0]["acl"].append("nobody"), "targets[0].acl[1]"),
    (lambda d: d["logical_units"][1]["views"][0].__setitem__("target", "iqn.2000-01.x:y"), "views[0].target"),
    (lambda d: d.__setitem__("version", 7), "version"),
    (lambda d: d["logical_units"][0].__setitem__("colour", "blue"), "logical_units[0].colour: unknown field"),
    (lambda d: d["targets"][0]["tpgs"].append({"tag": 2}), "duplicate TPG tag 2"),
])
def test_validation_names_the_field(mutate, field):
    with pytest.raises(ManifestError) as e:
        manifest_from_dict(_bad(mutate), "m.yaml")
    assert field in e.value.message
    assert "m.yaml" in e.value.message


def test_duplicate_lun_on_same_target_detected_across_wildcards():
    m = Manifest(targets=[Target(iqn="iqn.2000-01.a:b")], logical_units=[
        LogicalUnit(naa=Naa("6" + "1" * 31), backing=Backing("file", "/a"), size_bytes=512,
                    views=[View(lun=3, target="iqn.2000-01.a:b")]),
        LogicalUnit(naa=Naa("6" + "2" * 31), backing=Backing("file", "/b"), size_bytes=512, views=[View(lun=3)]),
    ])
    with pytest.raises(ManifestError, match="duplicate LUN 3"):
        m.validate()


@pytest.mark.parametrize("text, words", [
    ('{"kind": "esxdr.target-manifest", "version": 1,', "malformed JSON"),
    ("version: 1\nlogical_units: [\n", "malformed YAML"),
    ("- just\n- a list\n", "expected a mapping"),
])
def test_malformed_text(text, words):
    with pytest.raises(ManifestError, match=words):
        loads(text, "bad.yaml")


def test_json_error_has_line():
    with pytest.raises(ManifestError, match=r"bad.json:2:"):
        loads('{"version": 1,\n "targets": [}', "bad.json")


def test_manifest_json_has_no_secret_values():
    m = manifest_from_dict(copy.deepcopy(GOOD))
    text = json.dumps(m.to_dict())
    assert "secret_ref" in text and "hunter" not in text

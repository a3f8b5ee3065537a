"""The shipped target manifest is untrusted input on DR (issue #14, item 3).

Whoever holds production's replication key can `zfs set esxdr:manifest.N=…` on the DR root. These
tests forge those properties the way such a key holder would (any JSON, a correct sha) and check
that decoding refuses, naming the field, before anything could be presented; and that the
manifest pinned on DR wins over a changed shipped one until `esxdr target accept`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import zlib
from dataclasses import replace
from types import SimpleNamespace

import pytest
from test_runbook import NAAS, PROD_IQN, group, manifest

from esxdr.errors import ConflictError, ManifestError, RemoteError
from esxdr.model.manifest import Backing, manifest_to_dict
from esxdr.recovery import resolve_manifest
from esxdr.replication import shipping


def forge(data) -> dict[str, str]:
    """esxdr:manifest.* as a production key holder can write them: any JSON, sha and count consistent."""
    raw = json.dumps(data).encode()
    blob = base64.b64encode(zlib.compress(raw)).decode()
    chunks = [blob[i:i + shipping.CHUNK] for i in range(0, len(blob), shipping.CHUNK)]
    props = {f"esxdr:manifest.{i}": c for i, c in enumerate(chunks)}
    props[shipping.COUNT_PROP] = str(len(chunks))
    props[shipping.SHA_PROP] = hashlib.sha256(raw).hexdigest()[:32]
    return props


def shipped_dict(**lu0) -> dict:
    """The lab-like manifest as production ships it, with fields of its first LU replaced."""
    d = manifest_to_dict(manifest())
    for key, value in lu0.items():
        if key.startswith("backing_"):
            d["logical_units"][0]["backing"][key[len("backing_"):]] = value
        else:
            d["logical_units"][0][key] = value
    return d


def refused(props, *needles: str) -> str:
    with pytest.raises(ManifestError) as e:
        shipping.decode(props, group())
    text = e.value.message
    assert text.startswith("shipped manifest for core"), text
    for n in needles:
        assert n in text, (n, text)
    assert "nothing was presented" in (e.value.hint or "")
    return text


# --------------------------------------------------------------------------- decode: the happy path
def test_what_replication_ships_decodes_to_the_same_identities():
    _, props = shipping.encode(manifest())
    m = shipping.decode(props, group())
    assert m is not None
    assert [lu.naa.hex for lu in m.logical_units] == NAAS
    assert [lu.backing.path for lu in m.logical_units] == [f"/mnt/sp1/iscsi/lun{i}/lun.img" for i in range(3)]


@pytest.mark.parametrize("props", [{}, {shipping.COUNT_PROP: "-"}, {shipping.COUNT_PROP: ""}])
def test_nothing_shipped_is_none(props):
    assert shipping.decode(props, group()) is None


# --------------------------------------------------------------------------- decode: forged paths
@pytest.mark.parametrize(("path", "why"), [
    # the case from the review: this became tgt's -b for the failover, writable
    ("/sp1/iscsi/lun0/../../../../etc/shadow", "leaves its dataset"),
    ("/mnt/sp1/iscsi/lun0/../lun1/lun.img", "leaves its dataset"),
    ("/mnt/sp1/iscsi/lun0/sub/lun.img", "leaves its dataset"),  # more than one name below the dataset
    ("/mnt/sp1/iscsi/lun0/lun.img -> /etc/shadow", "leaves its dataset"),  # a "symlink" spelt into the name
    ("/mnt/sp1/iscsi/lun0/./lun.img", "not a normalised path"),
    ("/mnt/sp1/iscsi/lun0//lun.img", "not a normalised path"),
    ("/mnt/sp1/iscsi/lun0/", "not a normalised path"),
    ("etc/shadow", "not an absolute path"),
    ("/mnt/sp1/iscsi/lun0/lun.img\x00/etc/shadow", "control character or NUL"),
    ("/mnt/sp1/iscsi/lun0/lun.img\n</target>\n<target iqn.2000-01.x:y>", "control character or NUL"),
    ("/mnt/sp1/iscsi/lun0/-b", "leading '-'"),
    ("", "empty"),
])
def test_forged_file_paths_are_refused_naming_the_field(path, why):
    refused(forge(shipped_dict(backing_path=path)), "logical_units[0].backing.path", why)


@pytest.mark.parametrize(("backing", "field", "why"), [
    ({"kind": "zvol", "path": "/dev/zvol/sp1/iscsi/lun1", "dataset": "sp1/iscsi/lun0"}, "backing.path",
     "is not the zvol of"),
    ({"kind": "zvol", "path": "/dev/sda", "dataset": "sp1/iscsi/lun0"}, "backing.path", "not a zvol device"),
    ({"kind": "zvol", "path": "/dev/zvol/sp1/iscsi/lun0/../../../../sda", "dataset": "sp1/iscsi/lun0"},
     "backing.path", "leaves its dataset"),
    ({"kind": "block", "path": "/dev/sda", "dataset": "sp1/iscsi/lun0"}, "backing.kind", "not replicated by ZFS"),
    ({"kind": "file", "path": "/etc/shadow", "dataset": "rpool/ROOT/debian"}, "backing.dataset",
     "not under the group's root sp1/iscsi"),
    ({"kind": "file", "path": "/x/lun.img", "dataset": "sp1/iscsi/../../rpool"}, "backing.dataset", "'..'"),
    ({"kind": "file", "path": "/x/lun.img", "dataset": "-o/x"}, "backing.dataset", "must begin with a letter"),
])
def test_forged_zvols_block_devices_and_datasets_are_refused(backing, field, why):
    d = shipped_dict()
    d["logical_units"][0]["backing"] = backing
    refused(forge(d), f"logical_units[0].{field}", why)


def test_a_zvol_of_its_own_dataset_passes_in_every_platform_spelling():
    for prefix in ("/dev/zvol/", "/dev/zvol/rdsk/", "/dev/zvol/dsk/"):
        d = shipped_dict()
        d["logical_units"][0]["backing"] = {"kind": "zvol", "path": prefix + "sp1/iscsi/lun0",
                                            "dataset": "sp1/iscsi/lun0"}
        m = shipping.decode(forge(d), group())
        assert m is not None and m.logical_units[0].backing.kind == "zvol"


def test_an_absolute_path_elsewhere_keeps_only_its_name_inside_the_dr_dataset():
    """Production's mount point is unknown on DR, so a path that does not name the dataset (a custom
    mountpoint, or a forger's /etc/shadow) yields just its last name: DR serves <DR mount>/<name>."""
    from test_runbook import dr_obs

    from esxdr.plan import runbook as rb

    m = shipping.decode(forge(shipped_dict(backing_path="/proc/self/root/etc/shadow")), group())
    assert m is not None
    luns = rb.failover_luns(group(), m, dr_obs())
    assert luns[0].path == "/mnt/rp1/iscsi/lun0/shadow"
    assert all(d.path.startswith(f"/mnt/{d.dr_dataset}/") and d.path.count("/") == d.dr_dataset.count("/") + 3
               for d in luns)


# --------------------------------------------------------------------------- decode: forged names and identities
@pytest.mark.parametrize(("naa", "why"), [
    ("600144f0614f6bd2e51f4fc511ec001", "must be 32 hex digits"),  # type 6, 31 digits
    ("600144f0614f6bd2e51f4fc511ec00011", "must be 32 hex digits"),
    ("700144f0614f6bd2e51f4fc511ec0001", "type 7"),
    ("1000000000000001", "type 1"),
    ("600144f0614f6bd2e51f4fc511ec00zz", "hex digits only"),
    ("f00144f0614f6bd2e51f4fc511ec0001", "type 15"),
    ("", "hex digits only"),
])
def test_forged_naas_are_refused(naa, why):
    refused(forge(shipped_dict(naa=naa)), "logical_units[0].naa", why)


def test_a_duplicate_naa_is_refused():
    d = shipped_dict()
    d["logical_units"][1]["naa"] = d["logical_units"][0]["naa"]
    refused(forge(d), "logical_units[1].naa", "also logical_units[0]")


@pytest.mark.parametrize("iqn", [
    "iqn.2010-08.org.esxdr.lab:ss1 core",  # space: two argv words in a config file
    "iqn.2010-13.org.esxdr.lab:ss1",  # month 13
    "iqn.2010-08.-org.esxdr:x",  # label starting with '-'
    "iqn.2010-08.org.esxdr:x\n<target y>",
    "iqn.2010-08.org.esxdr:x_y",  # '_' is not in RFC 3722's profile
    "-T",
    "eui.12345",
    "naa.6001",
    "iqn.2010-08.org.esxdr:" + "x" * 220,  # over 223 bytes
])
def test_forged_target_names_are_refused(iqn):
    d = shipped_dict()
    d["targets"][0]["iqn"] = iqn
    for lu in d["logical_units"]:
        lu["views"][0]["target"] = iqn
    refused(forge(d), "targets[0].iqn")


@pytest.mark.parametrize(("field", "value", "why"), [
    ("product_id", "COMSTAR,readonly=0", "without ',' or '='"),  # would set another tgt --params key
    ("vendor_id", "SÜN", "printable ASCII"),
    ("revision", "1.0\n", "printable ASCII"),
    ("serial", "abc,scsi_id=600144f0", "without ',' or '='"),
    ("alias", "lun0\n<target x>", "one line"),
])
def test_forged_inquiry_fields_and_aliases_are_refused(field, value, why):
    refused(forge(shipped_dict(**{field: value})), f"logical_units[0].{field}", why)


@pytest.mark.parametrize(("member", "why"), [
    ("ALL", "would admit every initiator"),
    ("all", "would admit every initiator"),
    ("everyone", "neither an initiator's iSCSI name nor an IP"),
    ("iqn.1998-01.com.vmware:esx dr", "not an iSCSI name"),
])
def test_forged_acl_members_are_refused(member, why):
    d = shipped_dict()
    d["initiator_groups"] = [{"name": "prod", "members": [member]}]
    d["targets"][0]["acl"] = ["prod"]
    refused(forge(d), "initiator_groups[0].members[0]", why)


def test_chap_references_that_read_dr_files_or_environment_are_refused():
    for ref in ("file:/etc/shadow", "env:AWS_SECRET_ACCESS_KEY"):
        d = shipped_dict()
        d["targets"][0]["auth"] = {"mode": "chap", "user": "esx", "secret_ref": ref}
        refused(forge(d), "targets[0].auth.secret_ref", "may only name secrets:KEY")
    d = shipped_dict()
    d["targets"][0]["auth"] = {"mode": "chap", "user": "esx", "secret_ref": "secrets:esx-chap"}
    assert shipping.decode(forge(d), group()) is not None


@pytest.mark.parametrize(("props", "why"), [
    ({shipping.COUNT_PROP: "33"}, "not a chunk count"),
    ({shipping.COUNT_PROP: "-1"}, "not a chunk count"),
    ({shipping.COUNT_PROP: "1e9"}, "not a chunk count"),
    ({shipping.COUNT_PROP: "2", "esxdr:manifest.0": "eJw="}, "esxdr:manifest.1 missing"),
    ({shipping.COUNT_PROP: "1", "esxdr:manifest.0": "not base64!"}, "not a compressed JSON manifest"),
    ({shipping.COUNT_PROP: "1", "esxdr:manifest.0": base64.b64encode(b"plain").decode()},
     "not a compressed JSON manifest"),
])
def test_malformed_properties_are_refused(props, why):
    refused(props, why)


def test_a_sha_that_does_not_match_is_refused():
    _, props = shipping.encode(manifest())
    props[shipping.SHA_PROP] = "0" * 32
    refused(props, "does not match the chunks")


def test_a_zlib_bomb_is_refused_without_inflating_it():
    raw = b" " * (shipping.MAX_DECODED + 1)
    blob = base64.b64encode(zlib.compress(raw, 9)).decode()
    assert len(blob) < shipping.CHUNK * shipping.MAX_CHUNKS
    chunks = [blob[i:i + shipping.CHUNK] for i in range(0, len(blob), shipping.CHUNK)]
    props = {f"esxdr:manifest.{i}": c for i, c in enumerate(chunks)}
    props[shipping.COUNT_PROP] = str(len(chunks))
    props[shipping.SHA_PROP] = hashlib.sha256(raw).hexdigest()[:32]
    refused(props, "more than 4 MiB")


def test_json_that_is_not_a_manifest_is_refused():
    refused(forge(["a", "list"]), "expected a mapping")
    refused(forge({"kind": "esxdr.target-manifest", "version": 1, "logical_units": [{"naa": NAAS[0]}]}),
            "logical_units[0].backing: missing")


# --------------------------------------------------------------------------- the pin
def test_first_use_pins_then_the_pin_is_presented(tmp_path):
    g = group()
    m = shipping.decode(shipping.encode(manifest())[1], g)
    got, origin = shipping.trusted(str(tmp_path), g, m)
    path = shipping.pin_path(str(tmp_path), "core")
    assert "pinned on first use" in origin and path.exists()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    again, origin = shipping.trusted(str(tmp_path), g, m)
    assert "matches" in origin and [lu.naa.hex for lu in again.logical_units] == NAAS


def pinned_then(tmp_path, changed: dict) -> tuple:
    g = group()
    shipping.trusted(str(tmp_path), g, shipping.decode(shipping.encode(manifest())[1], g))
    return g, shipping.decode(forge(changed), g)


@pytest.mark.parametrize(("change", "needles"), [
    ({"naa": "600144f0614f6bd2e51f4fc511ecffff"},
     [f"naa.{NAAS[0]} (sp1/iscsi/lun0 lun.img): naa {NAAS[0]} → 600144f0614f6bd2e51f4fc511ecffff"]),
    ({"product_id": "EVIL"}, ["product_id 'COMSTAR' → 'EVIL'"]),
    ({"serial": "123"}, ["serial"]),
    ({"block_size": 4096, "size_bytes": 64 << 20}, ["block_size 512 → 4096"]),
    ({"backing_path": "/mnt/sp1/iscsi/lun0/other.img"}, ["file 'lun.img' → 'other.img'"]),
    ({"backing_path": "/mnt/sp1/iscsi/lun2/lun.img", "backing_dataset": "sp1/iscsi/lun2"},
     ["dataset 'sp1/iscsi/lun0' → 'sp1/iscsi/lun2'"]),
])
def test_a_changed_identity_after_pinning_is_refused_naming_the_change(tmp_path, change, needles):
    g, shipped = pinned_then(tmp_path, shipped_dict(**change))
    with pytest.raises(ConflictError) as e:
        shipping.trusted(str(tmp_path), g, shipped)
    for n in needles:
        assert n in e.value.message, e.value.message
    assert "nothing was presented" in e.value.message
    assert "esxdr target accept core" in e.value.hint
    assert f"--manifest {shipping.pin_path(str(tmp_path), 'core')}" in e.value.hint


def test_a_new_lu_or_another_target_is_a_change_too(tmp_path):
    d = shipped_dict()
    extra = json.loads(json.dumps(d["logical_units"][2]))
    extra["naa"] = "600144f0614f6bd2e51f4fc511ec0009"
    extra["backing"]["path"] = "/mnt/sp1/iscsi/lun2/second.img"
    extra["views"][0]["lun"] = 9
    d["logical_units"].append(extra)
    g, shipped = pinned_then(tmp_path, d)
    with pytest.raises(ConflictError, match="naa.600144f0614f6bd2e51f4fc511ec0009 .*: new LU"):
        shipping.trusted(str(tmp_path), g, shipped)

    d = shipped_dict()
    other = "iqn.2010-08.org.esxdr.lab:dr.other-group"  # e.g. the IQN of another group's live DR target
    d["targets"][0]["iqn"] = other
    for lu in d["logical_units"]:
        lu["views"][0]["target"] = other
    with pytest.raises(ConflictError) as e:
        shipping.trusted(str(tmp_path), g, shipping.decode(forge(d), g))
    assert f"target {other}: new" in e.value.message and f"target {PROD_IQN}: no longer shipped" in e.value.message


def test_unknown_inquiry_fields_and_non_identity_changes_keep_the_pin(tmp_path):
    """tgt reads vendor/product over iSCSI, which production's ACL may refuse: "unknown" is not a change.
    Sizes, aliases and LUN numbers are not identity. Either way the pinned manifest is presented."""
    d = shipped_dict(product_id=None, vendor_id=None, alias="renamed", size_bytes=128 << 20)
    d["logical_units"][0]["views"][0]["lun"] = 7
    d["logical_units"][0] = {k: v for k, v in d["logical_units"][0].items() if v is not None}
    g, shipped = pinned_then(tmp_path, d)
    got, origin = shipping.trusted(str(tmp_path), g, shipped)
    assert "pinned" in origin
    lu = got.logical_units[0]
    assert (lu.product_id, lu.vendor_id, lu.alias, lu.size_bytes) == ("COMSTAR", "SUN", None, 64 << 20)


def test_with_a_pin_and_nothing_shipped_the_pin_is_used(tmp_path):
    g, _ = pinned_then(tmp_path, shipped_dict())
    got, origin = shipping.trusted(str(tmp_path), g, None)
    assert "no manifest shipped" in origin and [lu.naa.hex for lu in got.logical_units] == NAAS
    assert shipping.trusted(str(tmp_path / "elsewhere"), g, None) is None


def test_an_edited_pin_is_refused_naming_the_file(tmp_path):
    g, _ = pinned_then(tmp_path, shipped_dict())
    path = shipping.pin_path(str(tmp_path), "core")
    d = json.loads(path.read_text())
    d["logical_units"][0]["backing"]["path"] = "/mnt/sp1/iscsi/lun0/../../../etc/shadow"
    path.write_text(json.dumps(d))
    with pytest.raises(ManifestError) as e:
        shipping.trusted(str(tmp_path), g, None)
    assert str(path) in e.value.message and "logical_units[0].backing.path" in e.value.message
    assert f"remove {path}" in e.value.hint


# --------------------------------------------------------------------------- resolve_manifest (drill, failover)
class FakeZfs:
    """`zfs get` of the DR root answering with the given properties (or failing like a lost link)."""

    def __init__(self, props: dict[str, str] | None, fail: bool = False):
        self.cmd = ("zfs",)
        self.fail = fail
        lines = "".join(f"rp1/iscsi\t{k}\t{v}\n" for k, v in (props or {}).items())
        self.t = SimpleNamespace(run=self._run)
        self._out = lines

    def _run(self, argv, check=False):
        if self.fail:
            raise RemoteError("ssh: connection refused")
        return SimpleNamespace(returncode=0, stdout=self._out, stderr="")


def site(tmp_path):
    return SimpleNamespace(state_dir=str(tmp_path / "state"), path=str(tmp_path / "site.yaml"))


def test_a_forged_shipped_manifest_makes_the_drill_refuse_instead_of_falling_back(tmp_path):
    forged = forge(shipped_dict(backing_path="/sp1/iscsi/lun0/../../../../etc/shadow"))
    with pytest.raises(ManifestError) as e:
        resolve_manifest(site(tmp_path), group(), FakeZfs(forged))
    assert e.value.message.startswith("shipped manifest for core")
    assert "logical_units[0].backing.path: '/sp1/iscsi/lun0/../../../../etc/shadow' leaves its dataset" \
        in e.value.message
    assert "no pin on this box yet" in e.value.hint
    assert not shipping.pin_path(site(tmp_path).state_dir, "core").exists()  # a refused manifest is never pinned


def test_resolve_pins_on_first_use_and_refuses_a_later_change(tmp_path):
    s, g = site(tmp_path), group()
    m, origin = resolve_manifest(s, g, FakeZfs(shipping.encode(manifest())[1]))
    assert "pinned on first use" in origin and [lu.naa.hex for lu in m.logical_units] == NAAS
    with pytest.raises(ConflictError, match="differs from the one pinned"):
        resolve_manifest(s, g, FakeZfs(forge(shipped_dict(naa="600144f0614f6bd2e51f4fc511ecffff"))))
    # a forged manifest after pinning: refused too, and the hint names the pin to recover with
    with pytest.raises(ManifestError) as e:
        resolve_manifest(s, g, FakeZfs(forge(shipped_dict(backing_path="/mnt/sp1/iscsi/lun0/../x"))))
    assert f"--manifest {shipping.pin_path(s.state_dir, 'core')}" in e.value.hint
    # DR unreachable: the pin still says what production served
    m, origin = resolve_manifest(s, g, FakeZfs(None, fail=True))
    assert "pinned" in origin and [lu.naa.hex for lu in m.logical_units] == NAAS


def test_an_explicit_manifest_is_checked_for_paths_but_may_name_file_secrets(tmp_path):
    from esxdr.model.manifest import save

    m = manifest()
    m.targets[0].auth = replace(m.targets[0].auth, mode="chap", user="esx", secret_ref="file:/root/chap")
    ok = tmp_path / "ok.yaml"
    save(m, ok)
    got, origin = resolve_manifest(site(tmp_path), group(), None, str(ok))
    assert origin == str(ok) and got.targets[0].auth.secret_ref == "file:/root/chap"
    m.logical_units[0].backing = Backing("file", "/elsewhere/sp1/iscsi/lun0/sub/lun.img", "sp1/iscsi/lun0")
    bad = tmp_path / "bad.yaml"
    save(m, bad)
    with pytest.raises(ManifestError, match="leaves its dataset"):
        resolve_manifest(site(tmp_path), group(), None, str(bad))


def test_a_read_only_caller_validates_but_takes_no_pin(tmp_path):
    """`esxdr plan discover` often runs off the DR box: it must not pin there, but still refuses a forgery."""
    s, g = site(tmp_path), group()
    m, origin = resolve_manifest(s, g, FakeZfs(shipping.encode(manifest())[1]), pin_first_use=False)
    assert "not pinned" in origin and [lu.naa.hex for lu in m.logical_units] == NAAS
    assert not shipping.pin_path(s.state_dir, "core").exists()
    with pytest.raises(ManifestError, match="leaves its dataset"):
        resolve_manifest(s, g, FakeZfs(forge(shipped_dict(backing_path="/mnt/sp1/iscsi/lun0/../x"))),
                         pin_first_use=False)

"""`esxdr target convert` end to end, and bad input giving a clear error and exit code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from esxdr.cli.main import run

CORPUS = Path(__file__).parent / "target_corpus"


def corpus(stack: str) -> list[str]:
    return sorted(str(p) for p in (CORPUS / stack).iterdir())


# Every LU of each stack's corpus, by NAA (test_targets_formats.py checks each one's identity).
CORPUS_NAAS = {
    "comstar": ["600144f0b6a1c6b0000051a4d5e20001", "600144f0b6a1c6b0000051a4d5e20002",
                "600144f0b6a1c6b0000051a4d5e20003"],
    "iscsitgt": ["600144f04a3c2b3e00000c2911d1b800", "600144f04a3c2b3e00000c2911d1b801",
                 "600144f04a3c2b3f00000c2911d1b802"],
    "lio": ["60014053f1d2c4b5a6947889a0b1c2d3", "60014058e7d6c5b4a3942819f0ed1c2b"],
    # targets.conf and tgtadm-show.txt together
    "tgt": ["60000000000000000e00000000010003", "60000000000000000e00000000020006",
            "600144f0b6a1c6b0000051a4d5e20001", "600144f0b6a1c6b0000051a4d5e20002",
            "600144f0c0ffee000000000000000001", "600144f0c0ffee000000000000000009"],
}


@pytest.mark.parametrize("stack", ["comstar", "iscsitgt", "lio", "tgt"])
def test_convert_to_manifest_json(stack, capsys):
    assert run(["target", "convert", "--from", stack, *corpus(stack), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["kind"] == "esxdr.target-manifest"
    assert d["source"]["stack"] == stack
    assert sorted(lu["naa"] for lu in d["logical_units"]) == CORPUS_NAAS[stack]


def test_convert_iscsitgt_to_tgt_with_rewrites(capsys):
    rc = run(["target", "convert", "--from", "iscsitgt", *corpus("iscsitgt"), "--to", "tgt",
              "--zvol-to-file", "/tank/dr/{name}.img", "--chap-user", "dr", "--chap-secret-ref", "secrets:dr",
              "--allow-initiator", "iqn.1998-01.com.vmware:esxi-dr"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "scsi_id 600144f04a3c2b3e00000c2911d1b800" in out and "/tank/dr/vmfs0.img" in out
    assert "initiator-name iqn.1998-01.com.vmware:esxi-dr" in out


def test_convert_comstar_to_lio(capsys):
    assert run(["target", "convert", "--from", "comstar", *corpus("comstar"), "--to", "lio"]) == 0
    data = json.loads(capsys.readouterr().out)
    # LIO's wwn (vpd_unit_serial) is the NAA's 25 vendor-specific digits after 6 + company id 00144f
    assert sorted(so["wwn"] for so in data["storage_objects"]) == [
        "0b6a1c6b0000051a4d5e20001", "0b6a1c6b0000051a4d5e20002", "0b6a1c6b0000051a4d5e20003"]


def test_convert_comstar_view_files_named_by_guid(capsys):
    # The help's layout: list-lu -v plus one `stmfadm list-view -l GUID` output per LU, GUID in the name.
    assert run(["target", "convert", "--from", "comstar", *corpus("comstar-per-lu"), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    views = {lu["naa"]: [v["lun"] for v in lu.get("views") or []] for lu in d["logical_units"]}
    assert views == {"600144f0b6a1c6b0000051a4d5e20001": [0], "600144f0b6a1c6b0000051a4d5e20002": [1, 5],
                     "600144f0b6a1c6b0000051a4d5e20003": []}


@pytest.mark.parametrize("source", ["iscsitgt", "comstar"])
def test_convert_to_lio_says_what_saveconfig_loses(source, capsys):
    # LIO's NAA is 6 + company_id + 25 serial digits and saveconfig.json keeps only the serial: restored
    # as written it gives naa.6001405…, not production's 600144f0…. The output must say so beside it.
    from esxdr.targets import lio

    assert run(["target", "convert", "--from", source, *corpus(source), "--to", "lio"]) == 0
    out, err = capsys.readouterr()
    saved = json.loads(out)  # stdout stays a restorable saveconfig.json
    for naa in CORPUS_NAAS[source]:
        so = next(s for s in saved["storage_objects"] if naa.endswith(s["wwn"]))
        restored = lio.naa_from_serial(so["wwn"])  # what LIO builds with its default company id
        assert restored.hex.startswith("6001405") and restored.hex != naa
        assert lio.naa_from_serial(so["wwn"], "00144f").hex == naa  # the company id the note asks for
        line = next(x for x in err.splitlines() if f"naa.{naa}:" in x)
        assert f"restored as {restored.esxi_name}" in line and "company_id=0x00144f" in line
        assert "vendor_id=SUN" in line and "product_id=" in line
    assert "--to lio-script" in err

    assert run(["target", "convert", "--from", source, *corpus(source), "--to", "lio", "--json"]) == 0
    ident = {d["naa"]: d for d in json.loads(capsys.readouterr().out)["identity"]}
    assert sorted(ident) == [f"naa.{n}" for n in CORPUS_NAAS[source]]
    assert all({"company_id", "vendor_id", "product_id"} <= set(d["lost_on_restore"]) for d in ident.values())


def test_convert_to_lio_script_sets_identity_before_export(capsys):
    assert run(["target", "convert", "--from", "iscsitgt", *corpus("iscsitgt"), "--to", "lio-script"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "#!/bin/sh" and "set -eu" in lines and lines[-1] == "targetcli saveconfig"
    for so, product in (("lun-0", "SOLARIS"), ("sp2-vmfs0", "SOLARIS"), ("sp2-vmfs0b", "SOLARIS")):
        create = next(i for i, x in enumerate(lines) if x.startswith("targetcli") and f"create name={so} " in x)
        sets = [i for i, x in enumerate(lines) if f"/{so}/wwn/" in x and not x.startswith("#")]
        export = next(i for i, x in enumerate(lines) if "luns create /backstores/" in x and x.split("/")[-1]
                      .startswith(f"{so} "))
        assert [lines[i].rsplit(" ", 1)[1] for i in sets] == ["0x00144f", "SUN", product]
        assert create < min(sets) and max(sets) < export  # the kernel refuses wwn writes once exported


def test_convert_with_secrets_file(tmp_path, capsys):
    secrets = tmp_path / "secrets.yaml"
    secrets.write_text("dr: drsecret12345\n")
    secrets.chmod(0o600)
    rc = run(["target", "convert", "--from", "tgt", str(CORPUS / "tgt/targets.conf"), "--to", "tgt",
              "--secrets", str(secrets), "--chap-user", "dr", "--chap-secret-ref", "secrets:dr"])
    assert rc == 0 and "incominguser dr drsecret12345" in capsys.readouterr().out
    secrets.chmod(0o644)
    assert run(["target", "convert", "--from", "tgt", str(CORPUS / "tgt/targets.conf"), "--to", "tgt",
                "--secrets", str(secrets), "--chap-user", "dr", "--chap-secret-ref", "secrets:dr"]) == 2
    assert "chmod 600" in capsys.readouterr().err


@pytest.mark.parametrize("stack, content, code, words", [
    ("iscsitgt", "<service_bundle><oops>", 2, "malformed XML"),
    ("lio", '{"storage_objects": [}', 2, "malformed JSON"),
    ("comstar", "hello\n", 2, "not recognised"),
    ("tgt", "nothing here\n", 2, "neither"),
])
def test_convert_bad_input(tmp_path, capsys, stack, content, code, words):
    f = tmp_path / "in.txt"
    f.write_text(content)
    assert run(["target", "convert", "--from", stack, str(f)]) == code
    assert words in capsys.readouterr().err


def test_convert_tgt_scsi_id_that_looks_like_naa5(tmp_path, capsys):
    # Not bad input: tgt reads any scsi_id character by character into an NAA-6 designator, so a
    # 16-digit NAA-5-looking id is presented right-aligned behind a 6 (see test_tgt_naa_from_scsi_id).
    f = tmp_path / "in.txt"
    f.write_text("<target iqn.2000-01.a:b>\n<backing-store /x>\nscsi_id 5000c5001234abcd\n</backing-store>\n"
                 "</target>\n")
    assert run(["target", "convert", "--from", "tgt", str(f), "--json"]) == 0
    out, err = capsys.readouterr()
    assert [lu["naa"] for lu in json.loads(out)["logical_units"]] == ["60000000000000005000c5001234abcd"]
    assert err == ""


def test_convert_identity_conflict_exit_3(tmp_path, capsys):
    m = tmp_path / "show.txt"
    m.write_text((CORPUS / "comstar/sbdadm-list-lu.txt").read_text().replace(
        "600144f0b6a1c6b0000051a4d5e20001", "5000c5001234abcd5000c5001234abcd"))
    assert run(["target", "convert", "--from", "comstar", str(m)]) == 2  # NAA-5 with 32 digits: bad NAA
    assert "16 hex digits" in capsys.readouterr().err


def test_convert_missing_file(capsys):
    assert run(["target", "convert", "--from", "lio", "/nonexistent/saveconfig.json"]) == 2
    assert "cannot read" in capsys.readouterr().err

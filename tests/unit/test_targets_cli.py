"""`esxdr target convert` end to end, and bad input giving a clear error and exit code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from esxdr.cli.main import run

CORPUS = Path(__file__).parent / "target_corpus"


def corpus(stack: str) -> list[str]:
    return sorted(str(p) for p in (CORPUS / stack).iterdir())


@pytest.mark.parametrize("stack", ["comstar", "iscsitgt", "lio", "tgt"])
def test_convert_to_manifest_json(stack, capsys):
    assert run(["target", "convert", "--from", stack, *corpus(stack), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["kind"] == "esxdr.target-manifest" and d["logical_units"]


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
    assert {so["wwn"] for so in data["storage_objects"]} >= {"0b6a1c6b0000051a4d5e20001"}


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
    ("tgt", "<target iqn.2000-01.a:b>\n<backing-store /x>\nscsi_id 5000c5001234abcd\n</backing-store>\n"
            "</target>\n", 0, ""),
])
def test_convert_bad_input(tmp_path, capsys, stack, content, code, words):
    f = tmp_path / "in.txt"
    f.write_text(content)
    assert run(["target", "convert", "--from", stack, str(f)]) == code
    assert words in capsys.readouterr().err


def test_convert_identity_conflict_exit_3(tmp_path, capsys):
    m = tmp_path / "show.txt"
    m.write_text((CORPUS / "comstar/sbdadm-list-lu.txt").read_text().replace(
        "600144f0b6a1c6b0000051a4d5e20001", "5000c5001234abcd5000c5001234abcd"))
    assert run(["target", "convert", "--from", "comstar", str(m)]) == 2  # NAA-5 with 32 digits: bad NAA
    assert "16 hex digits" in capsys.readouterr().err


def test_convert_missing_file(capsys):
    assert run(["target", "convert", "--from", "lio", "/nonexistent/saveconfig.json"]) == 2
    assert "cannot read" in capsys.readouterr().err

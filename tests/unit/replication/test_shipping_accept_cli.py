"""`esxdr target accept` and `esxdr target shipped` on the DR box: the pin, its diff, refusals.

The DR root's properties come from a fake `zfs get` (the CLI's only read of DR here); everything
else runs as on a real DR box whose storage server is `local: true`.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from test_shipping_untrusted import forge, shipped_dict

from esxdr.cli.main import run
from esxdr.replication import shipping

SITE = """\
version: 1
name: lab
state_dir: {state}
storage:
  ss1: {{role: production, local: true}}
  ss2: {dr}
protection_groups:
  core:
    source: ss1
    destination: ss2
    source_root: sp1/iscsi
    dr_root: rp1/iscsi
    datasets: [lun0, lun1, lun2]
    retention: "48h"
    rpo: 4h
"""
CHANGED_NAA = "600144f0614f6bd2e51f4fc511ecffff"


@pytest.fixture
def dr(tmp_path, monkeypatch):
    """A DR box (ss2 local) whose root carries ``dr.props``; ``dr.site`` is the site file's path."""
    box = SimpleNamespace(props=forge(shipped_dict()), state=tmp_path / "state", site=tmp_path / "site.yaml",
                          closed=0)
    box.site.write_text(SITE.format(state=box.state, dr="{role: dr, local: true}"))

    def run_zfs(argv, check=False):
        assert argv[:3] == ["zfs", "get", "-Hp"] and argv[-1] == "rp1/iscsi", argv
        out = "".join(f"rp1/iscsi\t{k}\t{v}\n" for k, v in box.props.items())
        return SimpleNamespace(returncode=0, stdout=out, stderr="")

    def open_side(site, name, **kw):
        assert name == "ss2"
        transport = SimpleNamespace(close=lambda: setattr(box, "closed", box.closed + 1))
        return SimpleNamespace(zfs=SimpleNamespace(cmd=("zfs",), t=SimpleNamespace(run=run_zfs)), transport=transport)

    import esxdr.replication

    monkeypatch.setattr(esxdr.replication.sides, "open_side", open_side)
    return box


def esxdr(box, *args: str) -> int:
    return run(["--site", str(box.site), *args])


def pin(box):
    return shipping.pin_path(str(box.state), "core")


def test_accept_dry_run_shows_the_first_pin_and_writes_nothing(dr, capsys):
    assert esxdr(dr, "target", "accept", "core", "--dry-run", "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["first_pin"] and out["dry_run"] and not out["accepted"]
    assert [c["change"] for c in out["changes"]] == ["added"] * 4  # three LUs and their target
    assert not pin(dr).exists()


def test_accept_pins_then_a_changed_naa_is_shown_and_accepted_only_without_dry_run(dr, capsys):
    assert esxdr(dr, "target", "accept", "core") == 0
    assert "(first pin)" in capsys.readouterr().out and pin(dr).exists()
    before = pin(dr).read_text()
    assert esxdr(dr, "target", "accept", "core") == 0
    assert "nothing to accept" in capsys.readouterr().out

    dr.props = forge(shipped_dict(naa=CHANGED_NAA))
    assert esxdr(dr, "target", "accept", "core", "--dry-run") == 0
    out = capsys.readouterr().out
    assert "would pin" in out and f"naa {shipped_dict()['logical_units'][0]['naa']} → {CHANGED_NAA}" in out
    assert pin(dr).read_text() == before  # --dry-run changed nothing
    assert esxdr(dr, "target", "accept", "core", "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["accepted"] and out["changes"][0]["field"] == "naa" and out["changes"][0]["shipped"] == CHANGED_NAA
    assert CHANGED_NAA in pin(dr).read_text()
    assert dr.closed >= 4  # every read closed its connection


def test_accept_refuses_a_forged_manifest_naming_the_field_and_keeps_the_pin(dr, capsys):
    assert esxdr(dr, "target", "accept", "core") == 0
    before = pin(dr).read_text()
    capsys.readouterr()
    dr.props = forge(shipped_dict(backing_path="/sp1/iscsi/lun0/../../../../etc/shadow"))
    assert esxdr(dr, "target", "accept", "core") == 2
    err = capsys.readouterr().err
    assert "shipped manifest for core" in err and "logical_units[0].backing.path" in err
    assert "leaves its dataset" in err and f"--manifest {pin(dr)}" in err
    assert "Traceback" not in err
    assert pin(dr).read_text() == before


def test_accept_refuses_off_the_dr_box(dr, capsys):
    key = dr.site.parent / "id_ed25519"
    key.write_text("not read: the command refuses before connecting\n")
    key.chmod(0o600)
    remote = (f"{{role: dr, address: 192.0.2.10, user: esxdr, key: {key}, "
              "host_key: 'SHA256:" + "A" * 43 + "'}")
    dr.site.write_text(SITE.format(state=dr.state, dr=remote))
    assert esxdr(dr, "target", "accept", "core") == 2
    err = capsys.readouterr().err
    assert "state of the DR box" in err and "local: true" in err and "Traceback" not in err
    assert not pin(dr).exists()


def test_accept_with_nothing_shipped_says_so(dr, capsys):
    dr.props = {}
    assert esxdr(dr, "target", "accept", "core") == 2
    assert "nothing to accept" in capsys.readouterr().err


def test_shipped_pins_on_first_use_and_warns_about_a_changed_one(dr, capsys):
    assert esxdr(dr, "--json", "target", "shipped", "core") == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["logical_units"] and "pinned on first use" in captured.err
    assert pin(dr).exists()
    dr.props = forge(shipped_dict(product_id="EVIL"))
    assert esxdr(dr, "target", "shipped", "core") == 0
    err = capsys.readouterr().err
    assert "differs from the one pinned" in err and "product_id 'COMSTAR' → 'EVIL'" in err
    assert "esxdr target accept core --dry-run" in err
    assert "EVIL" not in pin(dr).read_text()  # showing is not accepting


def test_shipped_refuses_a_forged_manifest(dr, capsys):
    dr.props = forge(shipped_dict(naa="700144f0614f6bd2e51f4fc511ec0001"))
    assert esxdr(dr, "target", "shipped", "core") == 2
    err = capsys.readouterr().err
    assert "logical_units[0].naa" in err and "type 7" in err and "Traceback" not in err
    assert not pin(dr).exists()


def test_help_of_accept_and_present_clone():
    from click.testing import CliRunner

    from esxdr.cli.main import cli

    out = CliRunner().invoke(cli, ["target", "accept", "--help"]).output
    assert "esxdr target accept core --dry-run" in out and "--json" in out
    assert "--allow-initiator" in CliRunner().invoke(cli, ["target", "present-clone", "--help"]).output

"""`esxdr report index|show|open` on a site file and a reports directory (generated runs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_report import drill, planned

from esxdr.cli.main import run
from esxdr.recovery import report

SITE = """version: 1
name: lab
state_dir: state
drill_max_age: 30d
storage:
  ss1: {role: production, local: true}
  ss2: {role: dr, local: true}
protection_groups:
  core:
    source: ss1
    destination: ss2
    source_root: sp1/iscsi
    dr_root: rp1/iscsi
    datasets: [lun0]
    retention: "48h 30d"
    rpo: 4h
  web:
    source: ss1
    destination: ss2
    source_root: sp1/web
    dr_root: rp1/web
    datasets: [lun0]
    retention: "48h 30d"
    rpo: 4h
    drill_max_age: 1000w
"""


@pytest.fixture
def site(tmp_path: Path) -> Path:
    p = tmp_path / "site.yaml"
    p.write_text(SITE)
    report.write(str(tmp_path / "state"), drill())  # core's drill, in November 2025: stale at 30 days
    report.write(str(tmp_path / "state"), {**planned(), "started": "2025-11-24T16:10:00+00:00"})
    return p


def test_index_json(site: Path, capsys: pytest.CaptureFixture[str]):
    assert run(["--site", str(site), "report", "index", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["index"] == str(site.parent / "state" / "reports" / "index.html")
    assert [r["kind"] for r in data["runs"]] == ["failover", "test-start"]
    assert {k for k in data if k.startswith("_")} == set()  # the charts' geometry stays out
    ages = {a["group"]: a for a in data["drills"]}
    assert ages["core"]["stale"] and ages["core"]["max_age_seconds"] == 30 * 86400  # the site-wide limit
    assert ages["web"]["stale"] and ages["web"]["at"] is None  # its own limit, never drilled


def test_index_text_names_the_stale_groups(site: Path, capsys: pytest.CaptureFixture[str]):
    assert run(["--site", str(site), "report", "index"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("index.html: 2 run(s) (1 failover, 1 validation drill)")
    assert out[1].startswith("core: last successful drill ") and out[1].endswith("limit 30d00h — STALE")
    assert out[2] == "web: never drilled successfully, limit 7000d00h — STALE"  # 1000w, its own


def test_open_index_prints_its_path(site: Path, capsys: pytest.CaptureFixture[str], monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    index = site.parent / "state" / "reports" / "index.html"
    index.unlink()  # written by the runs above: open writes it when it is missing
    assert run(["--site", str(site), "report", "open", "index"]) == 0
    assert capsys.readouterr().out.strip() == str(index) and index.exists()


def test_show_prints_rto_rpo_and_consistency_of_a_failover(site: Path, capsys: pytest.CaptureFixture[str]):
    assert run(["--site", str(site), "report", "show", "failover-core"]) == 0
    out = capsys.readouterr().out
    assert "RTO 35s, RPO 0s" in out and "consistent: VMs shut down" in out


def test_index_with_a_bad_site_file_is_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    p = tmp_path / "site.yaml"
    p.write_text(SITE.replace("drill_max_age: 30d", "drill_max_age: monthly"))
    assert run(["--site", str(p), "report", "index"]) == 2
    assert "drill_max_age: 'monthly' is not a duration" in capsys.readouterr().err

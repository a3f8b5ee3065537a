"""The reports' RTO and RPO cards and the consistency label, for every kind of run.

The records are built with the run records the runs use (RunRecord, FailoverRecord,
ReprotectRecord) and the step entries the runner writes, so the values come from the same
properties a real run's do; the HTML is read back with an HTML parser, by element id.
"""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import pytest

from esxdr.recovery import report
from esxdr.recovery.record import FailoverRecord, ReprotectRecord, RunRecord

T0 = 1_764_000_000.0  # 2025-11-24 16:00 UTC


class ById(HTMLParser):
    """The text of every element with an id, and every link target."""

    def __init__(self, html: str):
        super().__init__()
        self.text: dict[str, str] = {}
        self.links: list[str] = []
        self._open: list[tuple[str, str | None]] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "a" and a.get("href"):
            self.links.append(a["href"])
        if tag in ("br", "img", "line", "rect", "circle", "meta", "path", "polygon", "polyline"):
            return
        self._open.append((tag, a.get("id")))
        if a.get("id"):
            self.text.setdefault(a["id"], "")

    def handle_endtag(self, tag):
        while self._open:
            t, _ = self._open.pop()
            if t == tag:
                break

    def handle_data(self, data):
        for _, i in self._open:
            if i:
                self.text[i] += data


def step(kind: str, evidence: list[str], outcome: str = "done", sid: str | None = None) -> dict:
    return {"id": sid or kind, "kind": kind, "title": kind, "reason": "because", "start": 1.0, "end": 2.0,
            "outcome": outcome, "evidence": evidence}


def heartbeats(rec: RunRecord, after: float) -> None:
    rec.take_outcome({"vms": {"web1": {"priority": 1, "power": "poweredOn", "heartbeat": "green",
                                       "heartbeat_at": rec.started + after}}, "datastores": []})


def drill(consistency: str | None = "crash", outcome: str = "ok") -> dict:
    rec = RunRecord(kind="test-start", group="core", site="lab", started=T0, snapshot="esxdr_core_20251124T150000Z",
                    snapshot_created=T0 - 3600, consistency=consistency, finished=T0 + 80, outcome=outcome)
    if outcome == "ok":
        heartbeats(rec, 72)
    return rec.to_dict()


def planned(kind: str = "failover", shutdown: list[str] | None = None, pull: bool = False) -> dict:
    rec = FailoverRecord(kind=kind, group="core", site="lab", started=T0, mode="planned", finished=T0 + 40,
                         outcome="ok", snapshot="esxdr_core_20251124T160010Z", snapshot_created=T0 + 10,
                         consistency="crash")
    if not pull:
        rec.steps.append(step("shutdown", shutdown if shutdown is not None else
                              ["2 VM(s) stopped on esx-prod", "db1: shutdown", "web1: shutdown"]))
    else:
        rec.outage_at_least_seconds = 95.0
    rec.steps.append(step("replicate", ["@esxdr_core_20251124T160010Z: 2 dataset(s)"]))
    heartbeats(rec, 35)
    return rec.to_dict()


def kpi(html: str, name: str) -> str:
    return " ".join(ById(html).text.get(f"kpi-{name}", "").split())


def test_drill_has_rto_and_rpo_with_definitions():
    r = drill()
    html = report.render_html(r)
    assert kpi(html, "rto").startswith("RTO1m12s")  # start → last heartbeat
    assert "from the start of the drill to the last VM's first VMware Tools heartbeat on the DR host" in kpi(html, "rto")
    assert kpi(html, "rpo").startswith("RPO1h00m")  # the snapshot's age at the start
    assert "age of the recovered snapshot when the drill started" in kpi(html, "rpo")
    assert ById(html).text["consistency"] == "crash-consistent"
    assert "<script" not in html


@pytest.mark.parametrize("level,label", [
    ("application", "application-consistent: the VMs were quiesced"),
    ("mixed", "partly application-consistent"),
    (None, "crash-consistent"),
])
def test_drill_consistency_is_the_recorded_level(level, label):
    assert ById(report.render_html(drill(level))).text["consistency"].startswith(label)


def test_planned_failover_after_a_clean_shutdown_is_consistent_not_crash_consistent():
    r = planned()
    html = report.render_html(r)
    assert ById(html).text["consistency"] == "consistent: VMs shut down"
    assert "crash" not in html
    assert kpi(html, "rpo").startswith("RPO0s") and "the VMs were stopped before the final snapshot" in kpi(html, "rpo")
    assert kpi(html, "rto").startswith("RTO35s")
    assert "shutting the VMs down and the final replication included" in kpi(html, "rto")
    assert "esxdr failover (planned) — core" in html


def test_planned_failover_names_a_vm_powered_off_hard_as_crash_consistent():
    r = planned(shutdown=["2 VM(s) stopped on esx-prod", "db1: powered off", "web1: shutdown"])
    label = ById(report.render_html(r)).text["consistency"]
    assert label.startswith("crash-consistent for db1 (powered off") and "consistent for the VMs shut down" in label


def test_planned_failover_without_production_vsphere_keeps_the_recorded_level():
    r = planned(shutdown=["no production vSphere in the site file: the VMs were not shut down by esxdr"])
    assert ById(report.render_html(r)).text["consistency"].startswith("crash-consistent (esxdr did not shut")


def test_planned_failover_in_pull_mode_stopped_at_the_hand_off():
    r = planned(pull=True)
    html = report.render_html(r)
    assert ById(html).text["consistency"].startswith("consistent: the VMs were stopped at the other side's hand-off")
    assert kpi(html, "outage").startswith("Outage ≥1m35s")
    assert "went down earlier, at the other side's hand-off" in kpi(html, "rto")


def test_disaster_failover():
    rec = FailoverRecord(kind="failover", group="core", site="lab", started=T0, mode="disaster", finished=T0 + 30,
                         outcome="ok", snapshot="esxdr_core_20251124T154500Z", snapshot_created=T0 - 900)
    heartbeats(rec, 20)
    html = report.render_html(rec.to_dict())
    assert kpi(html, "rpo").startswith("RPO15m00s") and "the writes made after it are lost" in kpi(html, "rpo")
    assert kpi(html, "rto").startswith("RTO20s")
    assert ById(html).text["consistency"] == "crash-consistent"


def test_a_refused_failover_does_not_claim_a_level_for_the_point_it_did_not_recover():
    rec = FailoverRecord(kind="failover", group="core", site="lab", started=T0, mode="disaster", finished=T0 + 2,
                         outcome="failed", snapshot="esxdr_core_20251124T154500Z", snapshot_created=T0 - 900,
                         error="split-brain guard: production still serves the group's LUNs")
    html = report.render_html(rec.to_dict())
    assert ById(html).text["consistency"].startswith("not recovered: the run stopped before it")
    assert "crash" not in html


def test_failback_is_measured_at_production():
    html = report.render_html(planned("failback", ["1 VM(s) stopped on esx-dr", "web1: shutdown"]))
    assert "heartbeat at production" in kpi(html, "rto") and kpi(html, "rpo").startswith("RPO0s")
    assert ById(html).text["consistency"] == "consistent: VMs shut down"


def test_reprotect_shows_its_replication_point():
    rec = ReprotectRecord(kind="reprotect", group="core", site="lab", started=T0, direction="ss2 → ss1",
                          snapshot="esxdr_core_20251124T160005Z", snapshot_created=T0 + 5, finished=T0 + 25,
                          outcome="ok", bytes=3 << 20, consistency="crash")
    with rec.step("replicate", "replicate", "replicate ss2 → ss1", "catch up") as ev:
        ev.append("@esxdr_core_20251124T160005Z: 2 dataset(s)")
    r = rec.to_dict()
    assert r["rpo_seconds"] == 20 and r["rto_seconds"] is None
    html = report.render_html(r)
    assert kpi(html, "rpo").startswith("RPO20s") and "when reprotect finished" in kpi(html, "rpo")
    assert kpi(html, "rto").startswith("RTOn/a") and "reprotect boots nothing" in kpi(html, "rto")
    assert "Replication point: esxdr_core_20251124T160005Z" in " ".join(html.split()).replace("<code>", "").replace(
        "</code>", "")
    assert "3.0 MiB" in html and r["steps"][0]["outcome"] == "done"


def test_a_failed_reprotect_step_records_its_error():
    rec = ReprotectRecord(kind="reprotect", group="core", site="lab", started=T0)
    with pytest.raises(RuntimeError), rec.step("replicate", "replicate", "replicate", "catch up"):
        raise RuntimeError("link down")
    assert rec.steps[0]["outcome"] == "failed" and rec.steps[0]["evidence"] == ["link down"]


def test_hand_off_and_cleanup_have_no_rto_or_rpo():
    ho = FailoverRecord(kind="hand-off", group="core", site="lab", started=T0, mode="planned", finished=T0 + 9,
                        outcome="ok", snapshot="esxdr_core_20251124T160005Z", snapshot_created=T0 + 5)
    ho.steps.append(step("shutdown", ["1 VM(s) stopped on esx-prod", "web1: shutdown"]))
    html = report.render_html(ho.to_dict())
    assert "kpi-rto" not in html and ById(html).text["consistency"] == "consistent: VMs shut down"
    assert "Final snapshot" in html
    cleanup = RunRecord(kind="test-cleanup", group="core", site="lab", started=T0, finished=T0 + 3, outcome="ok")
    html = report.render_html(cleanup.to_dict())
    assert "kpi-rto" not in html and "kpi-rpo" not in html and 'id="consistency"' not in html


def test_a_failed_drill_says_its_rto_was_not_reached():
    html = report.render_html(drill(outcome="failed"))
    assert kpi(html, "rto").startswith("RTOn/anot reached: the run did not complete")


def test_text_form_has_the_cards_for_every_recovering_kind():
    assert "RTO 35s, RPO 0s" in report.render_text(planned())
    assert "consistent: VMs shut down" in report.render_text(planned())
    assert "RTO 1m12s, RPO 1h00m" in report.render_text(drill())


def test_write_keeps_the_label_in_the_json_and_refreshes_the_index(tmp_path: Path):
    j, h = report.write(str(tmp_path), planned())
    assert json.loads(Path(j).read_text())["consistency_label"] == "consistent: VMs shut down"
    index = tmp_path / "reports" / "index.html"
    assert index.exists() and Path(h).name in ById(index.read_text()).links
    assert "index.html" in ById(Path(h).read_text()).links

"""The index page over the reports, the drill ages and the recovery metrics (generated runs).

Real runs' reports go through the same code in tests/integration/test_report_index.py, where a
browser loads the page; here the rules: which runs are listed, when a group is flagged, what the
SVG trend holds, and that the metrics follow the Prometheus text format.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import promtext
from test_report import T0, ById, drill, planned

from esxdr.recovery import history, report
from esxdr.recovery.record import FailoverRecord, RunRecord

DAY = 86400.0


def at(record: dict, t: float) -> dict:
    """The record of a run started at ``t`` (the report's name and the trend's x come from it)."""
    from datetime import UTC, datetime

    return {**record, "started": datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds"),
            "finished": datetime.fromtimestamp(t + 80, UTC).isoformat(timespec="seconds")}


def history_dir(tmp_path: Path) -> str:
    """core: two drills (one failed), a failed and a planned failover, a failback; web: one drill;
    a cleanup, which the index leaves out."""
    s = str(tmp_path)
    report.write(s, at(drill(), T0 - 40 * DAY))
    report.write(s, at(drill(outcome="failed"), T0 - 20 * DAY))
    report.write(s, at({**drill(), "group": "web"}, T0 - 2 * DAY))
    cleanup = RunRecord(kind="test-cleanup", group="core", site="lab", started=T0, finished=T0 + 3, outcome="ok")
    report.write(s, at(cleanup.to_dict(), T0 - 40 * DAY + 600))
    refused = FailoverRecord(kind="failover", group="core", site="lab", started=T0, mode="disaster", outcome="failed",
                             error="split-brain guard: production still serves the group's LUNs")
    report.write(s, at(refused.to_dict(), T0 - DAY))
    report.write(s, at(planned(), T0 - DAY + 300))
    report.write(s, at(planned("failback", ["1 VM(s) stopped on esx-dr", "web1: shutdown"]), T0 - 3600))
    return s


def test_index_lists_every_recovery_run_newest_first_with_a_link_each(tmp_path: Path):
    s = history_dir(tmp_path)
    data = history.write_index(s, {"core": int(30 * DAY)}, now=T0)
    kinds = [r["kind"] for r in data["runs"]]
    assert kinds == ["failback", "failover", "failover", "test-start", "test-start", "test-start"]
    html = (tmp_path / "reports" / "index.html").read_text()
    rows = re.findall(r'<tr data-kind="([^"]+)" data-outcome="([^"]+)" data-group="([^"]+)">', html)
    assert rows == [(r["kind"], r["outcome"], r["group"]) for r in data["runs"]]
    links = ById(html).links
    for r in data["runs"]:
        assert r["html"] in links and (tmp_path / "reports" / r["html"]).exists()
    assert not any(link.startswith(("http:", "https:", "//")) for link in links)
    assert "<script" not in html and " src=" not in html  # self-contained: no script, nothing fetched
    planned_row = next(r for r in data["runs"] if r["kind"] == "failover" and r["outcome"] == "ok")
    assert (planned_row["rto_seconds"], planned_row["rpo_seconds"]) == (35.0, 0)
    assert planned_row["consistency"] == "consistent: VMs shut down"


def test_drill_ages_flag_a_group_past_its_limit_and_one_never_drilled(tmp_path: Path):
    s = history_dir(tmp_path)
    ages = {a["group"]: a for a in history.build(s, {"core": int(30 * DAY), "web": int(7 * DAY), "db": int(DAY)},
                                                  T0)["drills"]}
    # core's last SUCCESSFUL drill is 40 days old (the one 20 days ago failed)
    assert ages["core"]["stale"] and round(ages["core"]["age_seconds"] / DAY) == 40 and ages["core"]["drills"] == 2
    assert not ages["web"]["stale"] and ages["web"]["max_age_seconds"] == 7 * DAY
    assert ages["db"]["stale"] and ages["db"]["at"] is None  # never drilled, with a limit
    unlimited = {a["group"]: a for a in history.build(s, {}, T0)["drills"]}
    assert not unlimited["core"]["stale"]  # no limit: shown, never flagged
    history.write_index(s, {"core": int(30 * DAY)}, now=T0)
    html = (tmp_path / "reports" / "index.html").read_text()
    row = re.search(r'<tr class="stale" data-group="core">.*?</tr>', html, re.S)
    assert row and "STALE: older than the limit" in row.group(0)
    assert '<tr class="" data-group="web">' in html


def test_trend_has_an_rto_and_an_rpo_chart_per_group_with_a_mark_per_run(tmp_path: Path):
    s = history_dir(tmp_path)
    trends = {t["group"]: t for t in history.build(s, {}, T0)["_trends"]}
    assert set(trends) == {"core", "web"}
    rto, rpo = trends["core"]["charts"]
    assert (rto["name"], rpo["name"]) == ("RTO", "RPO")
    assert len(rto["marks"]) == 5  # 2 drills, 2 failovers, 1 failback
    shapes = [m["shape"] for m in rto["marks"]]
    assert shapes == ["circle", "cross", "cross", "square", "diamond"]  # the failed ones: no RTO measured
    assert all(m["color"] == "#c62828" for m in rto["marks"] if m["shape"] == "cross")
    # time runs left to right, values up: the drill with RPO 1h is above the planned runs' RPO 0
    xs = [m["x"] for m in rpo["marks"]]
    assert xs == sorted(xs) and rpo["left"] <= xs[0] and xs[-1] <= rpo["right"]
    assert rpo["marks"][0]["y"] < rpo["marks"][-1]["y"] == rpo["bottom"]
    assert [t["label"] for t in rpo["yticks"]] == ["0s", "30m00s", "1h00m"]
    html = history.render(history.build(s, {}, T0))
    assert html.count('class="trend"') == 4 and html.count("<polyline") == 4


def test_one_run_gets_a_window_around_it():
    run = {"started_ts": T0, "when": "x", "outcome": "ok", "kind": "test-start", "title": "drill", "html": "a.html",
           "rto_seconds": 12.0, "rpo_seconds": 0}
    c = history.chart([run], "rto_seconds")
    assert c["left"] < c["marks"][0]["x"] < c["right"] and c["day"] == "2025-11-24"


def test_an_empty_reports_directory_gives_an_empty_page(tmp_path: Path):
    data = history.write_index(str(tmp_path), {"core": 86400}, now=T0)
    assert data["runs"] == [] and data["drills"][0]["stale"]
    assert "No runs yet" in (tmp_path / "reports" / "index.html").read_text()


def test_unreadable_reports_are_skipped(tmp_path: Path):
    d = tmp_path / "reports"
    d.mkdir()
    (d / "broken.json").write_text("{")
    (d / "other.json").write_text(json.dumps([1, 2]))
    assert history.runs(str(tmp_path)) == []


def test_recovery_metrics(tmp_path: Path):
    s = history_dir(tmp_path)
    runs = history.runs(s)
    text = history.prometheus_text(runs, ["core", "web", "db"], {"core": int(30 * DAY), "web": None, "db": None}, T0)
    m = promtext.samples(text)
    last_drill = dict((lbl["group"], v) for lbl, v in m["esxdr_drill_last_success_timestamp_seconds"])
    assert last_drill["core"] == T0 - 40 * DAY + 80 and last_drill["db"] == 0  # 0: never
    assert m["esxdr_drill_max_age_seconds"] == [({"group": "core"}, 30 * DAY)]
    totals = {(lbl["group"], lbl["kind"], lbl["outcome"]): v for lbl, v in m["esxdr_recovery_runs_total"]}
    assert totals[("core", "test-start", "ok")] == 1 and totals[("core", "test-start", "failed")] == 1
    assert totals[("core", "failover", "failed")] == 1 and totals[("core", "test-cleanup", "ok")] == 1
    assert totals[("db", "failover", "failed")] == 0 and len(totals) == 3 * 7 * 2  # from 0: increase() sees the 1st
    last_ok = {(lbl["group"], lbl["kind"]): v for lbl, v in m["esxdr_recovery_last_run_ok"]}
    assert last_ok[("core", "test-start")] == 0 and last_ok[("core", "failover")] == 1  # newest of each kind
    rto = {(lbl["group"], lbl["kind"]): v for lbl, v in m["esxdr_recovery_last_rto_seconds"]}
    assert rto[("core", "failover")] == 35 and rto[("core", "test-start")] == 72
    assert "web" not in str(history.prometheus_text(runs, ["core"], {}, T0))  # only the groups asked for


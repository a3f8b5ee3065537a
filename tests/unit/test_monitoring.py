"""docs/monitoring: the alert rules pass promtool (Debian's `prometheus`), fire on the series they
are for and not on the others, the dashboard's queries are valid PromQL, and every metric either
uses is one `esxdr status --prometheus` writes.

The real textfile of a lab, loaded into a real Prometheus with these rules and the dashboard's
queries, is tests/integration/test_report_index.py; here promtool's own evaluator on series made up
for each rule.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import promtext
import pytest
import yaml
from test_history import history_dir
from test_report import T0

from esxdr.recovery import history
from esxdr.replication.status import prometheus_text

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "docs" / "monitoring"
RULES = MONITORING / "esxdr.rules.yml"
DASHBOARD = MONITORING / "esxdr-dashboard.json"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"  # Debian package prometheus (scripts/setup)
METRIC = re.compile(r"\besxdr_[a-z0-9_]+")


def rules() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p.get("targets", [])]


def promql(expr: str) -> str:
    """A dashboard query as Prometheus reads it once Grafana has put in its variables."""
    return expr.replace("$group", ".*").replace("$__range", "7d")


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def test_promtool_checks_the_rules():
    r = promtool("check", "rules", *map(str, sorted(MONITORING.glob("*.rules.yml"))))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 5 rules found" in r.stdout


SERIES = {  # one minute apart, three hours; evaluated at 2h (promtool's clock starts at 0: time() = 7200)
    'esxdr_rpo_ok{group="core"}': "0x180",
    'esxdr_rpo_ok{group="web"}': "1x180",
    'esxdr_rpo_target_seconds{group="core"}': "3600x180",
    'esxdr_rpo_target_seconds{group="web"}': "3600x180",
    'esxdr_last_run_timestamp_seconds{group="core"}': "0x180",  # never succeeded
    'esxdr_last_run_timestamp_seconds{group="web"}': "6000x180",  # 20 minutes before the evaluation
    'esxdr_recovery_runs_total{group="core",kind="test-start",outcome="failed"}': "0x60 1x120",  # fails at 1h
    'esxdr_recovery_runs_total{group="web",kind="test-start",outcome="failed"}': "0x180",
    'esxdr_recovery_runs_total{group="web",kind="test-start",outcome="ok"}': "0x60 1x120",
    'esxdr_drill_last_success_timestamp_seconds{group="core"}': "0x180",  # never drilled
    'esxdr_drill_last_success_timestamp_seconds{group="web"}': "6000x180",
    'esxdr_drill_last_success_timestamp_seconds{group="db"}': "0x180",  # never, but no drill_max_age
    'esxdr_drill_max_age_seconds{group="core"}': "3600x180",
    'esxdr_drill_max_age_seconds{group="web"}': "3600x180",
    "esxdr_status_timestamp_seconds": "0x180",
}
FIRES = {"EsxdrRpoBreached": ["core"], "EsxdrReplicationFailing": ["core"], "EsxdrRecoveryRunFailed": ["core"],
         "EsxdrDrillStale": ["core"], "EsxdrStatusNotWritten": [None]}


def test_each_alert_fires_for_its_case_and_no_other(tmp_path: Path):
    """Each rule's expression through promtool's evaluator: which groups it selects (count by group)."""
    assert {r["alert"] for r in rules()} == set(FIRES)
    tests = []
    for r in rules():
        expected = [{"labels": f'{{group="{g}"}}' if g else "{}", "value": 1} for g in FIRES[r["alert"]]]
        tests.append({"expr": f"count by (group) ({r['expr']})", "eval_time": "2h", "exp_samples": expected})
    (tmp_path / "rules.yml").write_text(RULES.read_text())
    (tmp_path / "test.yml").write_text(yaml.safe_dump({
        "rule_files": ["rules.yml"], "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": [{"series": s, "values": v} for s, v in SERIES.items()],
                   "promql_expr_test": tests,
                   # and the whole rule once, `for:` and annotations included
                   "alert_rule_test": [{"eval_time": "2h", "alertname": "EsxdrStatusNotWritten", "exp_alerts": [{
                       "exp_labels": {"severity": "warning"},
                       "exp_annotations": {
                           "summary": "esxdr status has not written its textfile for 2h 0m 0s",
                           "description": next(r for r in rules() if r["alert"] == "EsxdrStatusNotWritten")[
                               "annotations"]["description"].replace("{{ $labels.instance }}", "")}}]}]}]}))
    r = promtool("test", "rules", "test.yml", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_dashboard_queries_are_valid_promql(tmp_path: Path):
    """promtool parses every query (as a recording rule); Grafana's variables are filled in first."""
    exprs = dashboard_exprs()
    assert len(exprs) >= 12
    rec = {"groups": [{"name": "dashboard", "rules": [{"record": f"dashboard:q{i}", "expr": promql(e)}
                                                      for i, e in enumerate(exprs)]}]}
    (tmp_path / "dashboard.rules.yml").write_text(yaml.safe_dump(rec))
    r = promtool("check", "rules", str(tmp_path / "dashboard.rules.yml"))
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_dashboard_is_laid_out_and_takes_its_datasource_from_a_variable():
    d = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    cells = set()
    for p in d["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        cell = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & cell, f"{p['title']} overlaps another panel"
        cells |= cell
        for t in p.get("targets", []):
            assert t["datasource"]["uid"] == "${datasource}" and t["expr"]
    names = {v["name"] for v in d["templating"]["list"]}
    assert names == {"datasource", "group"}
    wanted = {"RPO per group", "Last replication run: bytes sent", "Last replication run: duration",
              "Failed recovery runs (range)", "Age of the last successful drill"}
    assert wanted <= {p["title"] for p in d["panels"]}


def written_metrics(tmp_path: Path) -> set[str]:
    """The metric families of a textfile esxdr status writes (a group with every kind of run)."""
    rows = [{"group": "core", "rpo_seconds": 252.0, "rpo_target_seconds": 14400, "ok": True,
             "last_run": {"bytes": 1024, "seconds": 4.1, "finished": "2025-11-24T16:00:00+00:00"},
             "dr_retention": {"pruned_by": "dr", "due": 3, "oldest_due_seconds": 7200}}]
    s = history_dir(tmp_path)
    text = prometheus_text(rows, T0) + history.prometheus_text(history.runs(s), ["core"], {"core": 86400}, T0)
    return set(promtext.samples(text))


def test_every_metric_used_is_one_esxdr_status_writes(tmp_path: Path):
    used = {m for e in dashboard_exprs() for m in METRIC.findall(e)}
    used |= {m for r in rules() for m in METRIC.findall(r["expr"])}
    assert used - written_metrics(tmp_path) == set()
    assert len(used) >= 12


@pytest.mark.parametrize("doc", ["README.md"])
def test_the_readme_names_every_metric(doc: str, tmp_path: Path):
    text = (MONITORING / doc).read_text()
    assert {m for m in written_metrics(tmp_path) if f"`{m}" not in text} == set()

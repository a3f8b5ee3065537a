"""The history of real runs on a lab of its own, seen as an auditor and an on-call person see it.

Through the CLI, as an operator would: a drill, a disaster failover refused by the split-brain
guard (a failed run), a planned failover, reprotect, failback and a second drill. Then:

- the reports directory's index.html (rewritten by every run) lists them with RTO, RPO and links,
  and `esxdr report index --json` says the same;
- headless Chromium (Debian's package, over the DevTools protocol) loads the index and every report
  it links with no console error and no request outside the directory, the cards and labels are in
  the DOM, and the screenshots decode to more than one colour (ESXDR_WRITE_SCREENSHOTS=1 writes them
  to docs/img for the user guide);
- `esxdr status --prometheus` writes every metric docs/monitoring's dashboard and rules use
  (promtool check metrics agrees with the format), and a real Prometheus (Debian's package) scraping
  that file with the rules evaluates them without error and answers every dashboard query with data.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import promtext
import pytest
import yaml
from browser import Browser, colours

pytestmark = pytest.mark.integration

pytest_plugins = ["drill_fixtures"]

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "docs" / "monitoring"
DOCS_IMG = ROOT / "docs" / "img"
SHOTS = os.environ.get("ESXDR_WRITE_SCREENSHOTS") == "1"
METRIC = re.compile(r"\besxdr_[a-z0-9_]+")


@pytest.fixture(scope="module")
def history_lab(drill_lab):
    """The lab after a drill, a refused failover, a planned failover, reprotect, failback and a drill."""
    dl = drill_lab
    site = Path(dl.site)
    site.write_text(re.sub(r"^(name: .*)$", r"\1\ndrill_max_age: 30d", site.read_text(), count=1, flags=re.M))
    dl.ok("site", "validate")
    dl.power_on_production()
    dl.ok("test", "start", "core")
    dl.ok("test", "cleanup", "core")
    refused = dl.esxdr("failover", "core", "--disaster")  # production still serves the LUNs: exit 3
    assert refused.returncode == 3 and "split-brain" in refused.stderr, refused.stderr
    dl.ok("replicate", "core")
    dl.ok("failover", "core", "--planned")
    dl.ok("reprotect", "core", "--yes")
    dl.ok("failback", "core", "--planned")
    dl.ok("replicate", "core")
    dl.ok("test", "start", "core")
    dl.ok("test", "cleanup", "core")
    dl.reports = Path(json.loads(dl.ok("report", "list", "--json").stdout)[0]["json"]).parent
    return dl


def test_every_run_is_in_the_index_it_rewrote(history_lab):
    dl = history_lab
    index = dl.reports / "index.html"
    newest = max(p.stat().st_mtime for p in dl.reports.glob("*.json"))
    assert index.exists() and index.stat().st_mtime >= newest  # the runs rewrote it, not `report index`
    data = json.loads(dl.ok("report", "index", "--json").stdout)
    runs = data["runs"]
    assert [(r["kind"], r["outcome"]) for r in runs] == [
        ("test-start", "ok"), ("failback", "ok"), ("reprotect", "ok"), ("failover", "ok"), ("failover", "failed"),
        ("test-start", "ok")]
    failback, reprotect, planned, refused = runs[1:5]
    assert planned["mode"] == "planned" and planned["rpo_seconds"] == 0 and planned["rto_seconds"] > 0
    assert planned["consistency"] == "consistent: VMs shut down"  # the lab's VMs have tools: shut down cleanly
    assert failback["consistency"] == "consistent: VMs shut down" and failback["rto_seconds"] > 0
    assert "split-brain" in refused["error"] and refused["rto_seconds"] is None
    assert refused["consistency"].startswith("not recovered")  # it recovered nothing: no level claimed
    assert reprotect["rpo_seconds"] is not None and reprotect["rto_seconds"] is None
    # the lab's group is `consistency: application`: replication quiesced the VMs it found running
    assert all(r["consistency"] == "application-consistent: the VMs were quiesced" for r in runs
               if r["kind"] == "test-start"), runs
    assert all((dl.reports / r["html"]).exists() for r in runs)
    (core,) = data["drills"]
    assert core["group"] == "core" and core["drills"] == 2 and core["max_age_seconds"] == 30 * 86400
    assert not core["stale"] and core["html"] == runs[0]["html"] and core["age_seconds"] < 600
    text = dl.ok("report", "index").stdout
    assert "core: last successful drill" in text and "STALE" not in text


def test_chromium_loads_the_index_and_every_report_it_links(history_lab, tmp_path: Path):
    dl = history_lab
    runs = json.loads(dl.ok("report", "index", "--json").stdout)["runs"]
    with Browser() as b:
        # The detector is not blind: a page with a console error, an exception and a missing file.
        (tmp_path / "bad.html").write_text('<img src="missing.png"><script>console.error("x"); nofn()</script>')
        bad, _ = b.open((tmp_path / "bad.html").as_uri())
        assert len(bad.errors) >= 3, bad.errors

        page, s = b.open((dl.reports / "index.html").as_uri())
        assert page.errors == [] and page.requests == [page.url]
        assert b.eval(s, "document.querySelectorAll('#runs tr[data-kind]').length") == len(runs)
        assert b.eval(s, "[...document.querySelectorAll('#runs tr[data-kind]')].map(r => r.dataset.kind)") == \
            [r["kind"] for r in runs]
        assert b.eval(s, "document.querySelectorAll('svg.trend').length") == 2  # RTO and RPO of core
        # a mark per drill, failover and failback, each a link to its report
        assert b.eval(s, "document.querySelector('svg.trend').querySelectorAll('a').length") == 5
        assert b.eval(s, "document.querySelector('#drills tr[data-group=core]').className") == ""  # not stale
        # every link, the SVG marks' included (their href is not a string: read the attribute)
        links = b.eval(s, "[...new Set([...document.querySelectorAll('a')].map("
                          "a => new URL(a.getAttribute('href'), document.baseURI).href))]")
        reports = sorted({link for link in links if link.endswith(".html")})
        assert {Path(urllib.parse.urlparse(u).path).name for u in reports} == {r["html"] for r in runs}
        png = b.screenshot(s, full_page=True)
        check_screenshot(png, "report-index.png")

        for url in reports:
            page, s = b.open(url)
            assert page.errors == [] and page.requests == [url], (url, page.errors, page.requests)
            shown = b.eval(s, """JSON.stringify({h1: document.querySelector('h1').innerText,
                rto: document.getElementById('kpi-rto')?.innerText, rpo: document.getElementById('kpi-rpo')?.innerText,
                consistency: document.getElementById('consistency')?.innerText, body: document.body.innerText})""")
            shown = json.loads(shown)
            name = Path(urllib.parse.urlparse(url).path).name
            run = next(r for r in runs if r["html"] == name)
            if run["kind"] in ("test-start", "failover", "failback", "reprotect"):
                assert shown["rto"] and shown["rpo"], (name, shown)
                assert "from the start of" in shown["rto"] or "reprotect boots nothing" in shown["rto"]
            if run["kind"] in ("failover", "failback") and run["outcome"] == "ok":
                assert shown["consistency"] == "consistent: VMs shut down" and "crash" not in shown["body"]
                assert "nothing lost" in shown["rpo"]
                if run["kind"] == "failover":
                    check_screenshot(b.screenshot(s), "report-failover.png")  # the top: cards, label, timeline


def check_screenshot(png: bytes, name: str) -> None:
    width, height, seen = colours(png)
    assert width == 1100 and height > 600 and len(seen) > 50, (name, width, height, len(seen))
    if SHOTS:
        DOCS_IMG.mkdir(exist_ok=True)
        (DOCS_IMG / name).write_bytes(png)


def used_metrics() -> set[str]:
    rules = yaml.safe_load((MONITORING / "esxdr.rules.yml").read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]] + dashboard_queries()
    return {m for e in exprs for m in METRIC.findall(e)}


def dashboard_queries() -> list[str]:
    panels = json.loads((MONITORING / "esxdr-dashboard.json").read_text())["panels"]
    return [t["expr"].replace("$group", ".*").replace("$__range", "1h") for p in panels for t in p.get("targets", [])]


@pytest.fixture(scope="module")
def textfile(history_lab):
    d = Path(tempfile.mkdtemp(prefix="esxdr-prom-"))
    r = history_lab.esxdr("status", "--prometheus", str(d / "esxdr.prom"))
    assert r.returncode == 0, r.stdout + r.stderr  # just replicated: the RPO is within target
    assert "last successful drill" in r.stdout and "(limit 30d00h)" in r.stdout
    yield d / "esxdr.prom"
    shutil.rmtree(d, ignore_errors=True)


def test_status_writes_every_metric_the_dashboard_and_the_rules_use(textfile: Path):
    text = textfile.read_text()
    lint = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert lint.returncode == 0 and not lint.stdout.strip(), lint.stdout + lint.stderr
    families = promtext.samples(text)
    assert used_metrics() - set(families) == set()
    by = {name: {tuple(sorted(lbl.items())): v for lbl, v in ss} for name, ss in families.items()}
    now = time.time()
    assert now - 600 < by["esxdr_drill_last_success_timestamp_seconds"][(("group", "core"),)] < now
    assert by["esxdr_drill_max_age_seconds"][(("group", "core"),)] == 30 * 86400
    runs = by["esxdr_recovery_runs_total"]
    assert runs[(("group", "core"), ("kind", "failover"), ("outcome", "failed"))] == 1
    assert runs[(("group", "core"), ("kind", "failover"), ("outcome", "ok"))] == 1
    assert runs[(("group", "core"), ("kind", "test-start"), ("outcome", "ok"))] == 2
    assert by["esxdr_recovery_last_run_ok"][(("group", "core"), ("kind", "failover"))] == 1
    assert by["esxdr_recovery_last_rpo_seconds"][(("group", "core"), ("kind", "failover"))] == 0
    assert by["esxdr_last_run_seconds"][(("group", "core"),)] > 0
    assert now - 600 < by["esxdr_last_run_timestamp_seconds"][(("group", "core"),)] < now


def alerts(port: int) -> list[dict]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/alerts", timeout=10) as r:
        return json.loads(r.read())["data"]["alerts"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def query(port: int, expr: str) -> list[dict]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as r:
        out = json.loads(r.read())
    assert out["status"] == "success", out
    return out["data"]["result"]


def test_prometheus_evaluates_the_rules_and_every_dashboard_query_on_the_lab(history_lab, textfile: Path,
                                                                          tmp_path: Path):
    # The textfile over HTTP, as node_exporter would serve it; Prometheus scrapes it every second.
    http = ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(textfile.parent)))
    threading.Thread(target=http.serve_forever, daemon=True).start()
    port = free_port()
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(MONITORING / "esxdr.rules.yml")],
        "scrape_configs": [{"job_name": "esxdr", "metrics_path": "/esxdr.prom",
                            "static_configs": [{"targets": [f"127.0.0.1:{http.server_address[1]}"]}]}]}))
    log = open(tmp_path / "prometheus.log", "w")
    prom = subprocess.Popen(["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 60
        while True:  # up and scraped three times: increase() over the range has two samples or more
            try:
                scraped = query(port, "esxdr_rpo_seconds[1m]")
                if scraped and len(scraped[0]["values"]) >= 3:
                    break
            except OSError:
                pass
            assert time.time() < deadline, (tmp_path / "prometheus.log").read_text()[-3000:]
            time.sleep(0.5)
        time.sleep(1.5)  # and the rules evaluated on them (every second)
        for expr in dashboard_queries():
            assert query(port, expr), f"no data for the dashboard query {expr}"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/rules", timeout=10) as r:
            groups = json.loads(r.read())["data"]["groups"]
        rules = {r["name"]: r for g in groups for r in g["rules"]}
        assert len(rules) == 5 and all(r["health"] == "ok" and r["lastEvaluation"] for r in rules.values()), rules
        # the lab is healthy: replicated just now, drilled just now
        assert {n for n, r in rules.items() if r["state"] != "inactive"} == set(), rules

        # A run fails now: production serves the LUNs again, so a disaster failover is refused. Its
        # report, the next textfile, the next scrape: the alert fires, naming the group and the kind.
        assert history_lab.esxdr("failover", "core", "--disaster").returncode == 3
        history_lab.ok("status", "--prometheus", str(textfile))
        deadline = time.time() + 30
        while not (firing := [a for a in alerts(port) if a["state"] == "firing"]):
            assert time.time() < deadline, alerts(port)
            time.sleep(0.5)
        assert [(a["labels"]["alertname"], a["labels"]["group"], a["labels"]["kind"]) for a in firing] == [
            ("EsxdrRecoveryRunFailed", "core", "failover")]
        assert "A failover of core failed" in firing[0]["annotations"]["description"]
        with Browser(height=700) as b:
            page, s = b.open(f"http://127.0.0.1:{port}/classic/alerts")
            assert b.eval(s, "document.body.innerText").count("Esxdr") >= 5
            b.eval(s, "document.querySelectorAll('.alert-danger, .alert_header').forEach(e => "
                      "e.classList.contains('alert-danger') && e.click())")  # the firing one, open
            check_screenshot(b.screenshot(s, full_page=True), "prometheus-alerts.png")
    finally:
        prom.terminate()
        prom.wait(timeout=30)
        log.close()
        http.shutdown()


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # the scrapes would fill the test's output
        pass

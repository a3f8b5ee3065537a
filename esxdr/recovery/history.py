"""The history of recovery runs, from their reports: the index page, drill ages and their metrics.

``<state_dir>/reports/index.html`` is one self-contained page (CSS and server-side SVG, no script,
no network) over every report beside it: a table of every drill, failover, failback, hand-off and
reprotect (outcome, RTO, RPO, link), a trend of RTO and RPO per group over time, and the age of
each group's last successful drill, flagged when older than its ``drill_max_age``. The reports are
the only source: the page is rewritten from them after every run (:func:`esxdr.recovery.report.write`)
and by ``esxdr report index``, so it never holds anything a report does not.

The same reading gives ``esxdr status`` its drill and recovery metrics (:func:`prometheus_text`).
"""

from __future__ import annotations

import fcntl
import json
import math
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from esxdr import templating
from esxdr.fmt import human_duration
from esxdr.recovery import report
from esxdr.util import atomic_write

if TYPE_CHECKING:
    from esxdr.site.model import Site

TABLE_KINDS = ("test-start", "failover", "failback", "hand-off", "failback-hand-off", "reprotect")
TREND_KINDS = ("test-start", "failover", "failback")  # the runs that boot VMs: an RTO and an RPO each
RUN_KINDS = ("test-start", "test-cleanup", "failover", "failback", "hand-off", "failback-hand-off", "reprotect")
SHAPES = {"test-start": "circle", "failover": "square", "failback": "diamond"}
SERIES = {"rto_seconds": ("RTO", "#1565c0"), "rpo_seconds": ("RPO", "#6a1b9a")}


def limits(site: Site | None) -> dict[str, int | None]:
    """``drill_max_age`` per group (the group's own or the site's; None: no limit)."""
    if site is None:
        return {}
    return {name: g.drill_max_age_seconds for name, g in site.protection_groups.items()}


def _ts(iso: str | None) -> float | None:
    if not iso:
        return None
    try:
        return datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return None


def _iso(t: float | None) -> str | None:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds") if t is not None else None


def _when(t: float | None) -> str | None:
    """How the page shows a time: UTC, to the second, without the ISO separators' clutter."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%SZ") if t is not None else None


def runs(state_dir: str) -> list[dict[str, Any]]:
    """Every run with a JSON report, oldest first: what the index, the ages and the metrics need."""
    out = []
    for p in sorted(report.reports_dir(state_dir).glob("*.json")):
        try:
            r = json.loads(p.read_text())
        except (OSError, ValueError):
            continue  # a report being written, or not one of ours: the next refresh sees it
        if not isinstance(r, dict) or not r.get("kind") or not r.get("group"):
            continue
        started = _ts(r.get("started"))
        if started is None:
            continue
        out.append({"id": p.stem, "kind": r["kind"], "title": report.TITLES.get(r["kind"], r["kind"]),
                    "group": r["group"], "site": r.get("site"), "mode": r.get("mode"),
                    "started": r.get("started"), "started_ts": started, "when": _when(started),
                    "finished": r.get("finished"), "finished_ts": _ts(r.get("finished")),
                    "outcome": r.get("outcome"), "error": r.get("error"),
                    "rto_seconds": r.get("rto_seconds"), "rpo_seconds": r.get("rpo_seconds"),
                    "snapshot": r.get("snapshot"),
                    "consistency": r.get("consistency_label") or report.consistency_label(r),
                    "html": p.with_suffix(".html").name, "json": p.name})
    out.sort(key=lambda r: (r["started_ts"], r["id"]))
    return out


def drill_ages(all_runs: list[dict[str, Any]], max_ages: dict[str, int | None], now: float) -> list[dict[str, Any]]:
    """Per group (of the site, and any with reports): its last successful drill and how old it is
    (from when it finished), stale when older than the group's limit or when there is none."""
    groups = sorted(set(max_ages) | {r["group"] for r in all_runs})
    out = []
    for g in groups:
        ok = [r for r in all_runs if r["group"] == g and r["kind"] == "test-start" and r["outcome"] == "ok"]
        last = ok[-1] if ok else None
        at = (last["finished_ts"] or last["started_ts"]) if last else None
        age = max(0.0, now - at) if at is not None else None
        limit = max_ages.get(g)
        stale = limit is not None and (age is None or age > limit)
        out.append({"group": g, "last_drill": last["id"] if last else None, "html": last["html"] if last else None,
                    "at": _iso(at), "at_ts": at, "when": _when(at), "age_seconds": round(age) if age is not None else None,
                    "max_age_seconds": limit, "stale": stale,
                    "drills": sum(1 for r in all_runs if r["group"] == g and r["kind"] == "test-start")})
    return out


# --------------------------------------------------------------------------- the trend charts
_LADDER = (5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 4 * 3600, 12 * 3600, 86400, 2 * 86400,
           7 * 86400, 14 * 86400, 30 * 86400)


def _nice_max(v: float) -> float:
    for step in _LADDER:
        if v <= step:
            return float(step)
    return float(math.ceil(v / _LADDER[-1]) * _LADDER[-1])


def chart(points: list[dict[str, Any]], key: str, *, width: int = 470, height: int = 180) -> dict[str, Any]:
    """Geometry of one SVG chart: ``key`` (rto_seconds or rpo_seconds) of a group's runs over time.

    A run without the value (it failed before measuring it) is a red cross on the axis, so a
    failure shows in the trend instead of leaving a gap that reads as nothing happened."""
    left, right, top, bottom = 58, 14, 22, 34
    name, color = SERIES[key]
    t0 = min((p["started_ts"] for p in points), default=0.0)
    t1 = max((p["started_ts"] for p in points), default=1.0)
    if t1 - t0 < 60:  # one run, or runs a moment apart: a window around them
        t0, t1 = t0 - 1800, t1 + 1800
    vmax = _nice_max(max([p[key] for p in points if p[key] is not None] + [1.0]))
    pw, ph = width - left - right, height - top - bottom

    def x(t: float) -> float:
        return round(left + (t - t0) / (t1 - t0) * pw, 1)

    def y(v: float) -> float:
        return round(top + (1 - v / vmax) * ph, 1)

    marks, line = [], []
    for p in points:
        v = p[key]
        ok = p["outcome"] == "ok"
        mark = {"x": x(p["started_ts"]), "shape": SHAPES.get(p["kind"], "circle"), "href": p["html"],
                "color": color if ok else "#c62828",
                "title": f"{p['title']} {p['when']}: {p['outcome']}, {name} {human_duration(v)}"}
        if v is None:
            mark.update(y=y(0), shape="cross")
        else:
            mark["y"] = y(v)
            line.append(f"{mark['x']},{mark['y']}")
        marks.append(mark)
    same_day = datetime.fromtimestamp(t0, UTC).date() == datetime.fromtimestamp(t1, UTC).date()
    fmt = "%H:%M" if same_day else "%Y-%m-%d"
    xticks = [{"x": x(t), "label": datetime.fromtimestamp(t, UTC).strftime(fmt)}
              for t in (t0, (t0 + t1) / 2, t1)]
    yticks = [{"y": y(v), "label": human_duration(v)} for v in (0.0, vmax / 2, vmax)]
    return {"name": name, "color": color, "width": width, "height": height, "left": left, "top": top,
            "right": width - right, "bottom": height - bottom, "marks": marks, "line": " ".join(line),
            "xticks": xticks, "yticks": yticks, "day": datetime.fromtimestamp(t0, UTC).strftime("%Y-%m-%d")
            if same_day else None}


def trends(all_runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_group: dict[str, list[dict[str, Any]]] = {}
    for r in all_runs:
        if r["kind"] in TREND_KINDS:
            by_group.setdefault(r["group"], []).append(r)
    return [{"group": g, "runs": len(rs), "charts": [chart(rs, "rto_seconds"), chart(rs, "rpo_seconds")]}
            for g, rs in sorted(by_group.items())]


# --------------------------------------------------------------------------- the page
def build(state_dir: str, max_ages: dict[str, int | None], now: float) -> dict[str, Any]:
    """What the index shows (and ``esxdr report index --json`` prints): rows newest first."""
    all_runs = runs(state_dir)
    table = [r for r in reversed(all_runs) if r["kind"] in TABLE_KINDS]
    return {"index": str(report.reports_dir(state_dir) / "index.html"), "generated": _iso(now),
            "generated_when": _when(now),
            "runs": [{k: v for k, v in r.items() if not k.endswith("_ts")} for r in table],
            "drills": [{k: v for k, v in d.items() if not k.endswith("_ts")}
                       for d in drill_ages(all_runs, max_ages, now)],
            "_trends": trends(all_runs), "_sites": sorted({r["site"] for r in all_runs if r.get("site")})}


def render(data: dict[str, Any]) -> str:
    return templating.render("index.html.j2", d=data)


def write_index(state_dir: str, max_ages: dict[str, int | None], now: float | None = None) -> dict[str, Any]:
    """Rewrite ``index.html`` from every report; returns what it shows. Runs finishing at once
    (two groups' drills) take turns, so the last page written has both."""
    import time

    d = report.reports_dir(state_dir)
    d.mkdir(parents=True, exist_ok=True)
    with open(d / ".index.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = build(state_dir, max_ages, time.time() if now is None else now)
        atomic_write(d / "index.html", render(data))
    return data


def public(data: dict[str, Any]) -> dict[str, Any]:
    """The JSON form: without the chart geometry (the runs hold the values)."""
    return {k: v for k, v in data.items() if not k.startswith("_")}


# --------------------------------------------------------------------------- metrics
def _labels(**kv: str) -> str:
    def esc(v: str) -> str:  # the text format's label value escapes
        return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')

    return "{" + ",".join(f'{k}="{esc(v)}"' for k, v in kv.items()) + "}"


def _metric(name: str, kind: str, help_: str, samples: Iterable[tuple[dict[str, str], float]]) -> list[str]:
    lines = [f"# HELP {name} {help_}", f"# TYPE {name} {kind}"]
    for labels, value in samples:
        lines.append(f"{name}{_labels(**labels)} {value:.0f}" if math.isfinite(value) and value == int(value)
                     else f"{name}{_labels(**labels)} {value}")
    return lines


def prometheus_text(all_runs: list[dict[str, Any]], groups: list[str], max_ages: dict[str, int | None],
                    now: float) -> str:
    """The recovery runs' metrics for the node_exporter textfile of ``esxdr status --prometheus``."""
    ages = {a["group"]: a for a in drill_ages(all_runs, max_ages, now) if a["group"] in groups}
    mine = [r for r in all_runs if r["group"] in groups]
    # Every (group, kind, outcome) from 0: a counter that appears at 1 has no increase() to alert on.
    counts: dict[tuple[str, str, str], int] = {(g, k, o): 0 for g in groups for k in RUN_KINDS for o in ("ok", "failed")}
    last: dict[tuple[str, str], dict[str, Any]] = {}
    for r in mine:  # oldest first: the last one seen is the newest
        key = (r["group"], r["kind"], "ok" if r["outcome"] == "ok" else "failed")
        counts[key] = counts.get(key, 0) + 1
        last[(r["group"], r["kind"])] = r
    out = _metric("esxdr_drill_last_success_timestamp_seconds", "gauge",
                  "When the group's last successful drill finished (0: none).",
                  [({"group": g}, ages[g]["at_ts"] or 0) for g in groups if g in ages])
    out += _metric("esxdr_drill_max_age_seconds", "gauge",
                   "The group's drill_max_age: how old its last successful drill may be.",
                   [({"group": g}, float(ages[g]["max_age_seconds"])) for g in groups
                    if g in ages and ages[g]["max_age_seconds"] is not None])
    out += _metric("esxdr_recovery_runs_total", "counter",
                   "Recovery runs with a report (drills, cleanups, failovers, failbacks, hand-offs, reprotects), "
                   "by outcome.",
                   [({"group": g, "kind": k, "outcome": o}, float(n)) for (g, k, o), n in sorted(counts.items())])
    out += _metric("esxdr_recovery_last_run_ok", "gauge",
                   "1 when the group's newest run of this kind succeeded, 0 when it failed.",
                   [({"group": g, "kind": k}, 1.0 if r["outcome"] == "ok" else 0.0) for (g, k), r in sorted(last.items())])
    out += _metric("esxdr_recovery_last_run_timestamp_seconds", "gauge",
                   "When the group's newest run of this kind started.",
                   [({"group": g, "kind": k}, r["started_ts"]) for (g, k), r in sorted(last.items())])
    for field, name in (("rto_seconds", "rto"), ("rpo_seconds", "rpo")):
        out += _metric(f"esxdr_recovery_last_{name}_seconds", "gauge",
                       f"The {name.upper()} measured by the group's newest successful run of this kind.",
                       [({"group": g, "kind": k}, float(r[field])) for (g, k), r in sorted(
                           {(x["group"], x["kind"]): x for x in mine if x["outcome"] == "ok"
                            and x["kind"] in TREND_KINDS and x[field] is not None}.items())])
    return "\n".join(out) + "\n"


def drill_status(all_runs: list[dict[str, Any]], group: str, max_age: int | None, now: float) -> dict[str, Any]:
    """One group's drill age for ``esxdr status`` (text and --json)."""
    a = drill_ages([r for r in all_runs if r["group"] == group], {group: max_age}, now)[0]
    return {k: v for k, v in a.items() if not k.endswith("_ts")}

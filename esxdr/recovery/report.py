"""Run reports: one JSON and one self-contained HTML file per drill or failover run.

Reports are kept under ``<state_dir>/reports/`` and never rotated by esxdr: a drill's
report is audit evidence. The HTML embeds its CSS and an SVG timeline (no scripts, no
external resources), so it can be mailed or archived as one file.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from esxdr import templating
from esxdr.errors import UsageError
from esxdr.fmt import clock, human_duration
from esxdr.util import atomic_write

KINDS = {"test-start": "test", "test-cleanup": "cleanup", "failover": "failover"}


def reports_dir(state_dir: str) -> Path:
    return Path(state_dir) / "reports"


def _stem(record: dict[str, Any]) -> str:
    started = record.get("started") or datetime.now(UTC).isoformat()
    stamp = datetime.fromisoformat(started).astimezone(UTC).strftime("%Y-%m-%d-%H%M%S")
    return f"{stamp}-{KINDS.get(record['kind'], record['kind'])}-{record['group']}"


def write(state_dir: str, record: dict[str, Any]) -> tuple[str, str]:
    """Write ``<stamp>-<kind>-<group>.json`` and ``.html``; returns both paths.

    A resumed run has the original start time, so it rewrites the report of the run it continues.
    """
    d = reports_dir(state_dir)
    d.mkdir(parents=True, exist_ok=True)
    stem = _stem(record)
    jpath, hpath = d / f"{stem}.json", d / f"{stem}.html"
    record = {**record, "report": {"json": str(jpath), "html": str(hpath)}}
    for path, text in ((jpath, json.dumps(record, indent=2, default=str)), (hpath, render_html(record))):
        atomic_write(path, text)
    return str(jpath), str(hpath)


def list_reports(state_dir: str, group: str | None = None) -> list[dict[str, Any]]:
    """Newest first: one summary per JSON report."""
    out = []
    for p in sorted(reports_dir(state_dir).glob("*.json"), reverse=True):
        try:
            r = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if group and r.get("group") != group:
            continue
        out.append({"id": p.stem, "kind": r.get("kind"), "group": r.get("group"), "started": r.get("started"),
                    "outcome": r.get("outcome"), "rto_seconds": r.get("rto_seconds"),
                    "rpo_seconds": r.get("rpo_seconds"), "json": str(p), "html": str(p.with_suffix(".html"))})
    return out


def find(state_dir: str, ref: str | None) -> Path:
    """A report by id (file stem), unique prefix, path, or the newest (None / "latest")."""
    if ref and Path(ref).exists():
        return Path(ref).with_suffix(".json")
    items = list_reports(state_dir)
    if not items:
        raise UsageError(f"no reports under {reports_dir(state_dir)}", hint="run a drill: esxdr test start GROUP")
    if not ref or ref == "latest":
        return Path(items[0]["json"])
    match = [i for i in items if i["id"].startswith(ref) or ref in i["id"]]
    if not match:
        raise UsageError(f"no report matches {ref!r}", hint="esxdr report list shows their ids")
    return Path(match[0]["json"])  # newest first: "test-core" means the last drill of core


def load(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read report {path}: {e}") from e


# --------------------------------------------------------------------------- rendering
COLORS = {"done": "#2e7d32", "done earlier": "#90a4ae", "failed": "#c62828", "running": "#f9a825"}


def timeline(steps: list[dict[str, Any]], width: int = 900, row: int = 22, label_w: int = 330) -> dict[str, Any]:
    """Geometry of the SVG timeline: one bar per step on a shared time axis (seconds from start)."""
    spans: list[tuple[float, float]] = []
    for s in steps:
        a = float(s.get("start") or 0.0)
        spans.append((a, float(s["end"]) if s.get("end") is not None else a))
    total = max([e for _, e in spans] + [1.0])
    scale = (width - label_w - 20) / total
    bars = []
    for i, (s, (a, b)) in enumerate(zip(steps, spans, strict=True)):
        title = s.get("title", s.get("id", ""))
        bars.append({"y": 24 + i * row, "x": label_w + a * scale, "w": max(2.0, (b - a) * scale),
                     "label": title if len(title) <= 52 else title[:51] + "…", "title": title,
                     "color": COLORS.get(s.get("outcome", ""), "#607d8b"),
                     "span": f"{a:.1f}s → {b:.1f}s ({s.get('outcome')})"})
    ticks = []
    step = next((t for t in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600) if total / t <= 10), 7200)
    t = 0.0
    while t <= total + 1e-9:
        ticks.append({"x": label_w + t * scale, "label": f"{int(t) // 60}:{int(t) % 60:02d}"})
        t += step
    return {"width": width, "height": 34 + len(steps) * row, "bars": bars, "ticks": ticks, "label_w": label_w}


def render_html(record: dict[str, Any]) -> str:
    return templating.render("report.html.j2", r=record, tl=timeline(record.get("steps") or []))


def render_text(record: dict[str, Any]) -> str:
    lines = [f"{record.get('kind')} {record.get('group')} — {record.get('outcome')} "
             f"(started {record.get('started')}, site {record.get('site')})"]
    if record.get("snapshot"):
        lines.append(f"snapshot {record['snapshot']} (created {record.get('snapshot_created')})")
    if record.get("kind") == "test-start":
        lines.append(f"RTO {human_duration(record.get('rto_seconds'))}, RPO {human_duration(record.get('rpo_seconds'))}")
    for s in record.get("steps") or []:
        ev = (s.get("evidence") or [""])[0]
        lines.append(f"[{clock(s.get('start') or 0)}] {s.get('outcome', ''):12s} {s.get('title')}"
                     + (f"    evidence: {ev}" if ev else ""))
    for d in record.get("datastores") or []:
        lines.append(f"datastore {d.get('name')}: {d.get('status')}, uuid {d.get('vmfs_uuid')}, extent "
                     f"{', '.join('naa.' + x for x in d.get('extent') or [])}")
    for v in record.get("vms") or []:
        lines.append(f"vm {v.get('name')}: priority {v.get('priority')}, {v.get('power')}, heartbeat "
                     f"{v.get('heartbeat')}, networks {', '.join(v.get('networks') or [])}")
    if record.get("error"):
        lines.append(f"error: {record['error']}")
    return "\n".join(lines)

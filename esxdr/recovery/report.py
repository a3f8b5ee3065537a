"""Run reports: one JSON and one self-contained HTML file per drill, failover, failback, hand-off
and reprotect run.

Reports are kept under ``<state_dir>/reports/`` and never rotated by esxdr: a drill's
report is audit evidence. The HTML embeds its CSS and an SVG timeline (no scripts, no
external resources), so it can be mailed or archived as one file. Every report written
refreshes the directory's ``index.html`` (:mod:`esxdr.recovery.history`).

What a report claims is worked out here from the record alone (:func:`kpis`,
:func:`consistency_label`), so an older record renders with the same words as a new one.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from esxdr import templating
from esxdr.errors import UsageError
from esxdr.fmt import clock, human_duration
from esxdr.util import atomic_write

if TYPE_CHECKING:
    from esxdr.site.model import Site

log = logging.getLogger(__name__)

KINDS = {"test-start": "test", "test-cleanup": "cleanup", "failover": "failover"}
TITLES = {"test-start": "validation drill", "test-cleanup": "drill cleanup", "hand-off": "hand-off (pull mode)",
          "failback-hand-off": "failback hand-off (pull mode)"}


def reports_dir(state_dir: str) -> Path:
    return Path(state_dir) / "reports"


def _stem(record: dict[str, Any]) -> str:
    started = record.get("started") or datetime.now(UTC).isoformat()
    stamp = datetime.fromisoformat(started).astimezone(UTC).strftime("%Y-%m-%d-%H%M%S")
    return f"{stamp}-{KINDS.get(record['kind'], record['kind'])}-{record['group']}"


def write(state_dir: str, record: dict[str, Any], *, site: Site | None = None) -> tuple[str, str]:
    """Write ``<stamp>-<kind>-<group>.json`` and ``.html``, then refresh ``index.html``; returns
    both report paths. ``site`` gives the index its ``drill_max_age`` limits (none without it).

    A resumed run has the original start time, so it rewrites the report of the run it continues.
    """
    d = reports_dir(state_dir)
    d.mkdir(parents=True, exist_ok=True)
    stem = _stem(record)
    jpath, hpath = d / f"{stem}.json", d / f"{stem}.html"
    record = {**record, "consistency_label": consistency_label(record),
              "report": {"json": str(jpath), "html": str(hpath)}}
    for path, text in ((jpath, json.dumps(record, indent=2, default=str)), (hpath, render_html(record))):
        atomic_write(path, text)
    from esxdr.recovery import history  # history reads reports: imported late, it imports this module

    try:
        history.write_index(state_dir, history.limits(site))
    except Exception as e:  # noqa: BLE001 - the run's own report is written; an index is only a view of them
        log.warning("reports index not refreshed: %s (esxdr report index writes it)", e)
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


# --------------------------------------------------------------------------- what a report claims
RECOVERS = ("test-start", "failover", "failback")  # runs that boot VMs: they have an RTO


def _step(record: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((s for s in record.get("steps") or [] if s.get("kind") == kind), None)


def _pull(record: dict[str, Any]) -> bool:
    """A planned failover or failback in pull mode: the other side's hand-off stopped the VMs."""
    return record.get("mode") == "planned" and record.get("kind") in ("failover", "failback") \
        and _step(record, "shutdown") is None


def kpis(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The RTO and RPO cards of a run that recovers something, each with its definition as measured
    for this kind of run (:mod:`esxdr.recovery.record` computes the values)."""
    kind, mode, ok = record.get("kind"), record.get("mode"), record.get("outcome") == "ok"

    def card(name: str, seconds: float | None, definition: str) -> dict[str, Any]:
        note = None if seconds is not None or ok else "not reached: the run did not complete"
        return {"name": name, "seconds": seconds, "value": human_duration(seconds), "definition": definition,
                "note": note}

    out = []
    if kind in RECOVERS:
        what = {"test-start": "the drill", "failover": "the failover", "failback": "the failback"}[kind]
        where = "at production" if kind == "failback" else "on the DR host"
        rto = f"from the start of {what} to the last VM's first VMware Tools heartbeat {where}"
        if mode == "planned" and _pull(record):
            rto += "; the VMs went down earlier, at the other side's hand-off"
        elif mode == "planned":
            rto += ", shutting the VMs down and the final replication included"
        out.append(card("RTO", record.get("rto_seconds"), rto))
        if mode == "planned":
            rpo = ("nothing lost: the VMs were stopped before the final snapshot was taken, so it holds "
                   "their last write")
        else:
            lost = "would be lost in a failover" if kind == "test-start" else "are lost"
            rpo = f"age of the recovered snapshot when {what} started: the writes made after it {lost}"
        out.append(card("RPO", record.get("rpo_seconds"), rpo))
        if record.get("outage_at_least_seconds") is not None:
            out.append(card("Outage ≥", record["outage_at_least_seconds"],
                            "from the hand-off's final snapshot to the last heartbeat here: a lower bound of "
                            "the downtime, which this run's RTO (from its own start) does not show"))
    elif kind == "reprotect":
        out.append(card("RTO", None, "not applicable: reprotect boots nothing, the VMs keep running on DR; "
                                     "the failback's report has the RTO of the way home"))
        out.append(card("RPO", record.get("rpo_seconds"),
                        "age of the replication point (DR → production) when reprotect finished: what "
                        "production's copy lacks of DR's writes until the next replication"))
    return out


LEVELS = {"application": "application-consistent: the VMs were quiesced",
          "mixed": "partly application-consistent: some VMs were quiesced, the others crash-consistent"}


def consistency_label(record: dict[str, Any]) -> str | None:
    """How consistent the run's point is, true to what happened: a planned run's final snapshot
    taken after its shutdown step stopped every VM is consistent; a VM powered off hard (no
    VMware Tools, or past shutdown_timeout) is crash-consistent in it. Otherwise the level
    replication recorded on the snapshot (``esxdr:consistency``)."""
    if not record.get("snapshot"):
        return None
    if record.get("consistency") is None and record.get("outcome") != "ok" \
            and record.get("kind") in ("failover", "failback"):
        # these take the level from their journal once every step is done: a run that stopped
        # before has none, which says nothing about the point (None means crash only when recorded)
        return "not recovered: the run stopped before it (its level is in `esxdr snapshots`)"
    level = LEVELS.get(record.get("consistency") or "", "crash-consistent")
    if record.get("mode") != "planned" or record.get("kind") not in ("failover", "failback", "hand-off",
                                                                    "failback-hand-off"):
        return level
    if _pull(record):
        return ("consistent: the VMs were stopped at the other side's hand-off, before its final snapshot "
                "(its report says how each stopped)")
    shutdown = _step(record, "shutdown")
    if shutdown is None or shutdown.get("outcome") not in ("done", "done earlier"):
        return level  # the snapshot step runs after the shutdown: not reached without it
    evidence = shutdown.get("evidence") or []
    if evidence and evidence[0].startswith("no production vSphere"):
        return f"{level} (esxdr did not shut the VMs down: the group has no vSphere endpoint for them)"
    # _f_shutdown: "<n> VM(s) stopped on <endpoint>", then "<vm>: shutdown" / "<vm>: powered off"
    hard = sorted(e.rsplit(": ", 1)[0] for e in evidence[1:] if e.endswith(": powered off"))
    if hard:
        return (f"crash-consistent for {', '.join(hard)} (powered off: no VMware Tools, or not down within "
                "shutdown_timeout); consistent for the VMs shut down")
    return "consistent: VMs shut down"


def render_html(record: dict[str, Any]) -> str:
    return templating.render("report.html.j2", r=record, tl=timeline(record.get("steps") or []),
                             title=TITLES.get(record.get("kind") or "", record.get("kind")), kpis=kpis(record),
                             consistency=consistency_label(record))


def render_text(record: dict[str, Any]) -> str:
    lines = [f"{record.get('kind')} {record.get('group')} — {record.get('outcome')} "
             f"(started {record.get('started')}, site {record.get('site')})"]
    if record.get("snapshot"):
        lines.append(f"snapshot {record['snapshot']} (created {record.get('snapshot_created')}; "
                     f"{consistency_label(record)})")
    cards = kpis(record)
    if cards:
        lines.append(", ".join(f"{c['name']} {c['value']}" for c in cards))
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

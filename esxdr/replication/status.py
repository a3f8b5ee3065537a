"""What replication has achieved per group: the RPO, DR's retention backlog, the stream directions
that can work, the change rate of each dataset; and the Prometheus textfile of it."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from esxdr.errors import EsxdrError
from esxdr.plan.retention import esxdr_prefix
from esxdr.replication import sides
from esxdr.replication.prune import dr_decisions
from esxdr.replication.sides import Side
from esxdr.zfs.compat import group_directions, zpl_versions

if TYPE_CHECKING:
    from esxdr.site.model import ProtectionGroup, Site


def group_status(site: Site, name: str, now: float) -> dict:
    """RPO of a group = age of the oldest among each DR dataset's newest esxdr snapshot."""
    g = site.protection_groups[name]
    dst = sides.open_side(site, g.destination)
    try:
        obs = dst.zfs.observe([g.dr_root])
        directions = stream_directions(site, g, dst, obs)
    finally:
        dst.transport.close()
    per_ds = {}
    for ds in g.datasets:
        d = obs.get(g.dr_dataset(ds))
        snaps = [s for s in (d.snapshots if d else []) if s.name.startswith(esxdr_prefix(name))]
        per_ds[g.dr_dataset(ds)] = snaps[-1] if snaps else None
    newest = [s for s in per_ds.values() if s is not None]
    complete = len(newest) == len(per_ds)
    worst = min(newest, key=lambda s: s.creation) if complete and newest else None
    rpo = (now - worst.creation) if worst else None
    last = {}
    p = Path(site.state_dir) / "runs" / f"{name}.last.json"
    if p.exists():
        try:
            last = json.loads(p.read_text())
        except ValueError:
            last = {}
    return {
        "group": name,
        "dr_retention": dr_retention(site, g, obs, now),
        "last_snapshot": worst.name if worst else None,
        "rpo_seconds": round(rpo, 1) if rpo is not None else None,
        "rpo_target_seconds": g.rpo_seconds,
        "ok": rpo is not None and rpo <= g.rpo_seconds,
        "datasets": {k: (v.name if v else None) for k, v in per_ds.items()},
        "last_run": {"bytes": last.get("bytes"), "seconds": last.get("seconds"), "finished": last.get("finished")},
        "directions": directions,
    }


def dr_retention(site: Site, g: ProtectionGroup, dr_obs: dict, now: float) -> dict:
    """How many DR snapshots the destination rules would prune now, and who prunes them: a DR behind
    esxdr serve prunes itself (`prune --side dr` on the DR box), so a count that only grows there
    means that job is not running."""
    dr = site.storage_server(g.destination)
    pruned_by = "dr" if dr.behind_serve else "replication"
    tz = g.schedule.timezone if g.schedule else "UTC"
    if pruned_by == "dr":
        # there replication holds every snapshot it sent, and the DR prune releases that hold:
        # counted as due unless something else holds it (which tag is not visible from here)
        dr_obs = {n: dataclasses.replace(ds, snapshots=[dataclasses.replace(s, userrefs=0) for s in ds.snapshots])
                  for n, ds in dr_obs.items()}
    due = [d.snapshot for d in dr_decisions(g, dr_obs, tz) if not d.keep]
    oldest = min((s.creation for s in due), default=None)
    return {"pruned_by": pruned_by, "due": len(due),
            "oldest_due_seconds": round(now - oldest, 1) if oldest is not None else None}


def stream_directions(site: Site, g: ProtectionGroup, dst: Side, dr_obs: dict) -> dict:
    """Whether replication (source → DR) and failback (DR → source) streams can work for the group.

    The source's capabilities come from the cache (a probe only when never seen); the kinds and
    ZPL versions from the DR replicas (a replica keeps its source's version), asked only when
    the two sides run different zfs generations.
    """
    try:
        src = sides.open_side(site, g.source)
        src.transport.close()
    except EsxdrError as e:
        return {"error": f"{g.source}: {e.message}"}
    kinds = {ds: dr_obs[g.dr_dataset(ds)].type for ds in g.datasets if g.dr_dataset(ds) in dr_obs}
    versions: dict[str, int] = {}
    if src.caps.flavour != dst.caps.flavour and dst.caps.flavour == "openzfs":
        fs = [g.dr_dataset(ds) for ds, k in kinds.items() if k == "filesystem"]
        try:
            by_dr = zpl_versions(dst.zfs, fs)
        except EsxdrError:
            by_dr = {}
        versions = {ds: by_dr[g.dr_dataset(ds)] for ds in g.datasets if g.dr_dataset(ds) in by_dr}
    return group_directions(g, src.caps, dst.caps, kinds, versions)


def prometheus_text(rows: list[dict], now: float) -> str:
    out = [
        "# HELP esxdr_rpo_seconds Age of the newest snapshot replicated to DR for every dataset of the group.",
        "# TYPE esxdr_rpo_seconds gauge",
    ]
    for r in rows:
        out.append(f'esxdr_rpo_seconds{{group="{r["group"]}"}} {r["rpo_seconds"] if r["rpo_seconds"] is not None else "NaN"}')
    out += ["# HELP esxdr_rpo_target_seconds The configured RPO.", "# TYPE esxdr_rpo_target_seconds gauge"]
    out += [f'esxdr_rpo_target_seconds{{group="{r["group"]}"}} {r["rpo_target_seconds"]}' for r in rows]
    out += ["# HELP esxdr_rpo_ok 1 when the RPO is within target.", "# TYPE esxdr_rpo_ok gauge"]
    out += [f'esxdr_rpo_ok{{group="{r["group"]}"}} {1 if r["ok"] else 0}' for r in rows]
    out += ["# HELP esxdr_last_run_bytes Bytes sent by the last replication run.",
            "# TYPE esxdr_last_run_bytes gauge"]
    out += [f'esxdr_last_run_bytes{{group="{r["group"]}"}} {r["last_run"]["bytes"] or 0}' for r in rows]
    out += ["# HELP esxdr_last_run_seconds How long the last replication run took (NaN: none recorded).",
            "# TYPE esxdr_last_run_seconds gauge"]
    out += [f'esxdr_last_run_seconds{{group="{r["group"]}"}} '
            f'{r["last_run"]["seconds"] if r["last_run"].get("seconds") is not None else "NaN"}' for r in rows]
    # A run that fails records nothing: a finish time that stops moving is how failed runs show.
    out += ["# HELP esxdr_last_run_timestamp_seconds When the last successful replication run finished "
            "(0: none recorded).", "# TYPE esxdr_last_run_timestamp_seconds gauge"]
    out += [f'esxdr_last_run_timestamp_seconds{{group="{r["group"]}"}} {_epoch(r["last_run"].get("finished")):.0f}'
            for r in rows]
    out += ["# HELP esxdr_dr_snapshots_due DR snapshots the destination retention rules would prune now.",
            "# TYPE esxdr_dr_snapshots_due gauge"]
    out += [f'esxdr_dr_snapshots_due{{group="{r["group"]}"}} {r["dr_retention"]["due"]}' for r in rows]
    out += ["# HELP esxdr_status_timestamp_seconds When this file was written.",
            "# TYPE esxdr_status_timestamp_seconds gauge", f"esxdr_status_timestamp_seconds {now:.0f}"]
    return "\n".join(out) + "\n"


def _epoch(iso: str | None) -> float:
    try:
        return datetime.fromisoformat(iso).timestamp() if iso else 0.0
    except ValueError:
        return 0.0


def change_rate(snapshots, has_written: bool) -> tuple[float, str]:
    """Bytes per day between the oldest and newest snapshot, and how it was measured."""
    if len(snapshots) < 2:
        return 0.0, "fewer than two snapshots"
    span_days = max((snapshots[-1].creation - snapshots[0].creation) / 86400, 1 / 24)
    later = snapshots[1:]
    if has_written and all(s.written is not None for s in later):
        return sum(s.written for s in later) / span_days, "written"
    # Pool-v23 zfs has no `written`. Blocks overwritten after a snapshot stay unique to it
    # (its `used`), and growth shows in `referenced`; together a lower bound of what changed.
    overwritten = sum((s.used or 0) for s in snapshots[:-1])
    growth = sum(max(0, (b.referenced or 0) - (a.referenced or 0)) for a, b in zip(snapshots, later, strict=False))
    return (overwritten + growth) / span_days, "used + growth (lower bound)"


def change_rates(site: Site, name: str, limit: float) -> list[dict]:
    """Per dataset of the group on production: bytes changed per day, how that was measured, and
    whether it is over ``limit`` (a candidate to move swap or temp data off replicated LUNs)."""
    g = site.protection_groups[name]
    src = sides.open_side(site, g.source)
    try:
        obs = src.zfs.observe([g.source_root])
    finally:
        src.transport.close()
    rows = []
    for ds in g.datasets:
        d = obs.get(ds)
        rate, how = change_rate(d.snapshots if d else [], src.caps.written)
        rows.append({"group": name, "dataset": ds, "bytes_per_day": int(rate), "measured_by": how,
                     "noisy": rate > limit})
    return rows

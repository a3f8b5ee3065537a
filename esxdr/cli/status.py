"""esxdr status (RPO per group, Prometheus textfile) and esxdr noise (change rate per dataset):
the workflow is esxdr.replication.status; here the options and the text."""

from __future__ import annotations

import time

import click

from esxdr.cli.main import Context, json_option, pass_ctx, site_option
from esxdr.errors import StaleStateError
from esxdr.fmt import human_bytes, human_duration
from esxdr.util import atomic_write


def directions_text(d: dict) -> str:
    if "error" in d:
        return f"directions unknown ({d['error']})"
    parts = []
    for what in ("replication", "failback"):
        x = d[what]
        verdict = "possible" if x["possible"] else f"NOT possible for {', '.join(x['refused'])}: {x['reason']}"
        parts.append(f"{what} {x['from']} → {x['to']} {verdict}")
    return "; ".join(parts)


@click.command(epilog="""\b
Examples:
  esxdr status
  esxdr status core --json
  esxdr status --prometheus /var/lib/prometheus/node-exporter/esxdr.prom
Exit code 5 when any group's RPO is older than its `rpo` setting. The last successful
drill's age (from the reports in <state_dir>/reports) is shown, STALE past drill_max_age;
docs/monitoring/ has a Grafana dashboard and alert rules for the textfile.
""")
@click.argument("group", required=False)
@click.option("--prometheus", "prom_file", metavar="FILE", help="Also write a node_exporter textfile.")
@json_option
@site_option
@pass_ctx
def status(ctx: Context, group: str | None, prom_file: str | None) -> None:
    """Per group: the last replicated snapshot, its age (the current RPO) and the last run."""
    from esxdr.recovery import history
    from esxdr.replication.status import group_status, prometheus_text

    site = ctx.site()
    now = time.time()
    names = site.group_names(group)
    rows = [group_status(site, n, now) for n in names]
    runs = history.runs(site.state_dir)  # the drills' reports: their age, for audit
    for r in rows:
        r["drill"] = history.drill_status(runs, r["group"], site.group(r["group"]).drill_max_age_seconds, now)
    if prom_file:
        atomic_write(prom_file, prometheus_text(rows, now)
                     + history.prometheus_text(runs, names, history.limits(site), now))

    def text() -> str:
        lines = []
        for r in rows:
            rpo = human_duration(r["rpo_seconds"]) if r["rpo_seconds"] is not None else "never replicated"
            flag = "ok" if r["ok"] else f"STALE (target {human_duration(r['rpo_target_seconds'])})"
            lr = r["last_run"]
            last = f", last run {human_bytes(lr['bytes'])} in {lr['seconds']}s" if lr.get("bytes") is not None else ""
            lines.append(f"{r['group']}: RPO {rpo} {flag} — @{r['last_snapshot'] or '-'}{last}")
            lines.append(f"  {directions_text(r['directions'])}")
            d = r["drill"]
            if d["at"] or d["max_age_seconds"] is not None:
                limit = f" (limit {human_duration(d['max_age_seconds'])})" if d["max_age_seconds"] is not None else ""
                when = f"last successful drill {human_duration(d['age_seconds'])} ago" if d["at"] else \
                    "no successful drill"
                lines.append(f"  {when}{limit}" + (" — STALE" if d["stale"] else ""))
            ret = r["dr_retention"]
            if ret["due"] and ret["pruned_by"] == "dr":
                lines.append(f"  DR retention: {ret['due']} snapshot(s) due, the oldest made "
                             f"{human_duration(ret['oldest_due_seconds'])} ago; DR prunes itself "
                             f"(esxdr prune {r['group']} --side dr on the DR box)")
        return "\n".join(lines)

    ctx.emit(rows if group is None else rows[0], text)
    stale = [r["group"] for r in rows if not r["ok"]]
    if stale:
        raise StaleStateError(f"RPO exceeded for {', '.join(stale)}",
                              hint="check the schedule and the last run (esxdr replicate GROUP -v)")


@click.command(epilog="""\b
Examples:
  esxdr noise
  esxdr noise core --threshold 512M --json
""")
@click.argument("group", required=False)
@click.option("--threshold", default="1G", show_default=True, help="Flag datasets changing more per day.")
@json_option
@site_option
@pass_ctx
def noise(ctx: Context, group: str | None, threshold: str) -> None:
    """Change rate per dataset per day: candidates to move swap/temp data off replicated LUNs."""
    from esxdr.errors import UsageError
    from esxdr.replication.status import change_rates
    from esxdr.site.values import parse_size

    try:
        limit = parse_size(threshold)
    except (ValueError, TypeError) as e:
        raise UsageError(f"--threshold {threshold!r}: {e}", hint="use a size like 512M or 1G") from e
    site = ctx.site()
    rows = [r for name in site.group_names(group) for r in change_rates(site, name, limit)]
    ctx.emit(rows, lambda: "\n".join(
        f"{r['dataset']:<32} {human_bytes(r['bytes_per_day']):>10}/day  {'NOISY' if r['noisy'] else 'ok':<5} "
        f"({r['measured_by']})" for r in rows))

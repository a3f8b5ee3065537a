"""`esxdr report`: the history of drills and failovers (JSON + self-contained HTML)."""

from __future__ import annotations

import click

from esxdr.cli.main import Context, json_option, pass_ctx, site_option


@click.group(help="""Reports of drills, failovers and failbacks, kept as audit evidence under <state_dir>/reports/.

\b
Examples:
  esxdr report list
  esxdr report list core --json
  esxdr report show                 the newest, as text
  esxdr report show 2026-12-01-020000-test-core
  esxdr report open                 the newest HTML report in a browser (or its path)
  esxdr report index                <state_dir>/reports/index.html: every run, trends, drill ages
""")
def report() -> None:
    pass


@report.command("list")
@click.argument("group", required=False)
@json_option
@site_option
@pass_ctx
def list_(ctx: Context, group: str | None) -> None:
    """List reports, newest first."""
    from esxdr.fmt import human_duration
    from esxdr.recovery import report as rp

    items = rp.list_reports(ctx.site().state_dir, group)

    def text() -> str:
        if not items:
            return "no reports yet"
        return "\n".join(f"{i['id']:40s} {i['outcome'] or '':8s} RTO {human_duration(i['rto_seconds']):>8s} "
                         f"RPO {human_duration(i['rpo_seconds']):>8s}" for i in items)

    ctx.emit(items, text)


@report.command()
@click.argument("ref", required=False)
@json_option
@site_option
@pass_ctx
def show(ctx: Context, ref: str | None) -> None:
    """Show one report (id, unique part of it, or path; default the newest)."""
    from esxdr.recovery import report as rp

    r = rp.load(rp.find(ctx.site().state_dir, ref))
    ctx.emit(r, rp.render_text(r))


@report.command("open")
@click.argument("ref", required=False)
@site_option
@pass_ctx
def open_(ctx: Context, ref: str | None) -> None:
    """Open the HTML report (or `index`, the index page) in a browser when there is one; always print its path."""
    import os
    import sys
    import webbrowser

    from esxdr.recovery import report as rp

    state_dir = ctx.site().state_dir
    html = rp.reports_dir(state_dir) / "index.html" if ref == "index" else rp.find(state_dir, ref).with_suffix(".html")
    if ref == "index" and not html.exists():
        from esxdr.recovery import history

        history.write_index(state_dir, history.limits(ctx.site()))
    # Only with a desktop: on a headless server webbrowser may start a text browser in the terminal.
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or sys.platform == "darwin":
        try:
            webbrowser.open(html.as_uri())
        except Exception:  # noqa: BLE001 - no browser: the path is enough
            pass
    click.echo(str(html))


@report.command(epilog="""\b
Examples:
  esxdr report index                write <state_dir>/reports/index.html, print its path and the drill ages
  esxdr report index --json         the same data: every run (outcome, RTO, RPO, report) and drill ages
  esxdr report open index           open the index page in a browser (or print its path)
Every drill, failover, failback, hand-off or reprotect that writes a report also rewrites the
page, so this is needed only after a change of drill_max_age in the site file, or to start one.
""")
@json_option
@site_option
@pass_ctx
def index(ctx: Context) -> None:
    """Write index.html beside the reports: every run, an RTO/RPO trend per group, drill ages.

    A group whose last successful drill is older than its drill_max_age (site file) is flagged
    STALE; the page is self-contained (no script, no network) like the reports.
    """
    import time

    from esxdr.fmt import human_duration
    from esxdr.recovery import history

    site = ctx.site()
    data = history.write_index(site.state_dir, history.limits(site), time.time())

    def text() -> str:
        kinds: dict[str, int] = {}
        for r in data["runs"]:
            kinds[r["title"]] = kinds.get(r["title"], 0) + 1
        lines = [f"{data['index']}: {len(data['runs'])} run(s)"
                 + (f" ({', '.join(f'{n} {k}' for k, n in kinds.items())})" if kinds else "")]
        for a in data["drills"]:
            limit = f", limit {human_duration(a['max_age_seconds'])}" if a["max_age_seconds"] is not None else ""
            when = (f"last successful drill {human_duration(a['age_seconds'])} ago ({a['at']})"
                    if a["at"] else "never drilled successfully")
            lines.append(f"{a['group']}: {when}{limit}" + (" — STALE" if a["stale"] else ""))
        return "\n".join(lines)

    ctx.emit(history.public(data), text)

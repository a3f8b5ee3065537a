"""`esxdr report`: the history of drills and failovers (JSON + self-contained HTML)."""

from __future__ import annotations

import click

from esxdr.cli.main import Context, json_option, pass_ctx, site_option


@click.group(help="""Reports of drills and failovers, kept as audit evidence under <state_dir>/reports/.

\b
Examples:
  esxdr report list
  esxdr report list core --json
  esxdr report show                 the newest, as text
  esxdr report show 2026-12-01-020000-test-core
  esxdr report open                 the newest HTML report in a browser (or its path)
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
    """Open the HTML report in a browser when there is one; always print its path."""
    import os
    import sys
    import webbrowser

    from esxdr.recovery import report as rp

    html = rp.find(ctx.site().state_dir, ref).with_suffix(".html")
    # Only with a desktop: on a headless server webbrowser may start a text browser in the terminal.
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or sys.platform == "darwin":
        try:
            webbrowser.open(html.as_uri())
        except Exception:  # noqa: BLE001 - no browser: the path is enough
            pass
    click.echo(str(html))

"""Every command's --help renders: examples present, click's no-rewrap marker read, not printed."""

from __future__ import annotations

import click
from click.testing import CliRunner

from esxdr.cli.main import cli


def _commands(group: click.Group, ctx: click.Context, path: tuple[str, ...] = ()):
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        if cmd is None:
            continue
        yield (*path, name), cmd
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, click.Context(cmd, parent=ctx, info_name=name), (*path, name))


def test_every_help_renders_its_examples_and_no_literal_markers():
    ctx = click.Context(cli, info_name="esxdr")
    runner = CliRunner()
    seen = 0
    for path, cmd in _commands(cli, ctx):
        r = runner.invoke(cli, [*path, "--help"])
        assert r.exit_code == 0, (path, r.output)
        # a help string written raw (r"...") prints click's \b marker instead of obeying it
        assert "\\b" not in r.output, (path, r.output)
        assert "\b" not in r.output, path
        if isinstance(cmd, click.Group) or cmd.name in ("serve",):
            continue
        seen += 1
    assert seen > 30
    for group in ("lab", "guest", "host", "target", "test"):
        assert "Examples:" in runner.invoke(cli, [group, "--help"]).output, group

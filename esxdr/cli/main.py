"""The esxdr command line: the root group, shared options and the one error handler.

Command groups live in their own modules (one per group) and are attached in
:func:`_attach_groups` (imported on first use). Each command receives a :class:`Context` through
``@pass_ctx`` with the global options (--site, --json, -v/-q, --debug) and
renders its result with :meth:`Context.emit`: text or JSON to stdout, while
logs and progress go to stderr.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import click

from esxdr.errors import EsxdrError

DEFAULT_SITE = os.environ.get("ESXDR_SITE", "site.yaml")


@dataclass
class Context:
    site_path: str = DEFAULT_SITE
    json: bool = False
    verbosity: int = 0
    debug: bool = False
    _site: Any = field(default=None, repr=False)

    def site(self):  # -> esxdr.site.Site
        """Load the site file once per invocation; all problems are reported together."""
        if self._site is None:
            from esxdr.site import load_site

            self._site = load_site(self.site_path)
        return self._site

    def emit(self, data: Any, text: str | Callable[[], str] | None = None) -> None:
        """Print a command's result: JSON with --json, otherwise the text form."""
        if self.json:
            click.echo(json.dumps(data, indent=2, sort_keys=False, default=_json_default))
        elif text is not None:
            out = text() if callable(text) else text
            if out:
                click.echo(out)

    def info(self, message: str) -> None:
        """A progress line on stderr (silenced by -q)."""
        if self.verbosity >= 0:
            click.echo(message, err=True)


def _json_default(o: Any) -> Any:
    if hasattr(o, "to_dict"):
        return o.to_dict()
    if hasattr(o, "__dataclass_fields__"):
        from dataclasses import asdict

        return asdict(o)
    if isinstance(o, set | frozenset):
        return sorted(o)
    return str(o)


pass_ctx = click.make_pass_decorator(Context, ensure=True)


def json_option(f):
    """--json on a subcommand too, so it may follow the command name."""

    def cb(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
        if value:
            ctx.find_object(Context).json = True  # type: ignore[union-attr]
        return value

    return click.option("--json", "json_", is_flag=True, expose_value=False, callback=cb,
                        help="Print the result as JSON on stdout.")(f)


def site_option(f):
    """--site on a subcommand too (it is also a global option)."""

    def cb(ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
        if value:
            ctx.find_object(Context).site_path = value  # type: ignore[union-attr]
        return value

    return click.option("--site", "site_", metavar="FILE", expose_value=False, callback=cb,
                        help="Site file (default: $ESXDR_SITE or ./site.yaml).")(f)


HELP = """esxdr — disaster recovery for VMware datastores on ZFS-backed iSCSI LUNs.

\b
Examples:
  esxdr site validate --site site.yaml
  esxdr replicate core --dry-run
  esxdr replicate core
  esxdr status --prometheus /var/lib/node_exporter/esxdr.prom
  esxdr snapshots core --json
  esxdr prune --dry-run
  esxdr schedule render --systemd
  esxdr lab up && esxdr lab status
  eval "$(esxdr completion bash)"

Exit codes: 0 ok, 2 bad input or configuration, 3 a conflict needing a decision,
4 a remote or transient failure, 5 a health check failed (e.g. RPO exceeded),
130 interrupted (Ctrl-C; a re-run continues). `esxdr serve` refuses a request with 126.
"""


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *(a for _, a in _attach_groups() if _load(a) is not None)})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        return super().get_command(ctx, name) or _load(name)


def _show_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    # importlib.metadata costs ~50 ms to import; only `esxdr --version` pays it
    if not value or ctx.resilient_parsing:
        return
    from importlib.metadata import version

    click.echo(f"esxdr, version {version('esxdr')}")
    ctx.exit()


@click.group(cls=LazyGroup, help=HELP, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--site", "site_path", default=DEFAULT_SITE, metavar="FILE", show_default=True,
              help="Site file (YAML). Also $ESXDR_SITE.")
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON on stdout.")
@click.option("-v", "--verbose", count=True, help="More detail on stderr (-vv shows every command run).")
@click.option("-q", "--quiet", is_flag=True, help="Only results and errors.")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_show_version,
              help="Show the version and exit.")
@click.pass_context
def cli(ctx: click.Context, site_path: str, as_json: bool, verbose: int, quiet: bool, debug: bool) -> None:
    obj = ctx.ensure_object(Context)
    obj.site_path = site_path
    obj.json = as_json
    obj.verbosity = -1 if quiet else verbose
    obj.debug = debug
    level = logging.DEBUG if (verbose >= 2 or debug) else logging.INFO if verbose == 1 else logging.WARNING
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")


def _attach_groups() -> list[tuple[str, str]]:
    """Each command group: (module path, attribute). Loaded only when used, so that a command
    imports just its own module (start-up time counts: `esxdr status` runs from cron)."""
    return [
        ("esxdr.cli.site", "site"),
        ("esxdr.cli.replicate", "replicate"),
        ("esxdr.cli.replicate", "snapshots"),
        ("esxdr.cli.replicate", "prune"),
        ("esxdr.cli.status", "status"),
        ("esxdr.cli.status", "noise"),
        ("esxdr.cli.schedule", "schedule"),
        ("esxdr.cli.keys", "keys"),
        ("esxdr.cli.serve", "serve"),
        ("esxdr.cli.target", "target"),
        ("esxdr.cli.vmfs", "vmfs"),
        ("esxdr.cli.lab", "lab"),
        ("esxdr.cli.host", "host"),
        ("esxdr.cli.test", "test"),
        ("esxdr.cli.report", "report"),
        ("esxdr.cli.failover", "failover"),
        ("esxdr.cli.failover", "reprotect"),
        ("esxdr.cli.failover", "failback"),
        ("esxdr.cli.guest", "guest"),
        ("esxdr.cli.plan", "plan"),
        ("esxdr.cli.completion", "completion"),
    ]


def _load(name: str) -> click.Command | None:
    import importlib

    for mod, attr in _attach_groups():
        if attr == name:
            try:
                module = importlib.import_module(mod)
            except ModuleNotFoundError as e:
                if e.name == mod:
                    return None
                raise
            return getattr(module, attr)
    return None


def run(argv: list[str] | None = None) -> int:
    """Entry point: the single place where errors become messages and exit codes."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    want_json = "--json" in (argv if argv is not None else sys.argv[1:])
    try:
        cli.main(args=argv, prog_name="esxdr", standalone_mode=False)
        return 0
    except EsxdrError as e:
        if debug:
            traceback.print_exc()
        if want_json:
            click.echo(json.dumps(e.to_dict(), indent=2, default=_json_default))
        click.echo(f"esxdr: {e.message}" if "\n" not in e.message else e.message, err=True)
        if e.hint:
            click.echo(f"hint: {e.hint}", err=True)
        return e.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as e:
        e.show()
        return 2
    except click.exceptions.Exit as e:
        return e.exit_code
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    except BrokenPipeError:
        return 0

"""`esxdr site`: check the site file and show what esxdr makes of it."""

from __future__ import annotations

import click
import yaml

from esxdr.cli.main import Context, json_option, pass_ctx, site_option
from esxdr.site import Site, load_site

_FILE_CHECKS_HELP = ("Do not look at the files the site file names (SSH keys, known_hosts, password, CA and CHAP secret "
                     "files), e.g. when checking it on another machine.")


@click.group(help="""Check and show the site file.

\b
Examples:
  esxdr site validate --site site.yaml
  esxdr site validate site.yaml --json
  esxdr site validate --no-file-checks examples/site.yaml
  esxdr site show --site site.yaml
  esxdr site schema > site.schema.json
""")
def site() -> None:
    pass


def _load(ctx: Context, file: str | None, no_file_checks: bool) -> tuple[str, Site]:
    path = file or ctx.site_path
    if file is None and not no_file_checks:
        return path, ctx.site()
    return path, load_site(path, check_files=not no_file_checks)


@site.command(help="""Check the site file and report every problem at once.

Each problem is printed as FILE:LINE:COLUMN: PATH: MESSAGE — HINT on stderr,
followed by the count; the exit code is then 2. With --json the problems are
printed as a list on stdout too.

\b
Examples:
  esxdr site validate --site site.yaml
  esxdr site validate site.yaml --json
  esxdr site validate --no-file-checks examples/site.yaml
""")
@click.argument("file", required=False, metavar="[FILE]")
@click.option("--no-file-checks", is_flag=True, help=_FILE_CHECKS_HELP)
@site_option
@json_option
@pass_ctx
def validate(ctx: Context, file: str | None, no_file_checks: bool) -> None:
    path, s = _load(ctx, file, no_file_checks)
    counts = summary(s)
    ctx.emit({"site": path, "ok": True, "name": s.name, "counts": counts},
             lambda: f"{path}: ok ({describe_counts(counts)})")


@site.command(short_help="Print the resolved site (secrets as references only).",
              help="""Print the site as esxdr resolved it: defaults filled in, absolute paths,
durations in seconds, sizes in bytes, datasets in full.

Secrets appear only as references (password_env, password_file, secret_file), never as values.

\b
Examples:
  esxdr site show
  esxdr site show --site site.yaml --json
""")
@click.argument("file", required=False, metavar="[FILE]")
@click.option("--no-file-checks", is_flag=True, help=_FILE_CHECKS_HELP)
@site_option
@json_option
@pass_ctx
def show(ctx: Context, file: str | None, no_file_checks: bool) -> None:
    _path, s = _load(ctx, file, no_file_checks)
    data = s.to_dict()
    for name, group in s.protection_groups.items():
        data["protection_groups"][name]["dr_datasets"] = dict(zip(group.datasets, group.dr_datasets, strict=True))
    ctx.emit(data, lambda: f"# {s.path}, resolved by esxdr (secrets are shown as references only)\n"
             + yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=110).rstrip())


@site.command(short_help="Print the site file's JSON Schema, for editors and CI.",
              help="""Print the site file's JSON Schema (draft-07), for editors and CI.

It is generated from the loader, so it knows every key this esxdr and its
installed plugins read, with types, defaults and hints; `esxdr site validate`
still checks what a schema cannot (references between sections, roles, dataset
placement, networks). docs/site.schema.json is a copy. An editor with the YAML
language server (VS Code's YAML extension, and others) checks and completes a
site file whose first line names the schema (a path relative to the site file,
or a URL):

\b
  # yaml-language-server: $schema=site.schema.json

\b
Examples:
  esxdr site schema > /etc/esxdr/site.schema.json
  check-jsonschema --schemafile /etc/esxdr/site.schema.json /etc/esxdr/site.yaml
""")
@json_option
@pass_ctx
def schema(ctx: Context) -> None:
    from esxdr.site.schema import dumps, site_schema

    data = site_schema()
    ctx.emit(data, lambda: dumps(data).rstrip("\n"))


def summary(s: Site) -> dict[str, int]:
    groups = s.protection_groups.values()
    return {
        "storage_servers": len(s.storage),
        "vsphere_endpoints": len(s.vsphere),
        "protection_groups": len(s.protection_groups),
        "datasets": sum(len(g.datasets) for g in groups),
        "vms": sum(len(g.vms) for g in groups),
        "dr_hosts": len(s.dr_network),
    }


_NOUNS = {
    "storage_servers": ("storage server", "storage servers"),
    "vsphere_endpoints": ("vSphere endpoint", "vSphere endpoints"),
    "protection_groups": ("protection group", "protection groups"),
    "datasets": ("dataset", "datasets"),
    "vms": ("VM", "VMs"),
    "dr_hosts": ("DR host network", "DR host networks"),
}


def describe_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {_NOUNS[k][n != 1]}" for k, n in counts.items())

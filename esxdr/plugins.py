"""Entry points: how esxdr finds target stacks (``esxdr.targets``) and kinds of runbook callout
(``esxdr.callouts``), its own and those of any installed plugin package (docs/plugins.md)."""

from __future__ import annotations

import functools
import re
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from esxdr.errors import UsageError

# A plugin's name: rendered into configuration comments and messages, hence the narrow form.
NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")


@functools.cache
def registry(group: str) -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=group) if NAME.fullmatch(ep.name)}


def names(group: str) -> tuple[str, ...]:
    return tuple(sorted(registry(group)))


def load(group: str, name: str, what: str) -> Any:
    """The object registered as ``name`` in ``group``; a usage error (exit 2, no traceback) that
    names the package when there is none or it fails to import."""
    ep = registry(group).get(name)
    if ep is None:
        raise UsageError(f"unknown {what} {name!r}",
                         hint=f"installed: {', '.join(names(group)) or 'none (reinstall esxdr: its own are entry points)'}"
                              "; a plugin package adds more (docs/plugins.md)")
    try:
        return ep.load()
    except Exception as e:  # noqa: BLE001 - a third party's import error, told as such
        raise UsageError(f"{what} {name!r} ({ep.value}, from {origin(ep)}) failed to load: {type(e).__name__}: {e}",
                         hint="fix or uninstall that package") from None


def origin(ep: EntryPoint) -> str:
    d = getattr(ep, "dist", None)
    return f"{d.name} {d.version}" if d is not None else "an unknown package"

"""iSCSI target stacks: one backend per stack, found through the ``esxdr.targets`` entry points.

A backend is a module with ``STACK`` (its name), ``parse(files) -> Manifest``,
``render(manifest, secrets) -> str`` and ``identity_problems(manifest) -> list[str]``; one
that esxdr can also read and change live adds ``observe(transport, ...)`` and
``apply(transport, manifest, ...)``. The built-in ones (:mod:`.comstar`, :mod:`.iscsitgt`,
:mod:`.lio`, :mod:`.tgt`) are registered in esxdr's own package metadata exactly as a third
party's are in theirs (docs/plugins.md), so both load the same way.
"""

from __future__ import annotations

import functools
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from types import ModuleType

from esxdr.errors import ManifestError, UsageError
from esxdr.model.manifest import STACK_NAME, Manifest

__all__ = ["GROUP", "backend", "convert", "read_native", "stacks"]

GROUP = "esxdr.targets"
REQUIRED = ("STACK", "parse", "render", "identity_problems")


@functools.cache
def _registry() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=GROUP) if STACK_NAME.fullmatch(ep.name)}


def stacks() -> tuple[str, ...]:
    """The stacks installed: esxdr's own and those of any plugin package."""
    return tuple(sorted(_registry()))


def backend(stack: str) -> ModuleType:
    ep = _registry().get(stack)
    if ep is None:
        raise UsageError(f"unknown target stack {stack!r}",
                         hint=f"installed: {', '.join(stacks()) or 'none (reinstall esxdr: its own stacks are entry points)'}"
                              "; a plugin package adds more (docs/plugins.md)")
    try:
        mod = ep.load()
    except Exception as e:  # noqa: BLE001 - a third party's import error, told as such
        raise UsageError(f"target stack {stack!r} ({ep.value}, from {_dist(ep)}) failed to load: "
                         f"{type(e).__name__}: {e}", hint="fix or uninstall that package") from None
    missing = [n for n in REQUIRED if not hasattr(mod, n)]
    if missing or getattr(mod, "STACK", None) != stack:
        why = f"lacks {', '.join(missing)}" if missing else f"says STACK = {getattr(mod, 'STACK', None)!r}"
        raise UsageError(f"target stack {stack!r} ({ep.value}, from {_dist(ep)}) is not a backend: it {why}",
                         hint="a backend module defines STACK, parse, render and identity_problems (docs/plugins.md)")
    return mod


def _dist(ep: EntryPoint) -> str:
    d = getattr(ep, "dist", None)
    return f"{d.name} {d.version}" if d is not None else "an unknown package"


def read_native(stack: str, paths: list[str]) -> Manifest:
    """Parse saved native configuration files of ``stack`` into a validated manifest."""
    files = []
    for p in paths:
        try:
            files.append((p, Path(p).read_text()))
        except OSError as e:
            raise UsageError(f"cannot read {p}: {e.strerror}") from e
        except UnicodeDecodeError as e:
            raise ManifestError(f"{p}: not a text file ({e.reason})") from e
    m = backend(stack).parse(files)
    return m.validate()


def convert(manifest: Manifest, to: str, secrets=None) -> str:
    """Render a manifest as another stack's native configuration (refusing identity loss first)."""
    from esxdr.model.manifest import dumps

    if to in ("manifest", "yaml"):
        return dumps(manifest.validate(), "yaml")
    if to == "json":
        return dumps(manifest.validate(), "json")
    b = backend(to)
    # Before any rendering, for every stack: a plugin's render need not check this itself.
    from esxdr.targets.base import refuse_identity

    refuse_identity(to, b.identity_problems(manifest))
    return b.render(manifest, secrets)

"""iSCSI target stacks: one backend per stack, found through the ``esxdr.targets`` entry points.

A backend is a module with ``STACK`` (its name), ``parse(files) -> Manifest``,
``render(manifest, secrets) -> str`` and ``identity_problems(manifest) -> list[str]``; one
that esxdr can also read and change live adds ``observe(transport, ...)`` and
``apply(transport, manifest, ...)``. The built-in ones (:mod:`.comstar`, :mod:`.iscsitgt`,
:mod:`.lio`, :mod:`.tgt`) are registered in esxdr's own package metadata exactly as a third
party's are in theirs (docs/plugins.md), so both load the same way.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from esxdr import plugins
from esxdr.errors import ManifestError, UsageError
from esxdr.model.manifest import Manifest, dumps
from esxdr.targets.base import refuse_identity

__all__ = ["GROUP", "backend", "convert", "read_native", "stacks"]

GROUP = "esxdr.targets"
REQUIRED = ("STACK", "parse", "render", "identity_problems")


def stacks() -> tuple[str, ...]:
    """The stacks installed: esxdr's own and those of any plugin package."""
    return plugins.names(GROUP)


def backend(stack: str) -> ModuleType:
    mod = plugins.load(GROUP, stack, "target stack")
    missing = [n for n in REQUIRED if not hasattr(mod, n)]
    if missing or getattr(mod, "STACK", None) != stack:
        ep = plugins.registry(GROUP)[stack]
        why = f"lacks {', '.join(missing)}" if missing else f"says STACK = {getattr(mod, 'STACK', None)!r}"
        raise UsageError(f"target stack {stack!r} ({ep.value}, from {plugins.origin(ep)}) is not a backend: it {why}",
                         hint="a backend module defines STACK, parse, render and identity_problems (docs/plugins.md)")
    return mod


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

    if to in ("manifest", "yaml"):
        return dumps(manifest.validate(), "yaml")
    if to == "json":
        return dumps(manifest.validate(), "json")
    b = backend(to)
    # Before any rendering, for every stack: a plugin's render need not check this itself.

    refuse_identity(to, b.identity_problems(manifest))
    return b.render(manifest, secrets)

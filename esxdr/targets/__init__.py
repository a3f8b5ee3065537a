"""iSCSI target identity: the portable manifest, one backend per target stack, rewrites, probe, verify.

Backends (each a module with ``STACK``, ``parse``, ``render``, ``identity_problems``,
``observe`` and ``apply``): :mod:`.comstar`, :mod:`.iscsitgt`, :mod:`.lio`, :mod:`.tgt`.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from esxdr.errors import ManifestError, UsageError
from esxdr.model.manifest import STACKS, Manifest

__all__ = ["STACKS", "backend", "convert", "read_native"]


def backend(stack: str) -> ModuleType:
    if stack not in STACKS:
        raise UsageError(f"unknown target stack {stack!r}", hint=f"one of: {', '.join(STACKS)}")
    return importlib.import_module(f"esxdr.targets.{stack}")


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
    return backend(to).render(manifest, secrets)

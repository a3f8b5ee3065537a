"""Serve's one file onto a storage box that has no esxdr install (esxdr keys deploy-serve).

The copy goes over the storage server's pinned SSH host key, as an administrative account (the
service account's own key only ever reaches serve, which takes no files). On the box: the Python
3.6+ that will run it is found and its version checked, the file is written beside its final
name and renamed into place (a concurrent request never runs half a file), and the installed
copy is asked for its version and sources digest, which must be the ones sent.
"""

from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING

from esxdr import __version__
from esxdr.errors import CommandFailed, UsageError
from esxdr.serve.bundle import MIN_PYTHON, bundle, sources_sha256
from esxdr.transport import for_server

if TYPE_CHECKING:
    from esxdr.site.model import Site, StorageServer

_PYTHONS = ("python3", "/usr/local/bin/python3", "/usr/bin/python3", "/opt/local/bin/python3", "python")


def deploy(site: Site, srv: StorageServer, *, admin_user: str, admin_key: str, path: str, python: str | None,
           dry_run: bool, say) -> dict:
    """Copy serve's file to ``srv`` at ``path``; returns what was done (and the interpreter found)."""
    if not path.startswith("/") or any(ord(c) < 0x21 or c in "\"'\\$`" for c in path):
        raise UsageError(f"--path {path!r}: an absolute path without blanks, quotes or shell characters",
                         hint="e.g. /usr/local/libexec/esxdr-serve")
    if srv.local:
        raise UsageError(f"storage.{srv.name} is local: true here; copy the file yourself (esxdr keys serve-file -o "
                         f"{path})")
    admin = dataclasses.replace(srv, user=admin_user, key=admin_key, serve_prefix=None)
    t = for_server(admin, site.state_dir)  # the site's pinned host key: an impostor gets nothing
    try:
        interpreter, version = _python(t, python)
        say(f"{srv.name}: {interpreter} is Python {version}")
        text = bundle(__version__)
        result = {"server": srv.name, "path": path, "python": interpreter, "python_version": version,
                  "version": __version__, "sources_sha256": sources_sha256(), "bytes": len(text.encode()),
                  "dry_run": dry_run}
        if dry_run:
            say(f"{srv.name}: would write {path} ({result['bytes']} bytes) as {admin_user}")
            return result
        t.run(["sh", "-c", 'umask 022 && mkdir -p "$(dirname "$1")" && cat > "$1.esxdr-new" && '
                           'chmod 755 "$1.esxdr-new" && mv -f "$1.esxdr-new" "$1"', "sh", path], input=text)
        got = t.run([interpreter, "-I", path, "--bundle-version"], check=False)
        if got.returncode != 0 or got.stdout.split() != [__version__, sources_sha256()]:
            raise CommandFailed(f"{srv.name}: {path} does not answer as the file sent "
                                f"({(got.stdout or got.stderr).strip()[:200] or 'no output'})")
        say(f"{srv.name}: wrote {path} ({result['bytes']} bytes), it answers {__version__} {sources_sha256()[:12]}")
        return result
    finally:
        t.close()


def _python(t, python: str | None) -> tuple[str, str]:
    """The absolute path and version of the box's Python 3.6 or newer (``python``: the one to use)."""
    probe = "import sys; print(sys.executable); print('%d.%d.%d' % sys.version_info[:3])"
    for candidate in ([python] if python else _PYTHONS):
        r = t.run([candidate, "-c", probe], check=False)
        lines = r.stdout.split()
        if r.returncode != 0 or len(lines) != 2 or not re.match(r"^\d+\.\d+\.\d+$", lines[1]):
            continue
        found = tuple(int(x) for x in lines[1].split("."))
        if found[:2] < MIN_PYTHON:
            if python:
                raise UsageError(f"{python} on the box is Python {lines[1]}; serve needs 3.6 or newer")
            continue
        return lines[0], lines[1]
    raise UsageError(f"no Python {MIN_PYTHON[0]}.{MIN_PYTHON[1]} or newer on the box"
                     + (f" at {python}" if python else f" (tried {', '.join(_PYTHONS)})"),
                     hint="install python3 there, or name it with --python PATH")

"""``esxdr serve`` as one standard-library file for storage boxes without an esxdr install.

TrueNAS, OmniOS and older appliances rarely have Python 3.11 or pip, but most have some Python 3.
The DR side of esxdr is only serve: the stream parser (``esxdr/sendstream.py``), the policy and
the runner. Those three modules are written for Python 3.6 (annotations that 3.6 need not
evaluate, no dataclasses, no walrus, subprocess.run as 3.6 spells it, splice only where the
interpreter has it; vermin checks the floor in CI), so the file is their text in order, with the
imports between them dropped, and an entry point. No other rewriting: what runs on the box is the
code the tests run, comments and all.
"""

import hashlib
import re
from pathlib import Path

_PKG = Path(__file__).resolve().parents[1]
# In dependency order: policy calls sendstream, run calls both.
SOURCES = ("sendstream.py", "serve/policy.py", "serve/run.py")
MIN_PYTHON = (3, 6)
_INTERNAL_IMPORT = re.compile(r"^(?P<indent>[ \t]*)from esxdr\.[\w.]+ import [^\n(]+$", re.M)


def sources_sha256() -> str:
    """The identity of the bundled code: the sha256 of the three sources, in order."""
    h = hashlib.sha256()
    for rel in SOURCES:
        h.update((_PKG / rel).read_bytes())
    return h.hexdigest()


def bundle(version: str) -> str:
    """The one-file serve: ``python3 esxdr-serve --allow-prefix DATASET ...`` as the forced command."""
    digest = sources_sha256()
    parts = [
        "#!/usr/bin/env python3\n"
        f"# esxdr serve {version}, one file (esxdr keys serve-file); sources sha256 {digest}.\n"
        "# Generated from esxdr/sendstream.py, esxdr/serve/policy.py and esxdr/serve/run.py: change those,\n"
        "# not this. Standard library only; Python 3.6 or newer.\n"
        "import sys\n"
        f"if sys.version_info < {MIN_PYTHON!r}:\n"
        "    sys.stderr.write('esxdr serve needs Python 3.6 or newer, this is %d.%d\\n' % sys.version_info[:2])\n"
        "    sys.exit(126)\n"
        f"BUNDLE_VERSION = {version!r}\n"
        f"BUNDLE_SOURCES_SHA256 = {digest!r}\n",
    ]
    for rel in SOURCES:
        text = (_PKG / rel).read_text()
        # an import of a sibling becomes a no-op statement (it may be a block's only statement)
        text = _INTERNAL_IMPORT.sub(lambda m: f"{m['indent']}pass  # bundled: defined above in this file", text)
        if "from esxdr" in text or "import esxdr" in text:
            raise RuntimeError(f"{rel}: an import of esxdr the bundle cannot resolve")
        parts.append(f"\n# ---- {rel} " + "-" * (90 - len(rel)) + "\n\n" + text)
    parts.append(
        "\n\nif __name__ == '__main__':\n"
        "    if sys.argv[1:] == ['--bundle-version']:\n"
        "        sys.stdout.write('%s %s\\n' % (BUNDLE_VERSION, BUNDLE_SOURCES_SHA256))\n"
        "        sys.exit(0)\n"
        # `esxdr-serve serve --allow-prefix ...` too: the word an `esxdr serve` line has
        "    sys.exit(main(sys.argv[2:] if sys.argv[1:2] == ['serve'] else sys.argv[1:]))\n")
    return "".join(parts)

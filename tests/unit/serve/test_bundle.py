"""`esxdr serve` as one file (esxdr keys serve-file) for storage boxes without an esxdr install: the
same code as the package's serve, no import of esxdr, Python 3.6 as its floor (vermin), and the
whole hostile corpus refused by the file itself. (The lab's service account runs this very file, so
every integration test through the account exercises it too.)"""

from __future__ import annotations

import os
import re
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_serve import ALLOWED, HOSTILE, PREFIX, SEND_ONLY_ALLOWED, SEND_ONLY_HOSTILE, SOURCE

from esxdr import __version__
from esxdr.serve.bundle import SOURCES, bundle, sources_sha256


@pytest.fixture(scope="module")
def serve_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("bundle") / "esxdr-serve"
    p.write_text(bundle(__version__))
    p.chmod(0o755)
    return p


@pytest.fixture(scope="module")
def bundled(serve_file) -> dict:
    """The file's namespace, loaded by path as the box's Python would (not as esxdr's package)."""
    return runpy.run_path(str(serve_file), run_name="esxdr_serve_bundle")


def test_the_file_imports_nothing_of_esxdr_and_carries_every_source(serve_file):
    text = serve_file.read_text()
    assert not re.search(r"^\s*(from esxdr[. ]|import esxdr)", text, re.M)
    root = Path(__file__).resolve().parents[3] / "esxdr"
    at = 0
    for rel in SOURCES:  # every line of each source is there, in order, comments included
        for line in (root / rel).read_text().splitlines():
            if "from esxdr." not in line:
                at = text.index(line, at) + len(line)
    assert sources_sha256() in text


def test_vermin_finds_python_3_6_enough(serve_file):
    vermin = shutil.which("vermin") or str(Path(sys.executable).with_name("vermin"))
    r = subprocess.run([vermin, "--no-tips", "--violations", "-t=3.6-", str(serve_file)], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Minimum required versions: 3.6" in r.stdout


@pytest.mark.parametrize(("command", "expected"), ALLOWED)
def test_the_file_allows_what_the_package_allows(bundled, command, expected):
    assert bundled["parse"](command, PREFIX) == expected


@pytest.mark.parametrize(("command", "reason"), HOSTILE)
def test_the_file_refuses_what_the_package_refuses(bundled, command, reason):
    with pytest.raises(bundled["Refused"]) as refused:
        bundled["parse"](command, PREFIX)
    assert reason in str(refused.value)


@pytest.mark.parametrize(("command", "expected"), SEND_ONLY_ALLOWED)
def test_send_only_allows_the_same(bundled, command, expected):
    assert bundled["parse"](command, SOURCE, send_only=True) == expected


@pytest.mark.parametrize(("command", "reason"), SEND_ONLY_HOSTILE)
def test_send_only_refuses_the_same(bundled, command, reason):
    with pytest.raises(bundled["Refused"]) as refused:
        bundled["parse"](command, SOURCE, send_only=True)
    assert reason in str(refused.value)


def _run(serve_file, *args, command=None):
    env = {"PATH": os.environ["PATH"], **({"SSH_ORIGINAL_COMMAND": command} if command is not None else {})}
    return subprocess.run(["/usr/bin/python3", "-I", str(serve_file), *args], capture_output=True, text=True,
                          env=env)


def test_the_file_runs_as_a_forced_command_with_or_without_the_serve_word(serve_file, tmp_path):
    log = tmp_path / "serve.log"
    for lead in ([], ["serve"]):
        r = _run(serve_file, *lead, "--allow-prefix", "rp1/iscsi", "--log", str(log),
                 command="zfs destroy -r rp1/iscsi")
        assert r.returncode == 126 and "refused: flag -r is not allowed here" in r.stderr, r.stderr
    assert log.read_text().count("REFUSED 'zfs destroy -r rp1/iscsi'") == 2
    r = _run(serve_file, "--bundle-version")
    assert r.stdout.split() == [__version__, sources_sha256()]
    assert _run(serve_file, "--allow-prefix", "rp1", command="").returncode == 126  # no interactive login
    assert _run(serve_file).returncode == 2  # no prefix: a usage error, not a shell

"""`esxdr completion bash|zsh|fish` and `esxdr --version`, run as a user's shell would run them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
ESXDR = BIN / "esxdr"


def esxdr(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(ESXDR), *args], capture_output=True, text=True,
                          env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", **env})


def test_version_is_the_installed_packages():
    r = esxdr("--version")
    assert r.returncode == 0 and r.stdout == f"esxdr, version {version('esxdr')}\n", r


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_the_script_is_clicks_own(shell):
    r = esxdr("completion", shell)
    assert r.returncode == 0, r.stderr
    # the script click prints for `_ESXDR_COMPLETE=<shell>_source esxdr`: one mechanism, two doors
    assert r.stdout == esxdr(_ESXDR_COMPLETE=f"{shell}_source").stdout
    head = {"bash": "_esxdr_completion() {", "zsh": "#compdef esxdr", "fish": "function _esxdr_completion"}
    assert r.stdout.startswith(head[shell]) and "_ESXDR_COMPLETE" in r.stdout


def test_an_unknown_shell_is_refused_with_the_known_ones():
    r = esxdr("completion", "tcsh")
    assert r.returncode == 2 and "'tcsh' is not one of 'bash', 'zsh', 'fish'" in r.stderr
    assert "Traceback" not in r.stderr


def _complete_in_bash(*words: str) -> list[str]:
    """Source the script in bash and press TAB after ``words`` (the last one being typed), as bash's
    programmable completion does: COMP_WORDS and COMP_CWORD set, the function called."""
    bash = shutil.which("bash")
    assert bash, "bash is part of Debian's base system"
    script = (f'eval "$({ESXDR} completion bash)"\n'
              f"COMP_WORDS=({' '.join(repr(w) for w in words)}); COMP_CWORD={len(words) - 1}\n"
              "_esxdr_completion esxdr\n"
              'printf "%s\\n" "${COMPREPLY[@]}"\n')
    r = subprocess.run([bash, "--norc", "--noprofile", "-c", script], capture_output=True, text=True,
                       env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"})
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def test_bash_completes_a_command():
    # the protocol under the script, as click documents it
    r = esxdr(COMP_WORDS="esxdr rep", COMP_CWORD="1", _ESXDR_COMPLETE="bash_complete")
    assert r.returncode == 0 and r.stdout.split() == ["plain,replicate", "plain,report", "plain,reprotect"]
    assert _complete_in_bash("esxdr", "rep") == ["replicate", "report", "reprotect"]
    assert "replicate" in _complete_in_bash("esxdr", "repl")


def test_bash_completes_subcommands_options_and_choices():
    assert _complete_in_bash("esxdr", "site", "sch") == ["schema"]
    assert _complete_in_bash("esxdr", "schedule", "render", "--sy") == ["--systemd"]
    assert _complete_in_bash("esxdr", "completion", "") == ["bash", "zsh", "fish"]

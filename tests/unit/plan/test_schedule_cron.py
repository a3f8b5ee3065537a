"""`esxdr schedule render --cron`: each job line means, to cron and then to /bin/sh, the command
esxdr meant, whatever blanks, quotes, backslashes and % the paths hold (crontab(5): an unescaped %
ends the command and the rest becomes its stdin; "\\%" is a literal %)."""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import pytest

from esxdr.cli.main import run
from esxdr.errors import UsageError
from esxdr.plan.schedule import unit_files
from esxdr.site import load_site

SITE = """\
version: 1
name: lab
state_dir: state
storage:
  ss1: {role: production, local: true}
  ss2: {role: dr, address: 127.0.0.2, user: esxdr, key: id,
        host_key: SHA256:HYfOdYYK61d+0O8KfPYpweuLx8FB4tWQiemG1Yi2yOw}
protection_groups:
  core:
    source: ss1
    destination: ss2
    source_root: sp1/core
    dr_root: rp1/core
    datasets: [lun0]
    retention: "48h 30d"
    rpo: 2d
    schedule: {cron: "15 */4 * * mon-fri", timezone: Europe/Zurich}
"""


def _site(directory: Path) -> Path:
    directory.mkdir(parents=True)
    (directory / "id").write_text("key\n")
    (directory / "id").chmod(0o600)
    (directory / "site.yaml").write_text(SITE)
    return directory / "site.yaml"


def cron_entry(line: str) -> tuple[list[str], str, str, str | None]:
    """An /etc/cron.d line read as cron reads it: five time fields, the user, then the command up to
    the first unescaped % (a backslash escapes the next character; only "\\%" loses it), and what
    follows that % (the command's stdin), or None."""
    fields = line.split(None, 6)
    assert len(fields) == 7, line
    *times, user, rest = fields
    command, escaped = [], False
    for i, ch in enumerate(rest):
        if escaped:
            if ch == "%":
                command[-1] = "%"
            else:
                command.append(ch)
            escaped = False
        elif ch == "%":
            return times, user, "".join(command), rest[i + 1:]
        else:
            command.append(ch)
            escaped = ch == "\\"
    return times, user, "".join(command), None


def job_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#") and "=" not in ln.split()[0]]


@pytest.mark.parametrize("dirname", ["site files 100%x", "a 'quoted' %% dir", "back\\slash \\%d", "plain"])
def test_the_cron_line_gives_the_shell_the_real_paths(tmp_path, capsys, dirname):
    site = _site(tmp_path / dirname)
    assert run(["--site", str(site), "--json", "schedule", "render", "--cron"]) == 0
    (text,) = json.loads(capsys.readouterr().out)["files"].values()
    (line,) = job_lines(text)
    times, user, command, stdin = cron_entry(line)
    assert times == "15 */4 * * mon-fri".split() and user == "root"
    assert stdin is None, f"cron would cut the command at a %: {line}"
    argv = shlex.split(command)
    state = site.parent / "state"
    assert argv[:4] == ["mkdir", "-p", f"{state}/logs", "&&"]
    assert argv[argv.index("--site") + 1] == str(site)
    assert argv[-5:] == ["-q", "replicate", "core", f">>{state}/logs/core.log", "2>&1"]


def _stub(directory: Path) -> Path:
    """An esxdr stand-in that records the arguments it was given."""
    directory.mkdir(parents=True)
    stub = directory / "esxdr"
    stub.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done >"$ARGV_FILE"\necho ran\n')
    stub.chmod(0o755)
    return stub


@pytest.mark.parametrize("side", ["source", "dr"])
def test_sh_runs_the_cron_command_with_the_real_paths(tmp_path, side):
    # what cron does with the line: cut at the first bare %, drop the backslash of \%, then /bin/sh -c
    odd = "dir 50% it's \\%x \\\\ $HOME `x`"
    site = load_site(_site(tmp_path / odd / "site"))
    stub = _stub(tmp_path / odd / "bin")
    files = unit_files("cron", list(site.protection_groups.values()), side, site_path=site.path,
                       state_dir=site.state_dir, esxdr_bin=str(stub), user="root")
    (line,) = job_lines(next(iter(files.values())))
    _times, _user, command, stdin = cron_entry(line)
    assert stdin is None, line
    argv_file = tmp_path / "argv"
    r = subprocess.run(["/bin/sh", "-c", command], env={"ARGV_FILE": str(argv_file), "PATH": "/usr/bin:/bin"},
                       capture_output=True, text=True)
    assert r.returncode == 0 and not r.stdout and not r.stderr, (line, r)
    expected = ["--site", site.path, "-q", "replicate", "core"] if side == "source" else \
        ["--site", site.path, "-q", "prune", "core", "--side", "dr"]
    assert argv_file.read_text().splitlines() == expected
    log = Path(site.state_dir) / "logs" / ("core.log" if side == "source" else "core-dr-prune.log")
    assert log.read_text() == "ran\n"  # the log directory was made, and the output went to it


def test_the_python_m_esxdr_fallback_stays_two_words(tmp_path):
    site = load_site(_site(tmp_path / "s"))
    python = f"{tmp_path}/venv 1%/bin/python"
    files = unit_files("cron", list(site.protection_groups.values()), "source", site_path=site.path,
                       state_dir=site.state_dir, esxdr_bin=f"{python} -m esxdr", user="root")
    (line,) = job_lines(files["esxdr"])
    _times, _user, command, stdin = cron_entry(line)
    assert stdin is None
    argv = shlex.split(command)
    assert argv[4:8] == [python, "-m", "esxdr", "--site"]


@pytest.mark.parametrize("user", ["ro ot", "root%", "", "a\nb"])
def test_a_user_cron_cannot_read_is_refused(tmp_path, user):
    site = load_site(_site(tmp_path / "s"))
    with pytest.raises(UsageError, match="user name"):
        unit_files("cron", list(site.protection_groups.values()), "source", site_path=site.path,
                   state_dir=site.state_dir, esxdr_bin="/usr/bin/esxdr", user=user)


@pytest.mark.parametrize("kind", ["cron", "systemd"])
def test_a_path_with_a_line_break_is_refused(tmp_path, kind):
    site = load_site(_site(tmp_path / "s"))
    with pytest.raises(UsageError, match="line break"):
        unit_files(kind, list(site.protection_groups.values()), "source", site_path=site.path,
                   state_dir=site.state_dir, esxdr_bin="/opt/es\nxdr/esxdr", user="root")

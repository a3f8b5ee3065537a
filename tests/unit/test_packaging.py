"""esxdr as a wheel: `python -m build` gives an sdist and a wheel built from it, with the templates
and the entry points (the target stacks and the callout kind); installed in a clean venv, with its
dependencies resolved by pip as a user's install would, it runs without this checkout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from test_report import drill

from esxdr.recovery import report

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD_ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
SITE = """\
version: 1
name: lab
state_dir: state
storage:
  ss1: {role: production, local: true}
  ss2: {role: dr, local: true}
protection_groups:
  core:
    source: ss1
    destination: ss2
    source_root: sp1/iscsi
    dr_root: rp1/iscsi
    datasets: [lun0]
    retention: "48h 30d"
    rpo: 4h
    schedule: {every: 1h, timezone: Europe/Berlin}
"""


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """`python -m build`: the sdist, then the wheel built from that sdist (so the sdist is complete)."""
    # Built from a copy of the checkout's files (tracked or new, not ignored): setuptools builds in
    # ./build, where a module deleted since an earlier build would still sit and be packed.
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("dist")
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard",
                            "--", "pyproject.toml", "README.md", "esxdr"],
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for f in filter(None, files):
        if (ROOT / f).exists():  # a file deleted in the work tree but not yet in the index
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, src / f)
    # --no-isolation: the build backend (setuptools) from this venv, so no download is needed;
    # with isolation (the default) build fetches setuptools from the index and gives the same files.
    r = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(src)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def wheel(dist) -> Path:
    (w,) = dist.glob("esxdr-*.whl")
    return w


def test_build_gives_an_sdist_and_a_wheel_with_the_templates_and_the_entry_points(dist, wheel):
    assert len(list(dist.glob("esxdr-*.tar.gz"))) == 1
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        templates = {Path(n).name for n in names if n.startswith("esxdr/templates/")}
        eps = z.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    on_disk = {p.name for p in (ROOT / "esxdr" / "templates").glob("*.j2")}
    assert on_disk and templates == on_disk
    assert "esxdr/site/schema/__init__.py" in names and "esxdr/cli/completion.py" in names
    assert "[console_scripts]" in eps and "esxdr = esxdr.__main__:main" in eps
    assert "[esxdr.targets]" in eps and "tgt = esxdr.targets.tgt" in eps
    assert "[esxdr.callouts]" in eps and "command = esxdr.recovery.callouts:command" in eps
    assert not [n for n in names if n.startswith(("tests/", "docs/")) or "__pycache__" in n]


def test_the_installed_wheel_renders_without_the_checkout(wheel, tmp_path):
    """Offline: esxdr from the wheel only, its dependencies from this test environment."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                        "--target", str(site), str(wheel)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    (site / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    conf = tmp_path / "targets.conf"
    conf.write_text("<target iqn.2024-01.com.example:core>\n    <backing-store /sp1/iscsi/lun0/lun.img>\n"
                    "        scsi_id 600144f0a1b2c3d4e5f6071829304051\n        lun 1\n    </backing-store>\n"
                    "</target>\n")
    r = subprocess.run([str(venv / "bin" / "python"), "-c",
                        "import esxdr, sys; print(esxdr.__file__)"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith(str(site)), (r.stdout, r.stderr)
    r = subprocess.run([str(venv / "bin" / "python"), "-m", "esxdr", "target", "convert", "--from", "tgt", str(conf),
                        "--to", "tgt"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "scsi_id 600144f0a1b2c3d4e5f6071829304051" in r.stdout  # rendered from the wheel's template


@pytest.fixture(scope="module")
def clean_venv(wheel, tmp_path_factory) -> Path:
    """A venv with nothing but the wheel and the dependencies pip resolves from its metadata, as a
    user's `pip install esxdr-*.whl` would (from the configured package index: PyPI is reachable
    here and in CI; wheels pip cached earlier are reused)."""
    venv = tmp_path_factory.mktemp("clean") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--quiet",
                        str(wheel)], capture_output=True, text=True, cwd=venv.parent)
    assert r.returncode == 0, f"pip could not install the wheel with its dependencies:\n{r.stderr[-3000:]}"
    return venv


def esxdr(venv: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """The installed console script, from a directory outside the checkout, on a PATH that has it."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ESXDR_SITE", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}:/usr/sbin:/usr/bin:/sbin:/bin"
    return subprocess.run([str(venv / "bin" / "esxdr"), *args], capture_output=True, text=True, cwd=cwd, env=env)


def test_the_clean_install_runs_its_commands(clean_venv, wheel, tmp_path):
    (tmp_path / "site.yaml").write_text(SITE)
    ok = lambda *args: esxdr(clean_venv, tmp_path, *args)  # noqa: E731 - one place for cwd and venv
    r = ok("--help")
    assert r.returncode == 0 and "Usage: esxdr" in r.stdout and "completion" in r.stdout, r.stderr
    r = ok("--version")
    assert r.returncode == 0 and r.stdout == f"esxdr, version {wheel.name.split('-')[1]}\n", r  # the metadata's
    r = subprocess.run([str(clean_venv / "bin" / "python"), "-c", "import esxdr; print(esxdr.__file__)"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.stdout.startswith(str(clean_venv)), r  # the wheel's copy, not this checkout's

    # schedule render: the templates come from the wheel, ExecStart names the installed script
    r = ok("--site", "site.yaml", "schedule", "render", "--systemd", "--out", "units")
    assert r.returncode == 0, r.stderr
    service = (tmp_path / "units" / "esxdr-replicate-core.service").read_text()
    assert f"ExecStart={clean_venv / 'bin' / 'esxdr'} --site \"{tmp_path / 'site.yaml'}\"" in service
    assert "OnCalendar=*-*-* *:0:00 Europe/Berlin" in (tmp_path / "units" / "esxdr-replicate-core.timer").read_text()
    v = subprocess.run([SYSTEMD_ANALYZE, "verify", "--man=no", *map(str, sorted((tmp_path / "units").iterdir()))],
                       capture_output=True, text=True)
    assert v.returncode == 0 and not (v.stdout + v.stderr).strip(), v.stdout + v.stderr
    r = ok("--site", "site.yaml", "schedule", "render", "--cron")
    assert r.returncode == 0 and "CRON_TZ=Europe/Berlin" in r.stdout, r.stderr

    # report: a drill's report, listed, shown, indexed (index.html.j2) and rendered (report.html.j2)
    jpath, _html = report.write(str(tmp_path / "state"), drill())
    r = ok("--site", "site.yaml", "--json", "report", "list")
    assert r.returncode == 0 and [i["group"] for i in json.loads(r.stdout)] == ["core"], r.stderr
    r = ok("--site", "site.yaml", "report", "show")
    assert r.returncode == 0 and "core" in r.stdout, r.stderr
    (tmp_path / "state" / "reports" / "index.html").unlink()
    r = ok("--site", "site.yaml", "report", "index")
    assert r.returncode == 0, r.stderr
    assert "<html" in (tmp_path / "state" / "reports" / "index.html").read_text()
    r = subprocess.run([str(clean_venv / "bin" / "python"), "-c", "import sys; from esxdr.recovery import report; "
                        "print(report.render_html(report.load(__import__('pathlib').Path(sys.argv[1]))))", jpath],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0 and "<html" in r.stdout, r.stderr

    # the site file's schema from the installed package (no docs/ there): the committed copy
    r = ok("site", "schema")
    assert r.returncode == 0 and r.stdout == (ROOT / "docs" / "site.schema.json").read_text(), r.stderr[-2000:]
    r = ok("completion", "bash")
    assert r.returncode == 0 and r.stdout.startswith("_esxdr_completion() {"), r.stderr

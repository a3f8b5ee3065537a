"""esxdr as a wheel: `pip install .` gives the package, its templates and its entry points (the
target stacks and the callout kind), and the installed copy runs without this checkout."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # Built from the files git tracks, copied: setuptools builds in ./build, where a module deleted
    # since an earlier build would still sit and be packed.
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("wheel")
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--", "pyproject.toml", "README.md", "esxdr"],
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for f in filter(None, files):
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, src / f)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                        "--no-index", "-w", str(out), str(src)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    (w,) = out.glob("esxdr-*.whl")
    return w


def test_the_wheel_carries_the_templates_and_the_entry_points(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        templates = {Path(n).name for n in names if n.startswith("esxdr/templates/")}
        eps = z.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    on_disk = {p.name for p in (ROOT / "esxdr" / "templates").glob("*.j2")}
    assert on_disk and templates == on_disk
    assert "[esxdr.targets]" in eps and "tgt = esxdr.targets.tgt" in eps
    assert "[esxdr.callouts]" in eps and "command = esxdr.recovery.callouts:command" in eps
    assert not [n for n in names if n.startswith(("tests/", "esxdr/lab/__pycache__"))]


def test_the_installed_wheel_renders_without_the_checkout(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                        "--target", str(site), str(wheel)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    # esxdr's dependencies from the test environment; esxdr itself only from the wheel
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

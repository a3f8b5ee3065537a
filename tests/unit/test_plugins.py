"""Target stacks are plugins: esxdr's own load through the ``esxdr.targets`` entry points, and a
third party's package adds one without touching esxdr.

The example package (tests/plugins/esxdr-lunlist, docs/plugins.md) is installed with pip into a
fresh venv that sees this checkout's esxdr and its dependencies; its stack is then used through
the CLI, as its users would.
"""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from test_callouts import SITE as CALLOUT_SITE

import esxdr
from esxdr import targets
from esxdr.errors import UsageError

PLUGIN = Path(__file__).resolve().parents[1] / "plugins" / "esxdr-lunlist"
NAA = "600144f0a1b2c3d4e5f6071829304051"
IQN = "iqn.2024-01.com.example:core"


def test_the_built_in_stacks_are_entry_points_like_any_plugin():
    from importlib.metadata import entry_points

    eps = {ep.name: ep.value for ep in entry_points(group=targets.GROUP)}
    for stack in ("comstar", "iscsitgt", "lio", "tgt"):
        assert eps[stack] == f"esxdr.targets.{stack}"
        assert targets.backend(stack).STACK == stack
    assert set(targets.stacks()) >= {"comstar", "iscsitgt", "lio", "tgt"}


def test_an_unknown_stack_names_the_installed_ones():
    with pytest.raises(UsageError) as e:
        targets.backend("scst")
    assert "unknown target stack 'scst'" in e.value.message
    assert "tgt" in (e.value.hint or "") and "docs/plugins.md" in (e.value.hint or "")


@pytest.fixture(scope="module")
def plugin_venv(tmp_path_factory) -> Path:
    """A venv of its own, where pip installs the example plugin; this checkout's esxdr and its
    dependencies are on its path (a .pth), so nothing is downloaded and the test venv is untouched."""
    venv = tmp_path_factory.mktemp("plugin") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    site.mkdir(parents=True, exist_ok=True)
    checkout = Path(esxdr.__file__).resolve().parents[1]
    (site / "esxdr-checkout.pth").write_text(f"{checkout}\n{sysconfig.get_path('purelib')}\n")
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                        "--no-index", "--prefix", str(venv), str(PLUGIN)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert list(site.glob("esxdr_lunlist-1.0.0.dist-info")), sorted(p.name for p in site.iterdir())
    return venv


def esxdr_in(venv: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / "bin" / "python"), "-m", "esxdr", *args], capture_output=True, text=True,
                          cwd=cwd)


def test_a_plugin_stack_converts_through_the_cli(plugin_venv, tmp_path):
    inventory = tmp_path / "luns.csv"
    inventory.write_text(f"naa,target,lun,dataset,file\n{NAA},{IQN},1,sp1/iscsi/lun0,/sp1/iscsi/lun0/lun.img\n")
    r = esxdr_in(plugin_venv, "target", "convert", "--from", "lunlist", str(inventory), "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert m["source"]["stack"] == "lunlist"
    assert [(lu["naa"], lu["backing"]["path"]) for lu in m["logical_units"]] == [(NAA, "/sp1/iscsi/lun0/lun.img")]
    # into a built-in stack: the NAA is kept in tgt's own terms
    r = esxdr_in(plugin_venv, "target", "convert", "--from", "lunlist", str(inventory), "--to", "tgt", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "/sp1/iscsi/lun0/lun.img" in r.stdout and IQN in r.stdout
    # and back: a built-in stack's manifest rendered by the plugin
    conf = tmp_path / "targets.conf"
    conf.write_text(r.stdout)
    r = esxdr_in(plugin_venv, "target", "convert", "--from", "tgt", str(conf), "--to", "lunlist", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    # (targets.conf names no dataset: that column comes back empty, the identity whole)
    assert r.stdout.splitlines()[1] == f"{NAA},{IQN},1,,/sp1/iscsi/lun0/lun.img"


def test_a_broken_plugin_is_refused_by_name_without_a_traceback(plugin_venv, tmp_path):
    inventory = tmp_path / "x.csv"
    inventory.write_text("x\n")
    r = esxdr_in(plugin_venv, "target", "convert", "--from", "lunlist-broken", str(inventory), cwd=tmp_path)
    assert r.returncode == 2
    assert "target stack 'lunlist-broken' (esxdr_lunlist.broken, from esxdr-lunlist 1.0.0) is not a backend" in r.stderr
    assert "lacks render, identity_problems" in r.stderr and "Traceback" not in r.stderr
    # bad input in the plugin's own format: its message, exit 2, no traceback
    r = esxdr_in(plugin_venv, "target", "convert", "--from", "lunlist", str(inventory), cwd=tmp_path)
    assert r.returncode == 2 and "the header must be naa,target,lun,dataset,file" in r.stderr
    assert "Traceback" not in r.stderr


def test_without_the_plugin_its_stack_is_unknown(tmp_path):
    inventory = tmp_path / "luns.csv"
    inventory.write_text("naa,target,lun,dataset,file\n")
    r = subprocess.run([sys.executable, "-m", "esxdr", "target", "convert", "--from", "lunlist", str(inventory)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "'lunlist' is not one of comstar, iscsitgt, lio, tgt" in r.stderr


# --------------------------------------------------------------------------- callouts
# The callout tests' site file, its power step's post-callout a plugin's
SITE = CALLOUT_SITE.replace("@CALLOUTS@", "      power: {pre: /bin/true, post: {plugin: lunlist-note, with: {file: @NOTES@}}}")


def test_the_built_in_callout_is_an_entry_point_like_any_plugin():
    from esxdr import plugins
    from esxdr.recovery import callouts

    assert plugins.registry(callouts.GROUP)["command"].value == "esxdr.recovery.callouts:command"
    rc, text = callouts.run({"argv": ["sh", "-c", "echo $ESXDR_STEP"], "timeout": 10}, {"ESXDR_STEP": "power:1:1"})
    assert (rc, text) == (0, "power:1:1")


def test_a_plugin_callout_is_validated_planned_and_run(plugin_venv, tmp_path):
    notes = tmp_path / "notes.txt"
    site = tmp_path / "site.yaml"
    site.write_text(SITE.replace("@NOTES@", str(notes)))
    r = esxdr_in(plugin_venv, "site", "validate", "--site", str(site), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    script = f"""
import json
from esxdr.plan import runbook as rb
from esxdr.recovery import callouts
from esxdr.site import load_site
g = load_site({str(site)!r}, check_files=False).group("core")
book = rb.with_callouts(rb.Runbook(kind="test-start", group="core", steps=[rb.Step("power:1:1", "power", "t", "r", {{}})]), g)
spec = book.steps[0].params["callouts"]["post"][0]
env = {{"ESXDR_RUN": "test-start", "ESXDR_GROUP": "core", "ESXDR_STEP": "power:1:1", "ESXDR_PHASE": "post",
        "ESXDR_OUTCOME": "done"}}
print(json.dumps({{"spec": spec, "shown": rb.describe_callout(spec), "ran": callouts.run(spec, env),
                  "render": book.render()}}))
"""
    r = subprocess.run([str(plugin_venv / "bin" / "python"), "-c", script], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["spec"]["plugin"] == "lunlist-note" and out["spec"]["args"] == {"file": str(notes)}
    assert out["shown"] == f"lunlist-note(file={notes})" and f"post-callout: lunlist-note(file={notes})" in out["render"]
    assert out["ran"] == [0, f"noted in {notes}"]
    assert notes.read_text() == "run=test-start group=core step=power:1:1 phase=post outcome=done\n"


def test_a_site_naming_a_callout_plugin_that_is_not_installed_is_refused(tmp_path):
    site = tmp_path / "site.yaml"
    site.write_text(SITE.replace("@NOTES@", str(tmp_path / "n.txt")))
    r = subprocess.run([sys.executable, "-m", "esxdr", "site", "validate", "--site", str(site)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "site.yaml:16:46: protection_groups.core.callouts.power.post.plugin: no callout plugin 'lunlist-note' is installed" in r.stderr

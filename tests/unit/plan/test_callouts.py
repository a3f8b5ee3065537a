"""Pre/post callouts: read from the site file, attached to runbook steps by the pure planner,
shown by --dry-run's rendering, and the list of step kinds a callout may name kept in step
with the runbooks' step tables."""

from __future__ import annotations

import os
import textwrap
from dataclasses import replace

import pytest
from test_runbook import cleanup_inputs, group, inputs

from esxdr.errors import SiteError
from esxdr.plan import runbook as rb
from esxdr.site import load_site
from esxdr.site.model import CALLOUT_STEP_KINDS, Callout


def test_callout_step_kinds_are_the_runbooks_step_kinds():
    from esxdr.recovery.cleanup import CLEANUP_STEPS
    from esxdr.recovery.failover import FAILOVER_STEPS
    from esxdr.recovery.handoff import HANDOFF_STEPS

    assert set(CALLOUT_STEP_KINDS) == set(FAILOVER_STEPS) | set(CLEANUP_STEPS) | set(HANDOFF_STEPS)


def test_callouts_attach_by_kind_and_by_id_in_site_order():
    g = replace(group(), callouts=(
        Callout(step="power", pre=("check-dns",), post=("notify", "power")),
        Callout(step="power:2:1", post=("notify", "app tier")),
        Callout(step="rescan", pre=("only-failover",), runs=("failover",)),
    ))
    book = rb.plan_test_start(inputs(group=g))
    by_id = {s.id: s.params.get("callouts") for s in book.steps}
    assert by_id["power:1:1"] == {"pre": [{"argv": ["check-dns"], "timeout": 300, "key": "power", "line": 0}],
                                  "post": [{"argv": ["notify", "power"], "timeout": 300, "key": "power", "line": 0}]}
    assert [c["argv"] for c in by_id["power:2:1"]["post"]] == [["notify", "power"], ["notify", "app tier"]]
    assert by_id["rescan"] is None  # runs: [failover] only
    assert by_id["register"] is None
    text = book.render()
    assert "pre-callout: check-dns" in text and "post-callout: notify 'app tier' (always" in text


def test_cleanup_callouts_are_separate_from_start():
    g = replace(group(), callouts=(Callout(step="release", post=("echo", "released")),
                                   Callout(step="rescan", post=("echo", "x"), runs=("test-start",))))
    book = rb.plan_test_cleanup(cleanup_inputs(group=g, journal={"held": ["rp1/iscsi/lun0@esxdr_core_b"]}))
    by_kind = {s.kind: s.params.get("callouts") for s in book.steps}
    assert by_kind["release"]["post"][0]["argv"] == ["echo", "released"]
    assert by_kind.get("rescan") is None


def test_no_callouts_no_params():
    book = rb.plan_test_start(inputs())
    assert all("callouts" not in s.params for s in book.steps)
    assert "callout" not in book.render()


SITE = """\
version: 1
name: lab
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
    retention: "48h"
    rpo: 4h
    callouts:
@CALLOUTS@
"""


def _site(tmp_path, callouts: str, check_files: bool = True):
    p = tmp_path / "site.yaml"
    p.write_text(SITE.replace("@CALLOUTS@", textwrap.indent(textwrap.dedent(callouts), "      ")))
    return load_site(p, check_files=check_files)


def test_loader_reads_commands_runs_and_timeouts(tmp_path):
    hook = tmp_path / "hooks" / "notify.sh"
    hook.parent.mkdir()
    hook.write_text("#!/bin/sh\necho $ESXDR_STEP\n")
    hook.chmod(0o755)
    site = _site(tmp_path, """\
        power: {pre: "/usr/bin/test -e /etc/hostname", post: [./hooks/notify.sh, --tier, "app 1"], timeout: 2m}
        promote:rp1/iscsi/lun0: {post: echo promoted, runs: [failover, failback]}
        """)
    c1, c2 = site.group("core").callouts
    assert c1 == Callout(step="power", pre=("/usr/bin/test", "-e", "/etc/hostname"),
                         post=(str(hook), "--tier", "app 1"), timeout_seconds=120, line=c1.line)
    assert c2.kind == "promote" and c2.step == "promote:rp1/iscsi/lun0" and c2.runs == ("failover", "failback")


def test_loader_checks_the_program_path_with_file_checks(tmp_path):
    (tmp_path / "hooks").mkdir()
    (tmp_path / "hooks" / "noexec.sh").write_text("#!/bin/sh\n")
    os.chmod(tmp_path / "hooks" / "noexec.sh", 0o644)
    with pytest.raises(SiteError) as e:
        _site(tmp_path, "power: {pre: ./hooks/noexec.sh, post: ./hooks/missing.sh}\n")
    text = str([(p.message, p.hint) for p in e.value.problems])
    assert "noexec.sh is not an executable file" in text and "chmod +x" in text
    assert "missing.sh is not an executable file" in text
    # Without file checks the paths are only resolved (a site file checked on another machine).
    site = _site(tmp_path, "power: {pre: ./hooks/noexec.sh}\n", check_files=False)
    assert site.group("core").callouts[0].pre == (str(tmp_path / "hooks" / "noexec.sh"),)

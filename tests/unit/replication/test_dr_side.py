"""What only the DR box may do, refused anywhere else before anything connects or changes; and the
DR box's own retention schedule (`esxdr schedule render --side dr`)."""

from __future__ import annotations

import json

import pytest
from test_keys_authorized_line import _site

from esxdr.cli.main import run


def test_rollback_dr_runs_only_on_the_dr_box(tmp_path, capsys):
    # ss2 sits behind esxdr serve at a routed address: not this machine, nothing is contacted
    rc = run(["--site", str(_site(tmp_path)), "replicate", "core", "--rollback-dr"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "--rollback-dr acts on ss2 with its own privileges, and esxdr reaches it through esxdr@198.51.100.20" in err
    assert "esxdr serve may not roll back, release or destroy on DR" in err
    assert "run esxdr on ss2 itself" in err


def test_a_dry_run_of_rollback_dr_is_not_refused_for_where_it_runs(tmp_path, capsys, monkeypatch):
    """It only reads, through the key like any dry run: the DR-box rule is not what stops it here."""
    from esxdr import replication
    from esxdr.errors import UsageError

    opened: list[str] = []

    def no_connection(site, name, **kw):
        opened.append(name)
        raise UsageError("stopped before connecting")

    monkeypatch.setattr(replication.sides, "open_side", no_connection)
    rc = run(["--site", str(_site(tmp_path)), "replicate", "core", "--rollback-dr", "--dry-run"])
    err = capsys.readouterr().err
    assert rc == 2 and "stopped before connecting" in err and "with its own privileges" not in err
    assert opened  # it went on to open the sides through the site file as it is


def test_dr_side_prune_runs_only_on_the_dr_box(tmp_path, capsys):
    rc = run(["--site", str(_site(tmp_path)), "prune", "core", "--side", "dr", "--dry-run"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "esxdr prune --side dr acts on ss2 with its own privileges" in err


SCHEDULED = "    schedule: {every: 1h, timezone: Europe/Zurich}\n"


def test_dr_retention_schedule_cron(tmp_path, capsys):
    site = _site(tmp_path, extra_groups=SCHEDULED)
    assert run(["--site", str(site), "--json", "schedule", "render", "--cron", "--side", "dr"]) == 0
    files = json.loads(capsys.readouterr().out)["files"]
    assert list(files) == ["esxdr-dr"]
    text = files["esxdr-dr"]
    assert "esxdr DR retention schedule" in text and "render --cron --side dr" in text
    assert "CRON_TZ=Europe/Zurich" in text
    job = [line for line in text.splitlines() if "prune core --side dr" in line]
    assert len(job) == 1 and "core-dr-prune.log" in job[0] and " replicate " not in job[0]


def test_dr_retention_schedule_systemd(tmp_path, capsys):
    site = _site(tmp_path, extra_groups=SCHEDULED)
    assert run(["--site", str(site), "--json", "schedule", "render", "--systemd", "--side", "dr"]) == 0
    files = json.loads(capsys.readouterr().out)["files"]
    assert sorted(files) == ["esxdr-prune-dr-core.service", "esxdr-prune-dr-core.timer"]
    exec_start = [line for line in files["esxdr-prune-dr-core.service"].splitlines() if line.startswith("ExecStart=")]
    assert len(exec_start) == 1 and exec_start[0].endswith(" -q prune core --side dr")
    assert "Description=esxdr DR retention timer for core" in files["esxdr-prune-dr-core.timer"]


def test_the_replication_schedule_is_unchanged(tmp_path, capsys):
    site = _site(tmp_path, extra_groups=SCHEDULED)
    assert run(["--site", str(site), "--json", "schedule", "render", "--systemd"]) == 0
    files = json.loads(capsys.readouterr().out)["files"]
    assert sorted(files) == ["esxdr-replicate-core.service", "esxdr-replicate-core.timer"]
    assert "-q replicate core\n" in files["esxdr-replicate-core.service"]


@pytest.mark.parametrize(("side", "command", "unit", "cron_file", "log"), [
    ("snapshot", "replicate core --snapshot-only", "snapshot", "esxdr-snapshot", "core-snapshot.log"),
    ("pull", "replicate core --pull", "pull", "esxdr-pull", "core-pull.log"),
])
def test_pull_mode_schedules_each_half_where_it_runs(tmp_path, capsys, side, command, unit, cron_file, log):
    site = _site(tmp_path, extra_groups=SCHEDULED)
    assert run(["--site", str(site), "--json", "schedule", "render", "--cron", "--side", side]) == 0
    files = json.loads(capsys.readouterr().out)["files"]
    assert list(files) == [cron_file]
    job = [line for line in files[cron_file].splitlines() if f" -q {command} >>" in line]
    assert len(job) == 1 and job[0].endswith(f"/{log} 2>&1"), files[cron_file]
    assert f"render --cron --side {side}" in files[cron_file]
    assert run(["--site", str(site), "--json", "schedule", "render", "--systemd", "--side", side]) == 0
    files = json.loads(capsys.readouterr().out)["files"]
    assert sorted(files) == [f"esxdr-{unit}-core.service", f"esxdr-{unit}-core.timer"]
    assert f"-q {command}\n" in files[f"esxdr-{unit}-core.service"]

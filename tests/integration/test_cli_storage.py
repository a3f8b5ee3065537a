"""The reporting commands against real pools over real SSH: status, snapshots, noise, prune, schedule, keys."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

pytestmark = pytest.mark.integration


def test_status_snapshots_noise_prune(group_factory, tmp_path):
    g = group_factory(2, extra="    schedule: {every: 15m, timezone: Europe/Berlin}\n")
    r = g.esxdr("status")
    assert r.returncode == 5 and "never replicated" in r.stdout  # nothing on DR yet: stale, says so
    for ds in g.datasets:
        g.write(ds, 1 << 20)
    assert g.esxdr("replicate", g.name).returncode == 0
    time.sleep(1.1)
    g.write(g.datasets[0], 2 << 20, offset=1 << 20)
    assert g.esxdr("replicate", g.name, "--no-prune").returncode == 0

    prom = tmp_path / "esxdr.prom"
    r = g.esxdr("--json", "status", g.name, "--prometheus", str(prom))
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert st["ok"] and 0 <= st["rpo_seconds"] < 60 and st["last_snapshot"].startswith(f"esxdr_{g.name}_")
    assert f'esxdr_rpo_ok{{group="{g.name}"}} 1' in prom.read_text()
    # both replications fall in the same hour: DR's first snapshots are due, and DR prunes them itself
    assert st["dr_retention"]["pruned_by"] == "dr" and st["dr_retention"]["due"] == len(g.datasets)
    assert f'esxdr_dr_snapshots_due{{group="{g.name}"}} {len(g.datasets)}' in prom.read_text()
    assert "DR prunes itself" in g.esxdr("status", g.name).stdout

    r = g.esxdr("--json", "snapshots", g.name)
    rows = json.loads(r.stdout)
    assert [x["common"] for x in rows] == [x["source_snapshots"][-1] for x in rows]

    r = g.esxdr("--json", "noise", "--threshold", "1K")
    noise = {x["dataset"]: x for x in json.loads(r.stdout)}
    assert noise[g.datasets[0]]["noisy"] and "lower bound" in noise[g.datasets[0]]["measured_by"]
    assert g.esxdr("noise", "--threshold", "lots").returncode == 2

    # both snapshots fall in the same quarter hour → hourly keeps one; dry-run destroys nothing
    before = g.esxdr("--json", "snapshots", g.name).stdout
    r = g.esxdr("--json", "prune", g.name, "--dry-run")
    decisions = json.loads(r.stdout)
    doomed = [d for d in decisions if not d["keep"]]
    kept_common = [d for d in decisions if d["keep"] and any("common" in x for x in d["reasons"])]
    assert doomed and kept_common
    assert g.esxdr("--json", "snapshots", g.name).stdout == before
    r = g.esxdr("prune", g.name)
    assert r.returncode == 0, r.stderr
    after = json.loads(g.esxdr("--json", "snapshots", g.name).stdout)
    assert all(len(x["source_snapshots"]) == 1 and len(x["dr_snapshots"]) == 1 for x in after)


def test_schedule_and_keys(group_factory, tmp_path):
    g = group_factory(1, extra="    schedule: {every: 15m, timezone: Europe/Berlin}\n")
    r = g.esxdr("schedule", "render", "--cron")
    assert r.returncode == 0, r.stderr
    assert "CRON_TZ=Europe/Berlin" in r.stdout and "PATH=/usr/local/sbin" in r.stdout
    assert "*/15 * * * * root " in r.stdout and f"replicate {g.name}" in r.stdout
    # the job's own shell line works on a machine where the log directory does not exist yet
    line = next(x for x in r.stdout.splitlines() if x.startswith("*/15"))
    logs = g.state_dir / "logs"
    assert not logs.exists()
    command = line.split(" root ", 1)[1].replace(f"-q replicate {g.name}", "-q --version")
    assert subprocess.run(["sh", "-c", command]).returncode == 0
    assert (logs / f"{g.name}.log").exists()
    r = g.esxdr("schedule", "render", "--systemd", "--out", str(tmp_path / "units"))
    assert r.returncode == 0, r.stderr
    timer = (tmp_path / "units" / f"esxdr-replicate-{g.name}.timer").read_text()
    assert "OnCalendar=*-*-* *:0/15:00 Europe/Berlin" in timer
    service = (tmp_path / "units" / f"esxdr-replicate-{g.name}.service").read_text()
    assert "Environment=TZ=Europe/Berlin" in service
    assert g.esxdr("schedule", "render").returncode == 2

    # the lab's production is local: true (no address), so the line needs the address it connects from
    r = g.esxdr("keys", "authorized-line", "--sudo")
    assert r.returncode == 2 and "--from ADDRESS" in r.stderr
    r = g.esxdr("keys", "authorized-line", "--sudo", "--from", "127.0.0.1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f'restrict,from="127.0.0.1",command="esxdr serve --sudo --no-drills --allow-prefix {g.dr_pool} '
                               '--log syslog" ssh-ed25519 ')

"""The storage side of the lab for integration tests: real zfs-fuse pools and a real sshd.

One lab per test session (unique pool, account and port names, so a developer's
own `esxdr lab up` is untouched); each test gets its own protection group under
fresh datasets and its own site file.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import zfs_fuse_guard as guard
from _pytest.runner import runtestprotocol

from esxdr.lab import Lab, LabConfig, zfsfuse

_counter = itertools.count()
# every zfs call of the fixtures is bounded: a hung zfs-fuse must fail one test, not stall the run
ZFS_TIMEOUT = 120


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        # what still runs when a test fails names the command a hung daemon is stuck on
        waiting = zfsfuse.waiting_commands()
        if waiting:
            rep.sections.append(("zfs commands still running (pid, seconds, wait channel, command)",
                                 "\n".join(waiting)))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    """Run the test; if it failed on a hang that is the daemon's own, restart it and run once more.

    A hung daemon hangs every later zfs command (see tests/zfs_fuse_guard.py), so it is always
    restarted for the tests after. The test itself runs again only when nothing of esxdr's own
    sequence waited on the daemon (no mount or unmount in flight: both hangs seen in CI were an
    unmount esxdr issued); otherwise its failure stands. A rerun's first run is reported as RERUN
    with what was waiting, and named again in the summary; it must pass on its second run. A
    failure with a healthy daemon is reported as it is.
    """
    ihook = item.ihook
    ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    reports, w = _run_once(item, nextitem)
    hung = any(r.failed for r in reports) and (
        w.restarted() or guard.restart_if_hung(item, "the test runs again unless the hang is esxdr's own"))
    own = guard.esxdrs_own(item.stash.get(guard.WAITING, [])) if hung else []
    if own:
        guard._note(item, f"{item.nodeid}: not run again: the hang is esxdr's own sequence ({'; '.join(own)})")
    if hung and not own:
        item.config.stash.setdefault(guard.RERUNS, []).append(item.nodeid)
        for r in reports:
            if r.failed:
                r.outcome = "rerun"  # type: ignore[assignment]
            ihook.pytest_runtest_logreport(report=r)
        # pytest-timeout's alarm spans the whole protocol: the second run gets one of its own
        hooks = item.config.pluginmanager.hook
        if hasattr(hooks, "pytest_timeout_cancel_timer"):
            import pytest_timeout

            hooks.pytest_timeout_cancel_timer(item=item)
            hooks.pytest_timeout_set_timer(item=item, settings=pytest_timeout._get_item_settings(item))
        item._initrequest()
        _forget_failed_setups(item)
        reports, w = _run_once(item, nextitem)
        if any(r.failed for r in reports) and not w.restarted():
            guard.restart_if_hung(item, "the failure stands")  # for the tests after it
    for r in reports:
        ihook.pytest_runtest_logreport(report=r)
    ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True


def _forget_failed_setups(item) -> None:
    """A module or session fixture whose setup failed keeps its error for every later test; the
    rerun must set it up again on the restarted daemon (the drill labs are module fixtures)."""
    for defs in item._fixtureinfo.name2fixturedefs.values():
        for fd in defs:
            cached = fd.cached_result
            if cached is not None and cached[2] is not None:
                fd.finish(item._request)  # runs what its failed setup registered, then forgets it


def _run_once(item, nextitem):
    w = guard.watch(item)
    try:
        return runtestprotocol(item, nextitem=nextitem, log=False), w
    finally:
        w.cancel()


def pytest_report_teststatus(report, config):
    if report.outcome == "rerun":
        return "rerun", "R", ("RERUN", {"yellow": True})
    return None


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    notes = config.stash.get(guard.NOTES, [])
    if notes:
        terminalreporter.section("zfs-fuse restarted after a hung daemon", yellow=True)
        for n in notes:
            terminalreporter.write_line(n)
    # Always said, so a green run that needed a rerun cannot pass for a clean one.
    reruns = config.stash.get(guard.RERUNS, [])
    terminalreporter.write_line(f"zfs-fuse reruns: {len(reruns)}" + (f" ({', '.join(reruns)})" if reruns else ""),
                                yellow=bool(reruns))


@pytest.fixture(scope="session")
def storage_lab():
    tag = f"t{os.getpid() % 100000}"
    # sshd StrictModes refuses keys below a world-writable directory such as /var/tmp.
    d = tempfile.mkdtemp(prefix=f"esxdr-{tag}-", dir="/var/lib")
    os.chmod(d, 0o755)
    lab = Lab(LabConfig(dir=d, prod_pool=f"{tag}sp", dr_pool=f"{tag}rp", luns=0, account=f"esxdr-{tag}",
                        with_tgt=False, with_esxsim=False, pool_size=3 << 30))
    lab.up()
    yield lab
    lab.down()
    shutil.rmtree(d, ignore_errors=True)


class GroupFixture:
    """A protection group of N datasets with a LUN-like file each, and a site file for it."""

    def __init__(self, lab: Lab, tmp: Path, n: int, name: str, extra: str = ""):
        self.lab = lab
        self.name = name
        st = lab.state()
        self.prod_pool = st["pools"]["production"]
        self.dr_pool = st["pools"]["dr"]
        self.source_root = f"{self.prod_pool}/{name}"
        self.dr_root = f"{self.dr_pool}/{name}"
        self.mnt = Path(st["pools"]["mountpoint_root"])
        self.datasets = [f"{self.source_root}/lun{i}" for i in range(n)]
        zfs("create", self.source_root)
        for ds in self.datasets:
            zfs("create", ds)
        s = st["sshd"]
        tmp.mkdir(parents=True, exist_ok=True)
        self.site = tmp / "site.yaml"
        self.state_dir = tmp / "state"
        self.site.write_text(f"""version: 1
name: test
state_dir: {self.state_dir}
storage:
  ss1: {{role: production, local: true, zfs: auto}}
  ss2:
    role: dr
    address: {s['address']}
    port: {s['port']}
    user: {s['account']}
    key: {s['key']}
    host_key: {s['host_key']}
    serve_prefix: {self.dr_pool}
protection_groups:
  {name}:
    source: ss1
    destination: ss2
    source_root: {self.source_root}
    dr_root: {self.dr_root}
    datasets: [{', '.join(d.rsplit('/', 1)[1] for d in self.datasets)}]
    retention:
      source: {{hourly: 48, daily: 30}}
      destination: {{hourly: 48, daily: 30}}
    rpo: 1h
{extra}""")

    def lun_file(self, ds: str, side: str = "source") -> Path:
        pool_root = self.source_root if side == "source" else self.dr_root
        rel = ds.rsplit("/", 1)[1]
        pool = self.prod_pool if side == "source" else self.dr_pool
        return self.mnt / pool / pool_root.split("/", 1)[1] / rel / "lun.img"

    def write(self, ds: str, size: int, offset: int = 0) -> None:
        path = self.lun_file(ds)
        with open(path, "r+b" if path.exists() else "wb") as f:
            f.seek(offset)
            f.write(os.urandom(size))

    def esxdr(self, *args: str, env: dict | None = None, check: bool = False, timeout: float = 300):
        return subprocess.run([str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "esxdr"),
                               "--site", str(self.site), *args], capture_output=True, text=True,
                              env={**os.environ, **(env or {})}, timeout=timeout, check=check)

    def destroy(self) -> None:
        for root in (self.dr_root, self.source_root):
            for _ in range(20):
                r = subprocess.run(["zfs", "destroy", "-r", root], capture_output=True, text=True,
                                   timeout=ZFS_TIMEOUT)
                if r.returncode == 0 or "does not exist" in r.stderr:
                    break
                subprocess.run(["zfs", "unmount", "-f", root], capture_output=True, timeout=ZFS_TIMEOUT)


def zfs(*args: str) -> str:
    return subprocess.run(["zfs", *args], check=True, capture_output=True, text=True, timeout=ZFS_TIMEOUT).stdout


@pytest.fixture
def group_factory(storage_lab, tmp_path):
    made: list[GroupFixture] = []

    def make(n: int = 2, extra: str = "") -> GroupFixture:
        g = GroupFixture(storage_lab, tmp_path / f"g{len(made)}", n, f"g{os.getpid() % 1000}x{next(_counter)}", extra)
        made.append(g)
        return g

    (tmp_path).mkdir(exist_ok=True)
    yield make
    for g in made:
        g.destroy()

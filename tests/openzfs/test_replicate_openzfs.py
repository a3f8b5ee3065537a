"""Replication of zvols on real OpenZFS 2.x (the guest of scripts/openzfs-lane).

Production is the guest's pool ozprod (root over SSH), DR its pool ozdr through
the service account behind `esxdr serve` with `zfs allow` rights: no root, no sudo.
"""

from __future__ import annotations

import json
import signal
import time

import pytest

from esxdr.zfs import parse_get, parse_send_estimate

pytestmark = pytest.mark.openzfs


def assert_consistent(g) -> None:
    """Same bytes on DR, newest snapshot common and held on both sides. Production's hold is only on
    it; DR, behind esxdr serve, keeps replication's holds until the DR box prunes (the key may not
    release), so there the newest is held, among others."""
    src, dst = g.snapshots(g.source_root), g.snapshots(g.dr_root)
    for ds in g.datasets:
        assert g.sha(ds) == g.sha(ds, "dr"), ds
        s, d = src[ds], dst[g.dr(ds)]
        assert s[-1][0] == d[-1][0], (s, d)
        assert [n for n, refs in s if refs] == [s[-1][0]], s
        assert d[-1][1], d
        holds = g.lane.out(["zfs", "holds", "-H", f"{ds}@{s[-1][0]}"]).split()
        assert f"esxdr_{g.name}" in holds


def test_zvols_full_incremental_noop_through_delegated_account(group_factory, lane, dr_account):
    g = group_factory(2)
    for ds in g.datasets:
        g.write(ds, 4 << 20)
    r = g.esxdr("--json", "replicate", g.name)
    assert r.returncode == 0, r.stderr
    first = json.loads(r.stdout)
    assert all(a["kind"] == "send-full" for d in first["datasets"] for a in d["actions"])
    assert first["bytes"] >= 2 * (4 << 20)
    assert_consistent(g)
    # The replicas are zvols, read-only by inheritance, and were received by the account, not root.
    for ds in g.datasets:
        assert g.get("type", g.dr(ds)) == "volume"
        assert g.get("readonly", g.dr(ds)) == "on"
    log = lane.out("cat /var/log/esxdr-serve.log")
    assert f"receive -u -s {g.dr(g.datasets[0])}" in log

    g.write(g.datasets[1], 1 << 20, offset=1 << 20)
    r = g.esxdr("--json", "replicate", g.name)
    assert r.returncode == 0, r.stderr
    second = json.loads(r.stdout)
    kinds = {d["source"]: [a["kind"] for a in d["actions"]] for d in second["datasets"]}
    assert kinds[g.datasets[1]] == ["send-incremental"]
    assert second["bytes"] < first["bytes"] / 2
    assert_consistent(g)

    # The first run after the incremental prunes the superseded snapshot on production only (its
    # hold was released by the incremental run, which still counted it). DR is behind esxdr serve:
    # nothing there is released or destroyed through the key, the first snapshot stays, held.
    r = g.esxdr("--json", "replicate", g.name, "--no-snapshot")
    assert r.returncode == 0, r.stderr
    pruned = json.loads(r.stdout)["pruned"]
    # (production's list also names the group root's own snapshot: the atomic snapshot is recursive)
    assert {f"{ds}@{first['snapshot']}" for ds in g.datasets} <= set(pruned["ss1"]) and "ss2" not in pruned
    dst = g.snapshots(g.dr_root)
    assert all([n for n, _ in dst[g.dr(ds)]] == [first["snapshot"], second["snapshot"]] for ds in g.datasets), dst
    assert all(refs for ds in g.datasets for _, refs in dst[g.dr(ds)]), dst
    r = g.esxdr("--json", "replicate", g.name, "--no-snapshot")
    assert r.returncode == 0, r.stderr
    noop = json.loads(r.stdout)
    assert noop["bytes"] == 0
    assert noop["commands"] == {"ss1": 1, "ss2": 1}
    assert all(a["kind"] == "up-to-date" for d in noop["datasets"] for a in d["actions"])


def test_capabilities_detected_as_openzfs(group_factory):
    g = group_factory(1)
    g.write(g.datasets[0], 1 << 20)
    assert g.esxdr("replicate", g.name).returncode == 0
    for host in ("ss1", "ss2"):
        caps = json.loads((g.state_dir / "hosts" / f"{host}.json").read_text())
        assert caps["flavour"] == "openzfs"
        assert caps["resume"] and caps["written"] and caps["bookmarks"]


def test_exact_parsable_numbers(group_factory, lane):
    """`zfs get -rHp` gives exact integers (guids above 2**63 too) that parse_get keeps as they are."""
    g = group_factory(1)
    ds = g.datasets[0]
    g.write(ds, 3 << 20)
    lane.run(f"zfs snapshot {ds}@a")
    g.write(ds, 1 << 20)
    lane.run(f"zfs snapshot {ds}@b")
    g.write(ds, 2 << 20, offset=8 << 20)
    text = lane.out(["zfs", "get", "-rHp", "-o", "name,property,value",
                     "type,guid,createtxg,creation,used,referenced,written,userrefs,receive_resume_token", ds])
    obs = parse_get(text)[ds]
    human = lane.out(["zfs", "get", "-H", "-o", "value", "guid,used,written", ds]).split()
    exact = {p: lane.out(["zfs", "get", "-Hp", "-o", "value", p, ds]).strip() for p in ("guid", "used", "written")}
    assert obs.guid == int(exact["guid"]) and str(obs.guid) == exact["guid"]
    assert obs.used == int(exact["used"]) and obs.written == int(exact["written"])
    # Without -p the numbers are rounded ("3.05M"): only -p is exact.
    assert human[1] != exact["used"]
    # written since @b: the 2 MiB just written (16k volblocksize, no compression) plus the
    # indirect blocks that changed with them (a zvol's `written` counts metadata too).
    assert 2 << 20 <= obs.written <= (2 << 20) + (256 << 10)
    a, b = obs.snapshots
    assert (a.name, b.name) == ("a", "b") and a.createtxg < b.createtxg
    assert 1 << 20 <= b.written <= (1 << 20) + (256 << 10)
    assert a.written >= 3 << 20
    assert b.written == int(lane.out(["zfs", "get", "-Hp", "-o", "value", "written", f"{ds}@b"]))
    assert obs.resume_token is None
    # `send -nvP` estimate, parsed, against the real stream's length.
    est = parse_send_estimate(lane.out(["zfs", "send", "-nvP", "-i", f"{ds}@a", f"{ds}@b"]))
    real = int(lane.out(f"zfs send -i {ds}@a {ds}@b | wc -c"))
    assert est is not None and abs(est - real) <= max(64 << 10, real // 20), (est, real)


def test_cut_stream_resumes_with_token(group_factory, lane):
    """A receive cut half-way leaves a token; esxdr plans Resume and finishes with `send -t`."""
    g = group_factory(1)
    ds = g.datasets[0]
    g.write(ds, 8 << 20)
    r = g.esxdr("--json", "replicate", g.name)
    assert r.returncode == 0, r.stderr
    g.write(ds, 8 << 20, offset=16 << 20)
    snap = f"{ds}@cut1"
    lane.run(f"zfs snapshot {snap}")
    base = g.snapshots(g.source_root)[ds][-2][0]
    # Cut the stream at 3 MiB into a resumable receive (as root, the way a dropped link leaves it).
    lane.run(f"zfs send -i @{base} {snap} | head -c {3 << 20} | zfs receive -u -s {g.dr(ds)}", check=False)
    token = g.get("receive_resume_token", g.dr(ds))
    assert token not in ("", "-")
    r = g.esxdr("--json", "replicate", g.name, "--no-snapshot", "--dry-run")
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    actions = plan["datasets"][0]["actions"]
    assert actions[0]["kind"] == "resume" and actions[0]["token"] == token
    r = g.esxdr("--json", "replicate", g.name, "--no-snapshot")
    assert r.returncode == 0, r.stderr
    done = json.loads(r.stdout)
    assert [a["kind"] for a in done["datasets"][0]["actions"]] == ["resume"]
    # Only the rest of the stream travelled.
    assert 0 < done["bytes"] < (8 << 20) - (2 << 20)
    assert g.get("receive_resume_token", g.dr(ds)) == "-"
    assert g.sha(ds) == g.sha(ds, "dr")
    # The next run carries on normally from @cut1 (held then, by the next run).
    r = g.esxdr("--json", "replicate", g.name)
    assert r.returncode == 0, r.stderr
    assert_consistent(g)


def test_killed_stream_is_resumed_by_the_retry(group_factory, lane):
    """The ssh of the stream killed mid-way: the retry re-observes DR, finds the token, resumes."""
    import os
    import subprocess

    from tests.openzfs.conftest import ESXDR

    g = group_factory(1, extra="    bandwidth_limit: 4M\n")
    ds = g.datasets[0]
    g.write(ds, 24 << 20)
    proc = subprocess.Popen([ESXDR, "--site", str(g.site), "--json", "replicate", g.name],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = False
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not killed:
        time.sleep(0.5)
        out = subprocess.run(["pgrep", "-P", str(proc.pid), "-x", "ssh"], capture_output=True, text=True).stdout
        pids = out.split()
        # Two ssh children: the sender (production) and the receiver (DR); cut the receiver's
        # side once some data went through.
        if len(pids) >= 2:
            time.sleep(2.5)
            for pid in pids:
                os.kill(int(pid), signal.SIGKILL)
            killed = True
    out, err = proc.communicate(timeout=600)
    assert killed, "never saw the stream's ssh processes"
    assert proc.returncode == 0, err
    assert "retry 1/" in err
    res = json.loads(out)
    assert res["datasets"][0]["retries"] >= 1
    assert g.get("receive_resume_token", g.dr(ds)) == "-"
    assert_consistent(g)


def test_dr_writes_are_detected_by_written(group_factory, lane):
    g = group_factory(1)
    ds = g.datasets[0]
    g.write(ds, 2 << 20)
    assert g.esxdr("replicate", g.name).returncode == 0
    dr = g.dr(ds)
    assert g.get("written", dr) == "0"
    lane.run(f"zfs set readonly=off {dr} && udevadm settle && "
             f"dd if=/dev/urandom of=/dev/zvol/{dr} bs=64k count=4 conv=notrunc,fsync status=none")
    written = int(g.get("written", dr))
    assert written >= 256 << 10
    g.write(ds, 1 << 20)
    r = g.esxdr("--json", "replicate", g.name)
    assert r.returncode == 3, r.stderr
    err = json.loads(r.stdout)
    assert err["kind"] == "modified"
    # The planner saw it from `written` before any stream (not from receive's error).
    assert err["evidence"]["written"] == written
    assert dr in r.stderr and "--rollback-dr" in r.stderr and "on the DR box" in r.stderr
    # DR is behind esxdr serve and this is not the DR box (127.0.0.1 is a port forwarded to the
    # guest): the rollback is refused here, before anything changes, and not tried through the key.
    r = g.esxdr("replicate", g.name, "--rollback-dr")
    assert r.returncode == 2, r.stderr
    assert "--rollback-dr acts on ss2 with its own privileges" in r.stderr
    assert int(g.get("written", dr)) == written
    # On the DR box, with its own privileges (here: root on the guest), the writes are discarded;
    # then replication through the key goes on.
    lane.run(f"zfs rollback {dr}@{g.snapshots(g.dr_root)[dr][-1][0]} && zfs set readonly=on {dr}")
    r = g.esxdr("--json", "replicate", g.name)
    assert r.returncode == 0, r.stderr
    assert g.sha(ds) == g.sha(ds, "dr")


def test_noise_measured_by_written(group_factory, lane):
    g = group_factory(2)
    quiet, noisy = g.datasets
    for i in range(3):
        g.write(noisy, 8 << 20, offset=(i % 2) * (8 << 20))
        g.write(quiet, 1 << 16)
        lane.run(f"zfs snapshot -r {g.source_root}@n{i}")
    # 8 MiB per snapshot, snapshots within the hour: counted over the minimum span of one hour,
    # that is ~384 MiB/day for the noisy one, ~3 MiB/day for the quiet one.
    r = g.esxdr("--json", "noise", g.name, "--threshold", "100M")
    assert r.returncode == 0, r.stderr
    rows = {row["dataset"]: row for row in json.loads(r.stdout)}
    assert rows[noisy]["measured_by"] == "written"
    assert rows[noisy]["noisy"] and not rows[quiet]["noisy"]
    # Exactly the two later snapshots' `written` (-p numbers), over one hour.
    per_snap = [int(g.get("written", f"{noisy}@n{i}")) for i in (1, 2)]
    assert rows[noisy]["bytes_per_day"] == int(sum(per_snap) * 24)
    assert all(8 << 20 <= w <= (8 << 20) + (256 << 10) for w in per_snap), per_snap


def test_holds_protect_the_common_snapshot_from_pruning(group_factory, lane):
    g = group_factory(1, extra="")
    ds = g.datasets[0]
    for i in range(3):
        g.write(ds, 1 << 20, offset=i << 20)
        r = g.esxdr("replicate", g.name)
        assert r.returncode == 0, r.stderr
        time.sleep(1.1)
    assert_consistent(g)
    newest = g.snapshots(g.source_root)[ds][-1][0]
    # A held snapshot cannot be destroyed, even by root: the hold is a real OpenZFS user hold.
    r = lane.run(f"zfs destroy {ds}@{newest}", check=False)
    assert r.returncode != 0 and "dataset is busy" in r.stderr
    r = lane.run(f"zfs destroy {g.dr(ds)}@{newest}", check=False)
    assert r.returncode != 0


def test_delegation_not_root(group_factory, lane, dr_account):
    """The DR account holds `zfs allow` rights on ozdr and nothing on ozprod; serve confines it further."""
    g = group_factory(1)
    g.write(g.datasets[0], 1 << 20)
    assert g.esxdr("replicate", g.name).returncode == 0
    allowed = lane.out("zfs allow ozdr")
    assert dr_account["user"] in allowed and "receive" in allowed
    assert dr_account["user"] not in lane.out("zfs allow ozprod")
    assert lane.run("command -v sudo", check=False).returncode != 0  # there is no sudo to fall back on
    assert lane.out(f"id -u {dr_account['user']}").strip() != "0"
    # Through the forced command: allowed verbs under the prefix work...
    r = lane.run(["zfs", "get", "-Hp", "-o", "value", "written", g.dr(g.datasets[0])], user=dr_account["user"],
                 key=dr_account["key"], check=False)
    assert r.returncode == 0 and r.stdout.strip() == "0"
    # ...anything else is refused by serve (126), and a whole-replica destroy even by zfs itself.
    r = lane.run(["zfs", "destroy", "-r", g.dr_root], user=dr_account["user"], key=dr_account["key"], check=False)
    assert r.returncode == 126 and "refused" in r.stderr
    r = lane.run(["zfs", "get", "-Hp", "name", g.source_root], user=dr_account["user"], key=dr_account["key"],
                 check=False)
    assert r.returncode == 126
    r = lane.run("id", user=dr_account["user"], key=dr_account["key"], check=False)
    assert r.returncode == 126


def test_the_documented_delegation_alone_is_enough(group_factory, lane, tmp_path):
    """A DR account with exactly the rights `esxdr keys authorized-line` prints, on the prefix only
    (no destroy, rollback or release): full, incremental and no-op replications all succeed, since
    nothing is released or destroyed on DR through the key; DR keeps every snapshot, held."""
    from esxdr.cli.keys import DR_DELEGATION
    from esxdr.lab.openzfs import keygen

    user, prefix = "esxdr-narrow", "ozdr/narrow"
    keys = tmp_path / "narrow-key"
    keys.mkdir(mode=0o700)
    pub = keygen(keys / "id_ed25519", "esxdr@narrow")
    lane.run(f"zfs create -p {prefix}")
    lane.dr_account(user, prefix, pub, permissions=",".join(DR_DELEGATION), on=prefix)
    # (`zfs allow` also lists what other accounts hold on the pool above: only this user's line counts)
    granted = [line for line in lane.out(f"zfs allow {prefix}").splitlines() if f"user {user} " in line]
    assert granted and not any(w in granted[0] for w in ("destroy", "release", "rollback")), granted
    g = group_factory(2)
    old_root = g.dr_root
    g.dr_root = f"{prefix}/{g.name}"
    site = g.site.read_text().replace(f"dr_root: {old_root}", f"dr_root: {g.dr_root}")
    site = site.replace("user: esxdr-dr", f"user: {user}").replace(f"serve_prefix: {old_root.split('/')[0]}\n",
                                                                    f"serve_prefix: {prefix}\n")
    key_line = next(line for line in site.splitlines() if line.strip().startswith("key:") and "drkey" in line)
    site = site.replace(key_line, key_line.split("key:")[0] + f"key: {keys / 'id_ed25519'}")
    g.site.write_text(site)
    try:
        snaps = []
        for i in range(2):
            for ds in g.datasets:
                g.write(ds, 1 << 20, offset=i << 20)
            r = g.esxdr("--json", "replicate", g.name)
            assert r.returncode == 0, r.stderr
            snaps.append(json.loads(r.stdout)["snapshot"])
            assert_consistent(g)
        r = g.esxdr("--json", "replicate", g.name, "--no-snapshot")
        assert r.returncode == 0, r.stderr
        assert "ss2" not in json.loads(r.stdout)["pruned"]
        dst = g.snapshots(g.dr_root)
        assert all([(n, refs > 0) for n, refs in dst[g.dr(ds)]] == [(s, True) for s in snaps] for ds in g.datasets), dst
        log = lane.out("cat /var/log/esxdr-serve.log")
        assert "REFUSED" not in "".join(line for line in log.splitlines() if g.name in line)
    finally:
        lane.run(f"zfs destroy -r {g.dr_root}; zfs unallow -u {user} {prefix}; true", check=False)

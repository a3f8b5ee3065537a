"""bookmarks: true on real OpenZFS: the newest common snapshot is bookmarked on the source, and
when production's copy of it is destroyed the next run sends `-i ds#bookmark` instead of stopping
with "no common snapshot".
"""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.openzfs


def bookmarks(lane, ds: str) -> list[tuple[str, int]]:
    out = lane.out(["zfs", "list", "-Hp", "-t", "bookmark", "-o", "name,guid", "-s", "createtxg", ds], check=False)
    return [(n.split("#", 1)[1], int(g)) for n, g in (line.split("\t") for line in out.splitlines() if line)]


def test_bookmark_is_the_incremental_base_when_the_common_snapshot_is_gone(group_factory, lane):
    g = group_factory(1, extra="    bookmarks: true\n")
    ds = g.datasets[0]
    g.write(ds, 4 << 20)
    r = g.esxdr("--json", "replicate", g.name)
    assert r.returncode == 0, r.stderr
    first = json.loads(r.stdout)
    assert [a["kind"] for a in first["datasets"][0]["actions"]] == ["send-full"]
    # The new common snapshot is bookmarked on the source, under the snapshot's name and guid.
    snap1 = first["snapshot"]
    assert bookmarks(lane, ds) == [(snap1, int(g.get("guid", f"{ds}@{snap1}")))]

    g.write(ds, 1 << 20, offset=1 << 20)
    r = g.esxdr("--json", "replicate", g.name)
    assert r.returncode == 0, r.stderr
    snap2 = json.loads(r.stdout)["snapshot"]
    # Only the newest common one is kept: the older esxdr bookmark went with its snapshot's role.
    assert [n for n, _ in bookmarks(lane, ds)] == [snap2]

    # Production's own retention (another tool, an admin) destroys the common snapshot.
    lane.run(f"zfs release esxdr_{g.name} {ds}@{snap2}; zfs destroy {ds}@{snap1},{snap2}")
    assert snap2 not in [s for s, _ in g.snapshots(g.source_root).get(ds, [])]
    g.write(ds, 1 << 20, offset=8 << 20)

    # Without the option the same state is "no common snapshot" (exit 3, nothing sent)...
    plain = g.site.read_text().replace("    bookmarks: true\n", "")
    g.site.write_text(plain)
    r = g.esxdr("--json", "replicate", g.name, "--dry-run")
    assert r.returncode == 3, r.stderr
    assert json.loads(r.stdout)["kind"] == "no-common"
    g.site.write_text(plain + "    bookmarks: true\n")

    # ...with it, the plan starts from the bookmark.
    r = g.esxdr("--json", "replicate", g.name, "--dry-run")
    assert r.returncode == 0, r.stderr
    planned = json.loads(r.stdout)["datasets"][0]["actions"]
    assert planned[0]["kind"] == "send-incremental" and planned[0]["base"] == f"{ds}#{snap2}"
    assert planned[0]["intermediate"] is False
    r = g.esxdr("--json", "replicate", g.name)
    assert r.returncode == 0, r.stderr
    third = json.loads(r.stdout)
    actions = third["datasets"][0]["actions"]
    assert [(a["kind"], a["base"]) for a in actions] == [("send-incremental", f"{ds}#{snap2}")]
    assert actions[0]["target"] == f"{ds}@{third['snapshot']}"
    # An incremental's bytes (about the 1 MiB written), not a new full copy of the 4+ MiB zvol.
    assert 1 << 20 <= third["bytes"] < 3 << 20, third["bytes"]
    assert g.sha(ds) == g.sha(ds, "dr")
    assert [n for n, _ in bookmarks(lane, ds)] == [third["snapshot"]]
    # DR kept its history: the snapshot the bookmark stood for is still there, under the new one.
    dr_snaps = [s for s, _ in g.snapshots(g.dr_root)[g.dr(ds)]]
    assert dr_snaps[-2:] == [snap2, third["snapshot"]]
    held = [s for s, refs in g.snapshots(g.source_root)[ds] if refs]
    assert held == [third["snapshot"]]


def test_serve_lets_the_dr_account_bookmark_only_its_own(group_factory, lane, dr_account):
    """For failback (DR is then the source): `zfs bookmark`/bookmark destroy through serve, esxdr names only."""
    g = group_factory(1)
    g.write(g.datasets[0], 1 << 20)
    r = g.esxdr("--json", "replicate", g.name)
    assert r.returncode == 0, r.stderr
    snap = json.loads(r.stdout)["snapshot"]
    dr = g.dr(g.datasets[0])
    as_dr = {"user": dr_account["user"], "key": dr_account["key"], "check": False}
    r = lane.run(["zfs", "bookmark", f"{dr}@{snap}", f"{dr}#{snap}"], **as_dr)
    assert r.returncode == 0, r.stderr  # serve allows it, and the delegation includes `bookmark`
    assert [n for n, _ in bookmarks(lane, dr)] == [snap]
    r = lane.run(["zfs", "bookmark", f"{dr}@{snap}", f"{dr}#mine"], **as_dr)
    assert r.returncode == 126 and "not esxdr's" in r.stderr
    r = lane.run(["zfs", "destroy", f"{dr}#{snap}"], **as_dr)
    assert r.returncode == 0, r.stderr
    assert bookmarks(lane, dr) == []

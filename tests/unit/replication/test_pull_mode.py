"""Pull mode's checks before anything runs: which site a pull needs, what it says it did, and
when its stream is compressed. (The pull itself runs on the lab: tests/integration/test_pull.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_keys_authorized_line import HOST_KEY, _dr_view_site

from esxdr.errors import UsageError
from esxdr.replication import GroupResult, Side, pull_site, summary_text
from esxdr.replication.engine import pick_compression
from esxdr.site import load_site


def _site(tmp_path: Path, ss1: str, ss2: str = "    local: true\n"):
    return load_site(_dr_view_site(tmp_path, dr=ss2, production=ss1), check_files=False)


REMOTE = f"    address: 192.0.2.10\n    user: esxdr-src\n    key: /k\n    host_key: {HOST_KEY}\n"


def test_a_pull_reads_production_through_its_send_only_account(tmp_path):
    site = _site(tmp_path, REMOTE + "    serve_prefix: sp1/iscsi\n")
    assert pull_site(site, site.protection_groups["core"]) is site  # DR is this box already


@pytest.mark.parametrize(("ss1", "why"), [
    ("    local: true\n", "storage.ss1 is local: true here"),
    (REMOTE, "storage.ss1 is not behind esxdr serve (no serve_prefix)"),
])
def test_a_pull_refuses_a_production_it_does_not_reach_send_only(tmp_path, ss1, why):
    site = _site(tmp_path, ss1)
    with pytest.raises(UsageError) as e:
        pull_site(site, site.protection_groups["core"])
    assert why in e.value.message and "--pull reads ss1 through its send-only account" in e.value.message
    assert "esxdr keys authorized-line GROUP --pull" in (e.value.hint or "")


def test_a_source_root_outside_productions_serve_prefix_is_a_site_error(tmp_path):
    from esxdr.errors import SiteError

    with pytest.raises(SiteError) as e:
        _site(tmp_path, REMOTE + "    serve_prefix: sp1/other\n")
    assert "protection_groups.core.source_root: sp1/iscsi is outside ss1's serve_prefix sp1/other" in str(e.value)


def test_a_pull_runs_on_the_dr_box(tmp_path):
    dr = f"    address: 198.51.100.20\n    user: esxdr\n    key: /k\n    host_key: {HOST_KEY}\n    serve_prefix: rp1\n"
    site = _site(tmp_path, REMOTE + "    serve_prefix: sp1/iscsi\n", dr)
    with pytest.raises(UsageError) as e:
        pull_site(site, site.protection_groups["core"])
    assert "--pull acts on ss2 with its own privileges" in e.value.message
    assert "local: true" in (e.value.hint or "")


def test_what_each_mode_says():
    took = GroupResult(group="core", snapshot="esxdr_core_20261203T120000Z", dry_run=False, mode="snapshot-only",
                       manifest="abc", pruned={"ss1": ["sp1/iscsi/lun0@old"]})
    assert summary_text(took).splitlines() == [
        "core: took @esxdr_core_20261203T120000Z, target manifest published; DR pulls it "
        "(esxdr replicate core --pull on the DR box)",
        "core: pruned 1 snapshot(s) on ss1"]
    pulled = GroupResult(group="core", snapshot="esxdr_core_20261203T120000Z", dry_run=False, mode="pull")
    assert summary_text(pulled).startswith("core: pulled 0 of 0 datasets to @esxdr_core_20261203T120000Z")
    assert GroupResult(group="core", snapshot=None, dry_run=True, mode="pull").to_dict()["mode"] == "pull"


class _Caps:
    compressors = ("zstd",)


def _side(name: str, local: bool, address: str | None) -> Side:
    return Side(name=name, transport=None, zfs=None, caps=_Caps(), local=local, address=address)  # type: ignore[arg-type]


class _Group:
    compression = "auto"


@pytest.mark.parametrize(("src", "dst", "expected"), [
    (_side("ss1", True, None), _side("ss2", False, "198.51.100.20"), "zstd"),   # push over the network
    (_side("ss1", False, "192.0.2.10"), _side("ss2", True, None), "zstd"),      # pull over the network
    (_side("ss1", False, "127.0.0.1"), _side("ss2", True, None), None),         # the lab's pull: loopback
    (_side("ss1", True, None), _side("ss2", True, None), None),
])
def test_auto_compression_follows_the_network_in_either_direction(src, dst, expected):
    assert pick_compression(_Group(), src, dst) == expected


def _production_view(tmp_path: Path, ss2: str) -> Path:
    """Production's own site file in pull mode: ss1 local, ss2 as given."""
    return _dr_view_site(tmp_path, dr=ss2, production="    local: true\n")


def test_productions_site_names_a_dr_that_pulls_without_any_key_to_it(tmp_path):
    site = load_site(_production_view(tmp_path, "    pulls: true\n"), check_files=False)
    dr = site.storage["ss2"]
    assert dr.pulls and dr.key is None and dr.user is None and dr.address is None


@pytest.mark.parametrize(("ss2", "message"), [
    ("    pulls: true\n    user: esxdr\n", "storage.ss2.user: a DR server that pulls is never reached from here: "
                                            "production holds no user for it"),
    ("    pulls: true\n    key: /k\n", "storage.ss2.key: a DR server that pulls is never reached from here"),
    (f"    pulls: true\n    host_key: {HOST_KEY}\n", "production holds no host key for it"),
    ("    pulls: true\n    local: true\n", "storage.ss2.pulls: pulls: true is for a DR server in production's site"),
])
def test_a_dr_that_pulls_is_given_no_key(tmp_path, ss2, message):
    from esxdr.errors import SiteError

    with pytest.raises(SiteError) as e:
        load_site(_production_view(tmp_path, ss2), check_files=False)
    assert message in str(e.value)


def test_production_never_connects_to_a_dr_that_pulls(tmp_path, capsys):
    from esxdr.cli.main import run

    site = _production_view(tmp_path, "    pulls: true\n")
    for args in (["replicate", "core"], ["status", "core"], ["prune", "core", "--dry-run"]):
        assert run(["--site", str(site), *args]) == 2, args
        err = capsys.readouterr().err
        assert "ss2 pulls from production (pulls: true): esxdr on this box holds no key to it" in err, args
        assert "esxdr replicate GROUP --snapshot-only" in err and "Traceback" not in err

"""Drill clones mount where ZFS would put them, decided on DR: the DR root has mountpoint=none
(no receive ever mounts a replica), and the replication key cannot choose a mount path."""

from __future__ import annotations

import os
import stat

import pytest

from esxdr.serve import Refused, check_clone_mountpoint, natural_mountpoint, parse

PREFIX = ["rp1/iscsi"]
CLONE = "rp1/iscsi/esxdr-test-core/lun0"


@pytest.mark.parametrize(("dataset", "pool_mp", "expected"), [
    (CLONE, "/rp1", "/rp1/iscsi/esxdr-test-core/lun0"),
    (CLONE, "/srv/lab/mnt/rp1/", "/srv/lab/mnt/rp1/iscsi/esxdr-test-core/lun0"),
    (CLONE, "none", "/rp1/iscsi/esxdr-test-core/lun0"),      # a pool that mounts nowhere: ZFS's default
    (CLONE, "legacy", "/rp1/iscsi/esxdr-test-core/lun0"),
    ("rp1", "/mnt/rp1", "/mnt/rp1"),
])
def test_natural_mountpoint(dataset, pool_mp, expected):
    assert natural_mountpoint(dataset, pool_mp) == expected


def test_parse_accepts_a_clone_mountpoint_under_its_own_path():
    argv = parse(f"zfs clone -o mountpoint=/srv/mnt/rp1/iscsi/esxdr-test-core/lun0 rp1/iscsi/lun0@a {CLONE}",
                 PREFIX)
    assert argv == [["zfs", "clone", "-o", "mountpoint=/srv/mnt/rp1/iscsi/esxdr-test-core/lun0",
                     "rp1/iscsi/lun0@a", CLONE]]


@pytest.mark.parametrize("mp", ["/etc", "/etc/iscsi/esxdr-test-core/lun1", "/x/../etc/iscsi/esxdr-test-core/lun0",
                                "/x//iscsi/esxdr-test-core/lun0", "relative/iscsi/esxdr-test-core/lun0"])
def test_parse_refuses_any_other_clone_mountpoint(mp):
    with pytest.raises(Refused):
        parse(f"zfs clone -o mountpoint={mp} rp1/iscsi/lun0@a {CLONE}", PREFIX)


@pytest.mark.parametrize("command", ["zfs set mountpoint=/etc rp1/iscsi/lun0",
                                     "zfs set mountpoint=/rp1/iscsi/esxdr-test-core/lun0 " + CLONE,
                                     "zfs create -o mountpoint=/etc rp1/iscsi/x"])
def test_only_mountpoint_none_is_set_or_created(command):
    with pytest.raises(Refused):
        parse(command, PREFIX)


@pytest.mark.parametrize("command", ["zfs set mountpoint=none rp1/iscsi",
                                     "zfs create -p -o mountpoint=none rp1/iscsi"])
def test_mountpoint_none_is_allowed(command):
    assert parse(command, PREFIX) == [command.split()]


def test_the_pool_mountpoint_may_be_read_but_nothing_else_outside_the_prefix():
    assert parse("zfs get -H -o value mountpoint rp1", PREFIX) == [["zfs", "get", "-H", "-o", "value",
                                                                   "mountpoint", "rp1"]]
    for other in ("zfs get -H -o value mountpoint sp1", "zfs get -H -o value mountpoint,sharenfs rp1",
                  "zfs get -H -o value readonly rp1"):
        with pytest.raises(Refused):
            parse(other, PREFIX)


@pytest.fixture
def fake_zfs(tmp_path):
    """A zfs that answers `get mountpoint <pool>` as a pool mounted at /srv/mnt/rp1."""
    z = tmp_path / "zfs"
    z.write_text("#!/bin/sh\necho /srv/mnt/rp1\n")
    z.chmod(z.stat().st_mode | stat.S_IEXEC)
    return [os.fspath(z)]


def test_main_checks_the_path_against_the_pools_mountpoint(fake_zfs):
    good = parse(f"zfs clone -o mountpoint=/srv/mnt/rp1/iscsi/esxdr-test-core/lun0 rp1/iscsi/lun0@a {CLONE}", PREFIX)
    check_clone_mountpoint(good, fake_zfs)  # where ZFS would mount it: accepted
    elsewhere = parse(f"zfs clone -o mountpoint=/var/www/iscsi/esxdr-test-core/lun0 rp1/iscsi/lun0@a {CLONE}", PREFIX)
    with pytest.raises(Refused, match="only '/srv/mnt/rp1/iscsi/esxdr-test-core/lun0'"):
        check_clone_mountpoint(elsewhere, fake_zfs)

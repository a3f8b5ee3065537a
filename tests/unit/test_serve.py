"""`esxdr serve`: the DR account's forced command allows only esxdr's zfs operations under a prefix."""

from __future__ import annotations

import pytest

from esxdr.serve import Refused, main, parse

PREFIX = ["rp1/iscsi"]

ALLOWED = [
    "zfs get -rHp -o name,property,value type,guid,createtxg rp1/iscsi",
    "zfs receive rp1/iscsi/lun0",
    "zfs receive -u -s rp1/iscsi/lun0",
    "zfs receive -F rp1/iscsi/lun0",
    "zstd -dc | zfs receive rp1/iscsi/lun0",
    "zstd -dc | mbuffer -q -s 128k -m 128M | zfs receive -u rp1/iscsi/lun0",
    "zfs send -I rp1/iscsi/lun0@a rp1/iscsi/lun0@b",
    "zfs send rp1/iscsi/lun0@b | zstd -c -1 -q",
    "zfs send -t 1-e604ea4bf-e0",
    "zfs hold esxdr_core rp1/iscsi/lun0@a rp1/iscsi/lun1@a",
    "zfs release esxdr_core rp1/iscsi/lun0@a",
    "zfs destroy rp1/iscsi/lun0@a",
    "zfs destroy rp1/iscsi/lun0@a,b,c",
    "zfs rollback -r rp1/iscsi/lun0@a",
    "zfs set readonly=on canmount=noauto rp1/iscsi/lun0",
    "zfs set esxdr:consistency=application rp1/iscsi/lun0@a rp1/iscsi/lun1@a",
    "zfs unmount rp1/iscsi/lun0",
    "zfs create -p rp1/iscsi",
    "zfs create -p -o readonly=on rp1/iscsi",
    "zfs version",
    "esxdr-capabilities",
    "zfs clone rp1/iscsi/lun0@a rp1/iscsi/esxdr-test-core/lun0",
    "zfs clone -o readonly=off rp1/iscsi/lun0@a rp1/iscsi/esxdr-test-core/lun0",
    "zfs destroy rp1/iscsi/esxdr-test-core/lun0",
    "zfs mount rp1/iscsi/esxdr-test-core/lun0",
    "zfs set readonly=off canmount=on rp1/iscsi/esxdr-test-core/lun0",
    # bookmarks (bookmarks: true; DR is the source of a failback)
    "zfs bookmark rp1/iscsi/lun0@esxdr_core_20260101T000000Z rp1/iscsi/lun0#esxdr_core_20260101T000000Z",
    "zfs destroy rp1/iscsi/lun0#esxdr_core_20260101T000000Z",
    "zfs send -i rp1/iscsi/lun0#esxdr_core_a rp1/iscsi/lun0@esxdr_core_b",
    "zfs send -nvP -i rp1/iscsi/lun0#esxdr_core_a rp1/iscsi/lun0@esxdr_core_b",
]

HOSTILE = [
    "",                                                   # interactive login
    "sh",                                                 # a shell
    "bash -c 'zfs list'",                                 # other binaries
    "/bin/rm -rf /",
    "zfs get -rHp -o name,property,value guid rp1",       # above the prefix
    "zfs get -rHp -o name,property,value guid rp1/iscsi2",  # prefix as a string, not a path
    "zfs receive rp1/other/lun0",                         # other datasets
    "zfs receive rp1/iscsi/../../sp1",                    # path tricks
    "zfs destroy rp1/iscsi/lun0",                         # whole datasets are never destroyed
    "zfs destroy -r rp1/iscsi@a",                         # recursive destroy
    "zfs destroy sp1/iscsi/lun0@a",                       # outside prefix
    "zfs receive rp1/iscsi/lun0; rm -rf /",               # metacharacters
    "zfs receive rp1/iscsi/lun0 && reboot",
    "zfs receive $(reboot)",
    "zfs receive `reboot`",
    "zfs receive rp1/iscsi/lun0 > /etc/passwd",
    "zfs set mountpoint=/etc rp1/iscsi/lun0",             # dangerous property
    "zfs set sharenfs=on rp1/iscsi/lun0",
    "zfs set esxdr:x=1 rp1/iscsi/lun0 mountpoint=/etc",       # a property after the datasets
    "zfs set esxdr:x=1 rp1/iscsi/lun0 sp1/iscsi/lun0",        # one target outside the prefix
    "zfs allow everyone destroy rp1/iscsi",               # delegation changes
    "zfs rename rp1/iscsi/lun0 rp1/iscsi/x",              # verbs esxdr does not use
    "zfs promote rp1/iscsi/lun0",
    "zpool destroy rp1",
    "zfs get -rHp -o all guid rp1/iscsi",                 # unexpected output columns
    "zfs hold mytag rp1/iscsi/lun0@a",                    # foreign hold tags
    "cat | zfs receive rp1/iscsi/lun0",                   # pipelines of other programs
    "zstd -dc -o /etc/passwd | zfs receive rp1/iscsi/lun0",
    "zfs send rp1/iscsi/lun0@a | zfs receive rp1/iscsi/x",  # two zfs commands
    "zfs receive rp1/iscsi/lun0 | zstd -c",               # pipes out of a receive
    "zfs send -R rp1/iscsi@a",                            # replication streams of everything
    "zfs 'receive' 'rp1/iscsi/lun0\nx'",
    "zfs clone rp1/iscsi/lun0@a rp1/iscsi/lun9",              # clones only under esxdr-test
    "zfs clone rp1/iscsi/lun0@a sp1/esxdr-test/lun0",         # or outside the prefix
    "zfs clone -o mountpoint=/etc rp1/iscsi/lun0@a rp1/iscsi/esxdr-test/x",
    "zfs destroy -r rp1/iscsi/esxdr-test-core",
    "zfs create -p -o mountpoint=/etc rp1/iscsi/x",                # no recursive destroy, even of clones
    "zfs bookmark sp1/lun0@a sp1/lun0#esxdr_a",                     # bookmarks outside the prefix
    "zfs bookmark rp1/iscsi/lun0@a rp1/iscsi/lun1#esxdr_a",         # into another dataset
    "zfs bookmark rp1/iscsi/lun0@a rp1/iscsi/lun0#mine",            # a name that is not esxdr's
    "zfs bookmark rp1/iscsi/lun0@a",                                # missing the bookmark
    "zfs destroy rp1/iscsi/lun0#someone_elses",                     # another tool's bookmark
    "zfs destroy sp1/lun0#esxdr_a",                                 # outside the prefix
    "zfs destroy -r rp1/iscsi/lun0#esxdr_a",
    "zfs send -i sp1/lun0#esxdr_a rp1/iscsi/lun0@b",                # a base outside the prefix
    # replicas are taken live only by failover, on the DR box itself
    "zfs set readonly=off rp1/iscsi/lun0",
    "zfs set canmount=on rp1/iscsi/lun0",
    "zfs set readonly=off rp1/iscsi/esxdr-test-core/lun0 rp1/iscsi/lun0",
    "zfs mount rp1/iscsi/lun0",
]


@pytest.mark.parametrize("command", ALLOWED)
def test_allowed(command):
    parse(command, PREFIX)


@pytest.mark.parametrize("command", HOSTILE)
def test_hostile_commands_are_refused(command):
    with pytest.raises(Refused):
        parse(command, PREFIX)


def test_corpus_is_large_enough():
    assert len(HOSTILE) >= 20


def test_refusal_exits_126_and_is_logged(monkeypatch, tmp_path, capsys):
    log = tmp_path / "serve.log"
    monkeypatch.setenv("SSH_ORIGINAL_COMMAND", "zfs destroy rp1/iscsi/lun0")
    assert main(["--allow-prefix", "rp1/iscsi", "--log", str(log)]) == 126
    assert "refused" in capsys.readouterr().err
    assert "REFUSED 'zfs destroy rp1/iscsi/lun0'" in log.read_text()


def test_prefix_is_required(capsys):
    assert main([]) == 2
    assert main(["--allow-prefix", "rp1@x"]) == 2

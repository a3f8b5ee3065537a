"""`esxdr serve`: the DR account's forced command allows only esxdr's zfs operations under a prefix."""

from __future__ import annotations

import pytest

from esxdr.serve import Refused, main, parse

PREFIX = ["rp1/iscsi"]

# Each allowed command with the exact pipeline parse() hands to main(): one argv per stage, the zfs
# stage still starting with "zfs" (main() swaps in `sudo -n zfs` when asked). Written out by hand: a
# parse() that reorders, drops or adds an argument must fail here, not just one that raises.
ALLOWED = [
    ("zfs get -rHp -o name,property,value type,guid,createtxg rp1/iscsi",
     [["zfs", "get", "-rHp", "-o", "name,property,value", "type,guid,createtxg", "rp1/iscsi"]]),
    ("zfs receive rp1/iscsi/lun0",
     [["zfs", "receive", "rp1/iscsi/lun0"]]),
    ("zfs receive -u -s rp1/iscsi/lun0",
     [["zfs", "receive", "-u", "-s", "rp1/iscsi/lun0"]]),
    ("zfs receive -F rp1/iscsi/lun0",
     [["zfs", "receive", "-F", "rp1/iscsi/lun0"]]),
    ("zstd -dc | zfs receive rp1/iscsi/lun0",
     [["zstd", "-dc"], ["zfs", "receive", "rp1/iscsi/lun0"]]),
    ("zstd -dc | mbuffer -q -s 128k -m 128M | zfs receive -u rp1/iscsi/lun0",
     [["zstd", "-dc"], ["mbuffer", "-q", "-s", "128k", "-m", "128M"], ["zfs", "receive", "-u", "rp1/iscsi/lun0"]]),
    ("zfs send -I rp1/iscsi/lun0@a rp1/iscsi/lun0@b",
     [["zfs", "send", "-I", "rp1/iscsi/lun0@a", "rp1/iscsi/lun0@b"]]),
    ("zfs send rp1/iscsi/lun0@b | zstd -c -1 -q",
     [["zfs", "send", "rp1/iscsi/lun0@b"], ["zstd", "-c", "-1", "-q"]]),
    ("zfs send -t 1-e604ea4bf-e0",
     [["zfs", "send", "-t", "1-e604ea4bf-e0"]]),
    ("zfs hold esxdr_core rp1/iscsi/lun0@a rp1/iscsi/lun1@a",
     [["zfs", "hold", "esxdr_core", "rp1/iscsi/lun0@a", "rp1/iscsi/lun1@a"]]),
    ("zfs release esxdr_core rp1/iscsi/lun0@a",
     [["zfs", "release", "esxdr_core", "rp1/iscsi/lun0@a"]]),
    ("zfs destroy rp1/iscsi/lun0@a",
     [["zfs", "destroy", "rp1/iscsi/lun0@a"]]),
    ("zfs destroy rp1/iscsi/lun0@a,b,c",
     [["zfs", "destroy", "rp1/iscsi/lun0@a,b,c"]]),
    ("zfs rollback -r rp1/iscsi/lun0@a",
     [["zfs", "rollback", "-r", "rp1/iscsi/lun0@a"]]),
    ("zfs set readonly=on canmount=noauto rp1/iscsi/lun0",
     [["zfs", "set", "readonly=on", "canmount=noauto", "rp1/iscsi/lun0"]]),
    ("zfs set esxdr:consistency=application rp1/iscsi/lun0@a rp1/iscsi/lun1@a",
     [["zfs", "set", "esxdr:consistency=application", "rp1/iscsi/lun0@a", "rp1/iscsi/lun1@a"]]),
    ("zfs unmount rp1/iscsi/lun0",
     [["zfs", "unmount", "rp1/iscsi/lun0"]]),
    ("zfs create -p rp1/iscsi",
     [["zfs", "create", "-p", "rp1/iscsi"]]),
    ("zfs create -p -o readonly=on rp1/iscsi",
     [["zfs", "create", "-p", "-o", "readonly=on", "rp1/iscsi"]]),
    ("zfs version",
     [["zfs", "version"]]),
    # the one built-in: main() answers it itself, nothing is executed
    ("esxdr-capabilities",
     "capabilities"),
    ("zfs clone rp1/iscsi/lun0@a rp1/iscsi/esxdr-test-core/lun0",
     [["zfs", "clone", "rp1/iscsi/lun0@a", "rp1/iscsi/esxdr-test-core/lun0"]]),
    ("zfs clone -o readonly=off rp1/iscsi/lun0@a rp1/iscsi/esxdr-test-core/lun0",
     [["zfs", "clone", "-o", "readonly=off", "rp1/iscsi/lun0@a", "rp1/iscsi/esxdr-test-core/lun0"]]),
    ("zfs destroy rp1/iscsi/esxdr-test-core/lun0",
     [["zfs", "destroy", "rp1/iscsi/esxdr-test-core/lun0"]]),
    ("zfs mount rp1/iscsi/esxdr-test-core/lun0",
     [["zfs", "mount", "rp1/iscsi/esxdr-test-core/lun0"]]),
    ("zfs set readonly=off canmount=on rp1/iscsi/esxdr-test-core/lun0",
     [["zfs", "set", "readonly=off", "canmount=on", "rp1/iscsi/esxdr-test-core/lun0"]]),
    # bookmarks (bookmarks: true; DR is the source of a failback)
    ("zfs bookmark rp1/iscsi/lun0@esxdr_core_20260101T000000Z rp1/iscsi/lun0#esxdr_core_20260101T000000Z",
     [["zfs", "bookmark", "rp1/iscsi/lun0@esxdr_core_20260101T000000Z",
       "rp1/iscsi/lun0#esxdr_core_20260101T000000Z"]]),
    ("zfs destroy rp1/iscsi/lun0#esxdr_core_20260101T000000Z",
     [["zfs", "destroy", "rp1/iscsi/lun0#esxdr_core_20260101T000000Z"]]),
    ("zfs send -i rp1/iscsi/lun0#esxdr_core_a rp1/iscsi/lun0@esxdr_core_b",
     [["zfs", "send", "-i", "rp1/iscsi/lun0#esxdr_core_a", "rp1/iscsi/lun0@esxdr_core_b"]]),
    ("zfs send -nvP -i rp1/iscsi/lun0#esxdr_core_a rp1/iscsi/lun0@esxdr_core_b",
     [["zfs", "send", "-nvP", "-i", "rp1/iscsi/lun0#esxdr_core_a", "rp1/iscsi/lun0@esxdr_core_b"]]),
]

# Each hostile command with what the refusal must say: the rule that stops it, so a command refused
# for some other, accidental reason (and let through once that accident is fixed) is noticed.
HOSTILE = [
    # interactive login
    ("", "no command (interactive logins are not allowed)"),
    # a shell, other binaries
    ("sh", "exactly one zfs command is allowed"),
    ("bash -c 'zfs list'", "exactly one zfs command is allowed"),
    ("/bin/rm -rf /", "exactly one zfs command is allowed"),
    # above the prefix; the prefix as a string, not a path
    ("zfs get -rHp -o name,property,value guid rp1",
     "dataset 'rp1' is not under the allowed prefix rp1/iscsi"),
    ("zfs get -rHp -o name,property,value guid rp1/iscsi2",
     "dataset 'rp1/iscsi2' is not under the allowed prefix rp1/iscsi"),
    # other datasets; path tricks
    ("zfs receive rp1/other/lun0", "dataset 'rp1/other/lun0' is not under the allowed prefix rp1/iscsi"),
    ("zfs receive rp1/iscsi/../../sp1", "dataset 'rp1/iscsi/../../sp1' is not under the allowed prefix rp1/iscsi"),
    # whole datasets are never destroyed; no recursive destroy; nothing outside the prefix
    ("zfs destroy rp1/iscsi/lun0", "'rp1/iscsi/lun0' is not a snapshot"),
    ("zfs destroy -r rp1/iscsi@a", "flag -r is not allowed here"),
    ("zfs destroy sp1/iscsi/lun0@a", "dataset 'sp1/iscsi/lun0@a' is not under the allowed prefix rp1/iscsi"),
    # shell metacharacters
    ("zfs receive rp1/iscsi/lun0; rm -rf /", "shell metacharacters are not allowed"),
    ("zfs receive rp1/iscsi/lun0 && reboot", "shell metacharacters are not allowed"),
    ("zfs receive $(reboot)", "shell metacharacters are not allowed"),
    ("zfs receive `reboot`", "shell metacharacters are not allowed"),
    ("zfs receive rp1/iscsi/lun0 > /etc/passwd", "shell metacharacters are not allowed"),
    # dangerous properties, also hidden after the datasets, and one target outside the prefix
    ("zfs set mountpoint=/etc rp1/iscsi/lun0", "setting 'mountpoint=/etc' is not allowed"),
    ("zfs set sharenfs=on rp1/iscsi/lun0", "setting 'sharenfs=on' is not allowed"),
    ("zfs set esxdr:x=1 rp1/iscsi/lun0 mountpoint=/etc", "setting 'mountpoint=/etc' is not allowed"),
    ("zfs set esxdr:x=1 rp1/iscsi/lun0 sp1/iscsi/lun0",
     "dataset 'sp1/iscsi/lun0' is not under the allowed prefix rp1/iscsi"),
    # delegation changes; verbs esxdr does not use; zpool
    ("zfs allow everyone destroy rp1/iscsi", "zfs allow is not allowed"),
    ("zfs rename rp1/iscsi/lun0 rp1/iscsi/x", "zfs rename is not allowed"),
    ("zfs promote rp1/iscsi/lun0", "zfs promote is not allowed"),
    ("zpool destroy rp1", "exactly one zfs command is allowed"),
    # unexpected output columns; foreign hold tags
    ("zfs get -rHp -o all guid rp1/iscsi", "get -o takes only name,property,value or value"),
    ("zfs hold mytag rp1/iscsi/lun0@a", "hold takes an esxdr tag and snapshots"),
    # pipelines of other programs, or other arguments to the allowed ones
    ("cat | zfs receive rp1/iscsi/lun0", "program 'cat' is not allowed"),
    ("zstd -dc -o /etc/passwd | zfs receive rp1/iscsi/lun0", "argument '-o' is not allowed for zstd"),
    # two zfs commands; pipes out of a receive
    ("zfs send rp1/iscsi/lun0@a | zfs receive rp1/iscsi/x", "exactly one zfs command is allowed"),
    ("zfs receive rp1/iscsi/lun0 | zstd -c", "pipelines are only allowed into zfs receive or out of zfs send"),
    # replication streams of everything
    ("zfs send -R rp1/iscsi@a", "flag -R is not allowed for send"),
    # a newline inside quotes (a real newline in this string, not backslash-n)
    ("zfs 'receive' 'rp1/iscsi/lun0\nx'", "shell metacharacters are not allowed"),
    # clones only under esxdr-test, inside the prefix, mounted only where ZFS would put them
    ("zfs clone rp1/iscsi/lun0@a rp1/iscsi/lun9",
     "clones must be made under an esxdr-test dataset, not 'rp1/iscsi/lun9'"),
    ("zfs clone rp1/iscsi/lun0@a sp1/esxdr-test/lun0",
     "dataset 'sp1/esxdr-test/lun0' is not under the allowed prefix rp1/iscsi"),
    ("zfs clone -o mountpoint=/etc rp1/iscsi/lun0@a rp1/iscsi/esxdr-test/x",
     "mountpoint '/etc' is not where ZFS would mount 'rp1/iscsi/esxdr-test/x'"),
    # no recursive destroy, even of clones
    ("zfs destroy -r rp1/iscsi/esxdr-test-core", "flag -r is not allowed here"),
    # create sets only esxdr's properties
    ("zfs create -p -o mountpoint=/etc rp1/iscsi/x", "-o takes only readonly, canmount or esxdr: properties"),
    # bookmarks outside the prefix, into another dataset, not named like esxdr's, or missing
    ("zfs bookmark sp1/lun0@a sp1/lun0#esxdr_a", "dataset 'sp1/lun0@a' is not under the allowed prefix rp1/iscsi"),
    ("zfs bookmark rp1/iscsi/lun0@a rp1/iscsi/lun1#esxdr_a", "a bookmark must be made in its snapshot's dataset"),
    ("zfs bookmark rp1/iscsi/lun0@a rp1/iscsi/lun0#mine",
     "bookmark 'rp1/iscsi/lun0#mine' is not esxdr's (its name must start with esxdr)"),
    ("zfs bookmark rp1/iscsi/lun0@a", "bookmark takes a snapshot and a bookmark"),
    # another tool's bookmark; outside the prefix; recursive
    ("zfs destroy rp1/iscsi/lun0#someone_elses",
     "bookmark 'rp1/iscsi/lun0#someone_elses' is not esxdr's (its name must start with esxdr)"),
    ("zfs destroy sp1/lun0#esxdr_a", "bookmark 'sp1/lun0#esxdr_a' is not under the allowed prefix rp1/iscsi"),
    ("zfs destroy -r rp1/iscsi/lun0#esxdr_a", "flag -r is not allowed here"),
    # an incremental base outside the prefix
    ("zfs send -i sp1/lun0#esxdr_a rp1/iscsi/lun0@b",
     "bookmark 'sp1/lun0#esxdr_a' is not under the allowed prefix rp1/iscsi"),
    # replicas are taken live only by failover, on the DR box itself
    ("zfs set readonly=off rp1/iscsi/lun0",
     "readonly=off only on drill clones (esxdr-test…), not on 'rp1/iscsi/lun0'"),
    ("zfs set canmount=on rp1/iscsi/lun0",
     "canmount=on only on drill clones (esxdr-test…), not on 'rp1/iscsi/lun0'"),
    ("zfs set readonly=off rp1/iscsi/esxdr-test-core/lun0 rp1/iscsi/lun0",
     "readonly=off only on drill clones (esxdr-test…), not on 'rp1/iscsi/lun0'"),
    ("zfs mount rp1/iscsi/lun0", "only drill clones (esxdr-test…) are mounted, not 'rp1/iscsi/lun0'"),
]


def _id(command: str) -> str:
    return command or "<empty>"


@pytest.mark.parametrize(("command", "expected"), ALLOWED, ids=[_id(c) for c, _ in ALLOWED])
def test_allowed(command: str, expected: list[list[str]] | str) -> None:
    assert parse(command, PREFIX) == expected


@pytest.mark.parametrize(("command", "reason"), HOSTILE, ids=[_id(c) for c, _ in HOSTILE])
def test_hostile_commands_are_refused(command: str, reason: str) -> None:
    with pytest.raises(Refused) as refused:
        parse(command, PREFIX)
    assert reason in str(refused.value)


def test_refusal_exits_126_and_is_logged(monkeypatch, tmp_path, capsys):
    log = tmp_path / "serve.log"
    monkeypatch.setenv("SSH_ORIGINAL_COMMAND", "zfs destroy rp1/iscsi/lun0")
    assert main(["--allow-prefix", "rp1/iscsi", "--log", str(log)]) == 126
    assert "refused" in capsys.readouterr().err
    assert "REFUSED 'zfs destroy rp1/iscsi/lun0'" in log.read_text()


def test_prefix_is_required(capsys):
    assert main([]) == 2
    assert main(["--allow-prefix", "rp1@x"]) == 2

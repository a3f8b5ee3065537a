"""`esxdr serve`: the DR account's forced command allows only esxdr's zfs operations under a prefix."""

from __future__ import annotations

import pytest
from resume_tokens import TOKEN_P1_FULL, TOKEN_P1_INCREMENTAL, TOKEN_RPOOL_RAW

from esxdr.serve import Refused, main, parse

PREFIX = ["rp1/iscsi"]


# Each allowed command with the exact pipeline parse() hands to main(): one argv per stage, the zfs
# stage still starting with "zfs" (main() swaps in `sudo -n zfs` when asked). Written out by hand: a
# parse() that reorders, drops or adds an argument must fail here, not just one that raises.
ALLOWED = [
    ("zfs get -rHp -o name,property,value type,guid,createtxg rp1/iscsi",
     [["zfs", "get", "-rHp", "-o", "name,property,value", "type,guid,createtxg", "rp1/iscsi"]]),
    # the quick no-op's targeted read (replication/quick.py): datasets and snapshots, no descent
    ("zfs get -Hp -o name,property,value guid,snapshots_changed,written,receive_resume_token,readonly "
     "rp1/iscsi/lun0 rp1/iscsi/lun0@esxdr_core_1",
     [["zfs", "get", "-Hp", "-o", "name,property,value", "guid,snapshots_changed,written,receive_resume_token,readonly",
       "rp1/iscsi/lun0", "rp1/iscsi/lun0@esxdr_core_1"]]),
    ("zfs receive rp1/iscsi/lun0",
     [["zfs", "receive", "rp1/iscsi/lun0"]]),
    ("zfs receive -u -s rp1/iscsi/lun0",
     [["zfs", "receive", "-u", "-s", "rp1/iscsi/lun0"]]),
    # -F passes parse(); main() lets it through only for an incremental from the newest snapshot
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
    ("zfs hold esxdr_core rp1/iscsi/lun0@a rp1/iscsi/lun1@a",
     [["zfs", "hold", "esxdr_core", "rp1/iscsi/lun0@a", "rp1/iscsi/lun1@a"]]),
    # a drill's own hold (esxdr-test-<group>) is released at its clean-up
    ("zfs release esxdr-test-core rp1/iscsi/lun0@a",
     [["zfs", "release", "esxdr-test-core", "rp1/iscsi/lun0@a"]]),
    ("zfs set readonly=on canmount=noauto rp1/iscsi/lun0",
     [["zfs", "set", "readonly=on", "canmount=noauto", "rp1/iscsi/lun0"]]),
    ("zfs set esxdr:consistency=application rp1/iscsi/lun0@a rp1/iscsi/lun1@a",
     [["zfs", "set", "esxdr:consistency=application", "rp1/iscsi/lun0@a", "rp1/iscsi/lun1@a"]]),
    ("zfs unmount rp1/iscsi/lun0",
     [["zfs", "unmount", "rp1/iscsi/lun0"]]),
    # a drill's clean-up forces the unmount of its own clones (recovery._destroy, after 3 tries)
    ("zfs unmount -f rp1/iscsi/esxdr-test-core/lun0",
     [["zfs", "unmount", "-f", "rp1/iscsi/esxdr-test-core/lun0"]]),
    # mbuffer up to the 256M bound (esxdr itself asks for 128M)
    ("mbuffer -q -s 128k -m 256M | zfs receive -u rp1/iscsi/lun0",
     [["mbuffer", "-q", "-s", "128k", "-m", "256M"], ["zfs", "receive", "-u", "rp1/iscsi/lun0"]]),
    ("mbuffer -m 268435456 | zfs receive -u rp1/iscsi/lun0",
     [["mbuffer", "-m", "268435456"], ["zfs", "receive", "-u", "rp1/iscsi/lun0"]]),
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
    # nothing on DR is destroyed, released or rolled back through this key but drills' own things
    ("zfs destroy rp1/iscsi/lun0", "zfs destroy of 'rp1/iscsi/lun0' is not allowed"),
    ("zfs destroy -r rp1/iscsi@a", "flag -r is not allowed here"),
    ("zfs destroy -d rp1/iscsi/lun0@a,b,c", "flag -d is not allowed here"),
    ("zfs destroy rp1/iscsi/lun0@a", "zfs destroy of 'rp1/iscsi/lun0@a' is not allowed"),
    ("zfs destroy rp1/iscsi/lun0@a,b,c", "zfs destroy of 'rp1/iscsi/lun0@a,b,c' is not allowed"),
    ("zfs destroy rp1/iscsi/lun0@esxdr_core_20260101T000000Z", "is not allowed: only drill clones"),
    ("zfs destroy rp1/iscsi/esxdr-test-core@a", "zfs destroy of 'rp1/iscsi/esxdr-test-core@a' is not allowed"),
    ("zfs destroy sp1/iscsi/lun0@a", "zfs destroy of 'sp1/iscsi/lun0@a' is not allowed"),
    ("zfs release esxdr_core rp1/iscsi/lun0@a", "release of 'esxdr_core' is not allowed"),
    ("zfs release esxdr_core rp1/iscsi/lun0@a rp1/iscsi/lun1@a", "release of 'esxdr_core' is not allowed"),
    ("zfs release esxdr rp1/iscsi/lun0@a", "release of 'esxdr' is not allowed"),
    ("zfs release -r esxdr-test-core rp1/iscsi@a", "flag -r is not allowed here"),
    ("zfs release other-tag rp1/iscsi/lun0@a", "release takes an esxdr tag and snapshots"),
    ("zfs rollback -r rp1/iscsi/lun0@a", "zfs rollback is not allowed"),
    # nor added: a DR-only snapshot would stop the next replication as diverged
    ("zfs snapshot rp1/iscsi/lun0@evil", "zfs snapshot is not allowed through this key"),
    ("zfs snapshot -r rp1/iscsi@evil", "zfs snapshot is not allowed through this key"),
    ("zfs rollback rp1/iscsi/lun0@a", "zfs rollback is not allowed"),
    ("zfs rollback -rRf rp1/iscsi/lun0@a", "zfs rollback is not allowed"),
    # a resume token is read: it must be a real token, naming a snapshot under the prefix
    ("zfs send -t 1-e604ea4bf-e0", "not a version-1 resume token"),
    ("zfs send -t deadbeef", "not a version-1 resume token"),
    (f"zfs send -t {TOKEN_P1_FULL}", "dataset 'p1/test with space@b' is not under the allowed prefix rp1/iscsi"),
    (f"zfs send -t {TOKEN_RPOOL_RAW}",
     "dataset 'rpool/home/cs@manual_20190808_091825_UTC' is not under the allowed prefix rp1/iscsi"),
    # the zrepl suite's corrupted token: its tail changed, the checksum no longer matches
    ("zfs send -t 1-bf31b879a-b8-789c636064000310a500c4ec50360710e72765a5269740f80cd8e4d3d28a534b18e00024cf8624"
     "9f5459925acc802a8facbf243fbd3433858161f5ddb9ab1ae7c7466a20c97382e5f312735319180af2f3730cf58166953824c2cc"
     "0200cd12345", "the resume token is corrupt"),
    (f"zfs send -t {TOKEN_P1_FULL} rp1/iscsi/lun0@a", "send -t takes one resume token"),
    ("zfs send -t", "send -t takes one resume token"),
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
    # a forced unmount pulls a replica out from under tgtd (a failed-over LUN): drill clones only,
    # however the flag is spelled
    ("zfs unmount -f rp1/iscsi/lun0", "unmount -f only on drill clones (esxdr-test…), not on 'rp1/iscsi/lun0'"),
    ("zfs unmount -f rp1/iscsi", "unmount -f only on drill clones (esxdr-test…), not on 'rp1/iscsi'"),
    ("zfs unmount -ff rp1/iscsi/lun0", "unmount -f only on drill clones (esxdr-test…), not on 'rp1/iscsi/lun0'"),
    ("zfs unmount -f -f rp1/iscsi/lun0", "unmount -f only on drill clones (esxdr-test…), not on 'rp1/iscsi/lun0'"),
    ("zfs umount -f rp1/iscsi/lun0", "zfs umount is not allowed"),
    ("zfs unmount -a", "flag -a is not allowed here"),
    ("zfs unmount -f rp1/iscsi/esxdr-test-core/lun0 rp1/iscsi/lun0", "unmount takes one dataset"),
    # aborting a resumable receive deletes its partial state; esxdr never asks for it
    ("zfs receive -A rp1/iscsi/lun0", "flag -A is not allowed here"),
    ("zfs receive -sA rp1/iscsi/lun0", "flag -A is not allowed here"),
    ("zfs recv -u -A rp1/iscsi/lun0", "flag -A is not allowed here"),
    ("zstd -dc | zfs receive -A rp1/iscsi/lun0", "flag -A is not allowed here"),
    # mbuffer: one per pipeline, at most 256M of the DR box's memory, sizes only in plain units
    ("mbuffer -q -s 128k -m 1G | zfs receive -u rp1/iscsi/lun0",
     "mbuffer memory 1G is over the 256M this account may use"),
    ("mbuffer -m 1G | mbuffer -m 1G | zfs receive -u rp1/iscsi/lun0", "each program may appear once in a pipeline"),
    ("mbuffer -m 128M | mbuffer -m 128M | zfs receive -u rp1/iscsi/lun0",
     "each program may appear once in a pipeline"),
    ("mbuffer -m 257M | zfs receive -u rp1/iscsi/lun0", "mbuffer memory 257M is over the 256M this account may use"),
    ("mbuffer -m 262145k | zfs receive -u rp1/iscsi/lun0",
     "mbuffer memory 262145k is over the 256M this account may use"),
    ("mbuffer -m 268435457 | zfs receive -u rp1/iscsi/lun0",
     "mbuffer memory 268435457 is over the 256M this account may use"),
    ("mbuffer -m 1T | zfs receive -u rp1/iscsi/lun0", "mbuffer memory 1T is over the 256M this account may use"),
    ("mbuffer -m 90% | zfs receive -u rp1/iscsi/lun0", "mbuffer memory '90%' is not a size (bytes, k, M or G)"),
    ("mbuffer -m 0.5G | zfs receive -u rp1/iscsi/lun0", "mbuffer memory '0.5G' is not a size (bytes, k, M or G)"),
    ("mbuffer -m 0128M | zfs receive -u rp1/iscsi/lun0", "mbuffer memory '0128M' is not a size (bytes, k, M or G)"),
    ("mbuffer -m 99999999999M | zfs receive -u rp1/iscsi/lun0",
     "mbuffer memory '99999999999M' is not a size (bytes, k, M or G)"),
    ("mbuffer -m 128M -m 128M | zfs receive -u rp1/iscsi/lun0", "argument '-m' is given twice to mbuffer"),
    ("mbuffer -m | zfs receive -u rp1/iscsi/lun0", "mbuffer -m needs a size"),
    ("mbuffer -s 16M | zfs receive -u rp1/iscsi/lun0", "mbuffer block size 16M is over the 1M this account may use"),
    ("mbuffer -o /etc/passwd | zfs receive -u rp1/iscsi/lun0", "argument '-o' is not allowed for mbuffer"),
    ("mbuffer -q 1G | zfs receive -u rp1/iscsi/lun0", "argument '1G' is not allowed for mbuffer"),
    ("mbuffer -m 128M -t | zfs receive -u rp1/iscsi/lun0", "argument '-t' is not allowed for mbuffer"),
    ("mbuffer -m128M | zfs receive -u rp1/iscsi/lun0", "argument '-m128M' is not allowed for mbuffer"),
    ("zstd -dc | zstd -dc | zfs receive -u rp1/iscsi/lun0", "each program may appear once in a pipeline"),
]


def _id(command: str) -> str:
    return command or "<empty>"


@pytest.fixture(autouse=True)
def _nothing_runs(monkeypatch):
    """A command main() wrongly accepts fails its test here, instead of exec'ing zfs in pytest's place."""
    import os
    import subprocess

    def run(*args, **kwargs):
        raise AssertionError(f"serve would have run {args!r}")

    monkeypatch.setattr(os, "execvp", run)
    monkeypatch.setattr(subprocess, "Popen", run)


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


def test_refusal_goes_to_syslog_at_warning(monkeypatch, capsys):
    import syslog

    said: list[tuple[int, str]] = []
    opened: list[tuple] = []
    monkeypatch.setattr(syslog, "openlog", lambda *a: opened.append(a))
    monkeypatch.setattr(syslog, "syslog", lambda prio, msg: said.append((prio, msg)))
    monkeypatch.setattr(syslog, "closelog", lambda: None)
    monkeypatch.setenv("SSH_CLIENT", "192.0.2.7 50000 22")
    monkeypatch.setenv("SSH_ORIGINAL_COMMAND", "zfs unmount -f rp1/iscsi/lun0")
    assert main(["--allow-prefix", "rp1/iscsi", "--log", "syslog"]) == 126
    assert opened == [("esxdr-serve", syslog.LOG_PID, syslog.LOG_AUTH)]
    assert said == [(syslog.LOG_WARNING, "from 192.0.2.7: REFUSED 'zfs unmount -f rp1/iscsi/lun0': "
                                         "unmount -f only on drill clones (esxdr-test…), not on 'rp1/iscsi/lun0'")]
    assert "refused" in capsys.readouterr().err


def test_file_and_syslog_together(monkeypatch, tmp_path):
    import syslog

    said: list[str] = []
    monkeypatch.setattr(syslog, "openlog", lambda *a: None)
    monkeypatch.setattr(syslog, "syslog", lambda prio, msg: said.append(msg))
    monkeypatch.setattr(syslog, "closelog", lambda: None)
    log = tmp_path / "serve.log"
    monkeypatch.setenv("SSH_ORIGINAL_COMMAND", "zfs receive -A rp1/iscsi/lun0")
    assert main(["--allow-prefix", "rp1/iscsi", "--log", str(log), "--log", "syslog"]) == 126
    assert len(said) == 1 and "REFUSED 'zfs receive -A rp1/iscsi/lun0'" in said[0]
    assert "REFUSED 'zfs receive -A rp1/iscsi/lun0': flag -A is not allowed here" in log.read_text()


def test_a_newline_in_the_request_cannot_forge_a_log_line(monkeypatch, tmp_path, capsys):
    log = tmp_path / "serve.log"
    monkeypatch.setenv("SSH_ORIGINAL_COMMAND", "zfs version\n2026-01-01T00:00:00Z esxdr-serve[1] from -: run 'zfs x'")
    assert main(["--allow-prefix", "rp1/iscsi", "--log", str(log)]) == 126
    lines = log.read_text().splitlines()
    assert len(lines) == 1 and "REFUSED \"zfs version\\n2026-01-01" in lines[0]


@pytest.mark.parametrize("dest", ["serve.log", "", "./serve.log", "SYSLOG"])
def test_log_must_be_absolute_or_syslog(monkeypatch, capsys, dest):
    monkeypatch.setenv("SSH_ORIGINAL_COMMAND", "zfs version")
    assert main(["--allow-prefix", "rp1/iscsi", "--log", dest]) == 2
    assert f"--log takes an absolute file or 'syslog', not {dest!r}" in capsys.readouterr().err


def test_log_without_a_value_is_a_usage_error(monkeypatch, capsys):
    monkeypatch.setenv("SSH_ORIGINAL_COMMAND", "zfs version")
    assert main(["--allow-prefix", "rp1/iscsi", "--log"]) == 2
    assert "--log takes an absolute file or 'syslog', not ''" in capsys.readouterr().err


@pytest.mark.parametrize(("token", "expected"), [
    (TOKEN_P1_FULL, {"toguid": 0xAE88E6B9ACA2D4D6, "toname": "p1/test with space@b"}),
    (TOKEN_P1_INCREMENTAL, {"toguid": 0xAE88E6B9ACA2D4D6, "fromguid": 0x4AEC265DF1E3DB0F,
                            "toname": "p1/test with space@b"}),
    (TOKEN_RPOOL_RAW, {"toguid": 0x95D6358451844F3C, "toname": "rpool/home/cs@manual_20190808_091825_UTC"}),
])
def test_real_resume_tokens_decode_as_zfs_decodes_them(token, expected):
    from esxdr.sendstream import decode_token

    fields = decode_token(token)
    assert {k: fields.get(k) for k in expected} == expected
    assert ("fromguid" in fields) == ("fromguid" in expected)


def test_a_token_under_the_prefix_is_accepted_by_parse():
    assert parse(f"zfs send -t {TOKEN_RPOOL_RAW}", ["rpool/home"]) == [["zfs", "send", "-t", TOKEN_RPOOL_RAW]]
    # a name with a space is no dataset esxdr replicates: refused like any other odd name
    with pytest.raises(Refused, match="is not under the allowed prefix"):
        parse(f"zfs send -t {TOKEN_P1_FULL}", ["p1"])


# --send-only: production's forced command in pull mode (DR pulls). What DR's pull runs, with the
# exact pipeline, and what a leaked DR key could try on production, each with the rule that stops it.
SOURCE = ["sp1/iscsi"]
SEND_ONLY_ALLOWED = [
    ("zfs get -rHp -o name,property,value type,guid,createtxg sp1/iscsi",
     [["zfs", "get", "-rHp", "-o", "name,property,value", "type,guid,createtxg", "sp1/iscsi"]]),
    ("zfs get -Hp -o name,property,value guid,snapshots_changed sp1/iscsi/lun0 sp1/iscsi/lun0@b",
     [["zfs", "get", "-Hp", "-o", "name,property,value", "guid,snapshots_changed", "sp1/iscsi/lun0",
       "sp1/iscsi/lun0@b"]]),
    ("zfs send -I sp1/iscsi/lun0@a sp1/iscsi/lun0@b",
     [["zfs", "send", "-I", "sp1/iscsi/lun0@a", "sp1/iscsi/lun0@b"]]),
    ("zfs send -w -i sp1/iscsi/lun0#esxdr_core_a sp1/iscsi/lun0@b | zstd -c -1 -q",
     [["zfs", "send", "-w", "-i", "sp1/iscsi/lun0#esxdr_core_a", "sp1/iscsi/lun0@b"], ["zstd", "-c", "-1", "-q"]]),
    ("zfs hold esxdr_core sp1/iscsi/lun0@b sp1/iscsi/lun1@b",
     [["zfs", "hold", "esxdr_core", "sp1/iscsi/lun0@b", "sp1/iscsi/lun1@b"]]),
    ("zfs release esxdr_core sp1/iscsi/lun0@a",
     [["zfs", "release", "esxdr_core", "sp1/iscsi/lun0@a"]]),
    ("esxdr-capabilities", "capabilities"),
]
SEND_ONLY_HOSTILE = [
    ("zfs receive -F sp1/iscsi/lun0", "zfs receive: this key only reads and sends"),
    ("zstd -dc | zfs receive -u sp1/iscsi/lun0", "zfs receive: this key only reads and sends"),
    ("zfs snapshot -r sp1/iscsi@x", "zfs snapshot: this key only reads and sends"),
    ("zfs destroy sp1/iscsi/lun0@a", "zfs destroy: this key only reads and sends"),
    ("zfs destroy -r sp1/iscsi", "zfs destroy: this key only reads and sends"),
    ("zfs destroy sp1/iscsi/esxdr-test-core", "zfs destroy: this key only reads and sends"),
    ("zfs destroy sp1/iscsi/lun0#esxdr_core_a", "zfs destroy: this key only reads and sends"),
    ("zfs bookmark sp1/iscsi/lun0@b sp1/iscsi/lun0#esxdr_core_b", "zfs bookmark: this key only reads and sends"),
    ("zfs rollback -r sp1/iscsi/lun0@a", "zfs rollback: this key only reads and sends"),
    ("zfs set readonly=on sp1/iscsi/lun0", "zfs set: this key only reads and sends"),
    ("zfs set esxdr:manifest.0=x sp1/iscsi", "zfs set: this key only reads and sends"),
    ("zfs clone sp1/iscsi/lun0@a sp1/iscsi/esxdr-test-core/lun0", "zfs clone: this key only reads and sends"),
    ("zfs mount sp1/iscsi/esxdr-test-core/lun0", "zfs mount: this key only reads and sends"),
    ("zfs unmount -f sp1/iscsi/lun0", "zfs unmount: this key only reads and sends"),
    ("zfs create sp1/iscsi/x", "zfs create: this key only reads and sends"),
    ("zfs inherit mountpoint sp1/iscsi", "zfs inherit: this key only reads and sends"),
    ("zfs release esxdr-test-core sp1/iscsi/lun0@a", "only esxdr's replication tag (esxdr_<group>)"),
    ("zfs hold keep sp1/iscsi/lun0@a", "only esxdr's replication tag (esxdr_<group>)"),
    ("zfs release esxdr sp1/iscsi/lun0@a", "only esxdr's replication tag (esxdr_<group>)"),
    ("zfs hold -r esxdr_core sp1/iscsi@a", "flag -r is not allowed"),
    ("zfs release esxdr_core rp1/iscsi/lun0@a", "not under the allowed prefix"),
    ("zfs send -R sp1/iscsi@a", "flag -R is not allowed for send"),
    ("zfs send sp2/secret@a", "not under the allowed prefix"),
    ("zfs send sp1/iscsi/../../sp2/secret@a", ".."),
]


@pytest.mark.parametrize(("command", "expected"), SEND_ONLY_ALLOWED, ids=[_id(c) for c, _ in SEND_ONLY_ALLOWED])
def test_send_only_allows_what_a_pull_runs(command: str, expected: list[list[str]] | str) -> None:
    assert parse(command, SOURCE, send_only=True) == expected


@pytest.mark.parametrize(("command", "reason"), SEND_ONLY_HOSTILE, ids=[_id(c) for c, _ in SEND_ONLY_HOSTILE])
def test_send_only_refuses_what_writes_removes_or_rewinds(command: str, reason: str) -> None:
    with pytest.raises(Refused) as refused:
        parse(command, SOURCE, send_only=True)
    assert reason in str(refused.value)


def test_send_only_refusal_exits_126_through_main(monkeypatch, tmp_path, capsys):
    log = tmp_path / "serve.log"
    monkeypatch.setenv("SSH_ORIGINAL_COMMAND", "zfs snapshot -r sp1/iscsi@evil")
    assert main(["--send-only", "--allow-prefix", "sp1/iscsi", "--log", str(log)]) == 126
    assert "refused: zfs snapshot: this key only reads and sends" in capsys.readouterr().err
    assert "REFUSED 'zfs snapshot -r sp1/iscsi@evil'" in log.read_text()

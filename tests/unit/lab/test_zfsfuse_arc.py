"""The ARC ceiling the lab gives zfs-fuse: Debian's 100 MiB hangs the daemon at a few hundred
filesystems (see zfsfuse.arc_max_mib), so the lab asks for more, in proportion to the machine."""

from __future__ import annotations

from esxdr.lab import zfsfuse


def test_a_quarter_of_ram_within_bounds():
    gib = 1024 * 1024  # KiB
    assert zfsfuse.arc_max_mib(2 * gib) == 512
    assert zfsfuse.arc_max_mib(24 * gib) == 2048  # capped: the lab's pools are small
    assert zfsfuse.arc_max_mib(256 * 1024) == 100  # never below Debian's default


def test_the_daemon_is_started_with_it_on_its_command_line():
    # the command line wins over /etc/zfs/zfsrc's max-arc-size
    argv = zfsfuse.daemon_argv()
    assert argv[:3] == ["zfs-fuse", "--pidfile", str(zfsfuse.PIDFILE)]
    assert argv[argv.index("--max-arc-size") + 1] == str(zfsfuse.arc_max_mib())


def test_mem_total_is_read_from_meminfo(tmp_path):
    from esxdr.util import mem_total_kib
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       25165824 kB\nMemFree:         1024 kB\n")
    assert mem_total_kib(str(meminfo)) == 25165824
    assert zfsfuse.arc_max_mib(mem_total_kib(str(meminfo))) == 2048
    assert mem_total_kib(str(tmp_path / "absent")) == 0

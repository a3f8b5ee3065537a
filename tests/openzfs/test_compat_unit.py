"""Stream direction verdicts and the receiver's refusal texts (pure: runs without the lane)."""

from __future__ import annotations

import pytest

from esxdr.errors import CommandFailed, TransientError
from esxdr.model import LEGACY, OPENZFS
from esxdr.zfs.compat import StreamFormatError, directions, stream_direction
from esxdr.zfs.errors import translate


@pytest.mark.parametrize("src,dst,ok", [
    (LEGACY, OPENZFS, True),
    (OPENZFS, LEGACY, False),
    (OPENZFS, OPENZFS, True),
    (LEGACY, LEGACY, True),
])
def test_stream_direction(src, dst, ok):
    d = stream_direction(src, dst)
    assert d.ok is ok
    assert d.reason


def test_what_openzfs_can_send_to_pool_v23():
    # Measured in the lane: zvols and version-4 filesystems go, version 5 (default) and raw do not.
    assert stream_direction(OPENZFS, LEGACY, "volume").ok
    assert stream_direction(OPENZFS, LEGACY, "filesystem", zpl_version=4).ok
    assert stream_direction(OPENZFS, LEGACY, "filesystem", zpl_version=4, replica=True).ok
    # created on OpenZFS at version 4: zfs-fuse receives it but cannot open its root
    no = stream_direction(OPENZFS, LEGACY, "filesystem", zpl_version=4, replica=False)
    assert not no.ok and "cannot be opened" in no.reason
    assert not stream_direction(OPENZFS, LEGACY, "filesystem", zpl_version=5).ok
    assert not stream_direction(OPENZFS, LEGACY, "filesystem").ok  # unknown: assume the default, 5
    assert not stream_direction(OPENZFS, LEGACY, "volume", raw=True).ok


def test_directions_say_both_ways():
    lines = directions("ss1", LEGACY, "ss2", OPENZFS)
    assert lines[0].startswith("ss1 → ss2 (replication): possible")
    assert lines[1].startswith("ss2 → ss1 (failback): NOT possible")
    # A replica received from pool v23 keeps version 4, so it can go back.
    assert directions("ss1", LEGACY, "ss2", OPENZFS, zpl_version=4)[1].startswith("ss2 → ss1 (failback): possible")


def _failed(stderr: str) -> CommandFailed:
    return CommandFailed("receive failed", argv=["zfs", "receive", "sp1/x"], returncode=1, stderr=stderr, host="ss1")


# REFUSALS: texts a pool-v23 receiver printed for OpenZFS streams in the lane (see test_mixed_openzfs).
REFUSALS = [
    "cannot receive: stream has unsupported feature, feature flags = 4\n",  # ZPL 5 filesystem
    "cannot receive: stream has unsupported feature, feature flags = 420000\n",  # zfs send -c
]


@pytest.mark.parametrize("stderr", REFUSALS)
def test_refusal_is_permanent_and_explained(stderr):
    err = translate(_failed(stderr), dataset="sp1/x")
    assert isinstance(err, StreamFormatError)
    assert not isinstance(err, TransientError) and not err.transient
    assert "sp1/x" in err.message and "pool-version-23" in (err.hint or "")


def test_cut_stream_stays_transient():
    err = translate(_failed("cannot receive incremental stream: invalid backup stream\n"))
    assert isinstance(err, TransientError)


class _Refusing:
    """A transport whose zfs create fails with the given stderr (exit 1)."""

    name = "ss2"

    def __init__(self, stderr: str):
        self.stderr = stderr
        self.calls: list[list[str]] = []

    def run(self, argv, timeout=None, input=None, check=True):
        self.calls.append(argv)
        raise CommandFailed("create failed", argv=argv, returncode=1, stderr=self.stderr, host=self.name)


def test_delegated_create_that_cannot_mount_is_success():
    # OpenZFS, non-root account with `zfs allow create,mount`: created, then refused the mount.
    from esxdr.zfs import Zfs

    t = _Refusing("filesystem successfully created, but it may only be mounted by root\n")
    Zfs(t, OPENZFS).create("ozdr/g", {"readonly": "on"})  # type: ignore[arg-type]
    assert t.calls == [["zfs", "create", "-p", "-o", "readonly=on", "ozdr/g"]]


def test_other_create_failures_still_raise():
    from esxdr.zfs import Zfs

    with pytest.raises(CommandFailed):
        Zfs(_Refusing("cannot create 'ozdr/g': permission denied\n"), OPENZFS).create("ozdr/g")  # type: ignore[arg-type]

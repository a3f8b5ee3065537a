"""The relay between zfs send and the receiver's pipe, on real OS pipes."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys

import pytest

from esxdr.zfs.stream import PIPE_SIZE, _widen, relay


def test_relay_counts_every_byte_and_reports_progress():
    src = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdout.buffer.write(b'x' * 3_000_000)"],
                           stdout=subprocess.PIPE)
    dst = subprocess.Popen(["wc", "-c"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    seen: list[int] = []
    n = relay(src.stdout.fileno(), dst.stdin.fileno(), seen.append)
    dst.stdin.close()
    assert n == 3_000_000 == sum(seen)
    assert int(dst.stdout.read()) == 3_000_000
    assert src.wait() == 0 and dst.wait() == 0


def test_receiver_gone_after_the_whole_stream_is_not_an_error():
    # The receiver read everything and exited while the relay had not yet seen EOF (it was
    # sleeping for the bandwidth limit): splice reports EPIPE, but nothing was lost.
    r_src, w_src = os.pipe()
    r_dst, w_dst = os.pipe()
    os.write(w_src, b"stream")
    os.close(w_src)
    got = []

    def progress(k: int) -> None:
        got.append(os.read(r_dst, 64))
        os.close(r_dst)  # the receiver exits after the last byte

    assert relay(r_src, w_dst, progress) == 6
    assert got == [b"stream"]
    os.close(r_src)
    os.close(w_dst)


def test_receiver_gone_with_data_left_is_an_error():
    r_src, w_src = os.pipe()
    r_dst, w_dst = os.pipe()
    os.write(w_src, b"more data than the receiver took")
    os.close(w_src)
    os.close(r_dst)
    with pytest.raises(BrokenPipeError):
        relay(r_src, w_dst)
    os.close(r_src)
    os.close(w_dst)


def test_widen_grows_a_pipe_and_ignores_what_is_not_one(tmp_path):
    r, w = os.pipe()
    _widen(w)
    assert fcntl.fcntl(w, fcntl.F_GETPIPE_SZ) == PIPE_SIZE
    os.close(r)
    os.close(w)
    with open(tmp_path / "f", "wb") as f:
        _widen(f.fileno())  # a file: left alone, no exception

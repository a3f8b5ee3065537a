"""The capability cache holds only for the way the host was probed: one box may reach one server
through two accounts (the DR box's pull account and its admin account to production)."""

from __future__ import annotations

import json

from esxdr.errors import CommandFailed
from esxdr.transport.base import CommandResult
from esxdr.zfs.capabilities import detect


class FakeSsh:
    def __init__(self, user: str, serve: bool):
        self.name, self.user, self.address, self.port = "ss1", user, "198.18.0.1", 22
        self.serve = serve
        self.ran: list[list[str]] = []

    def run(self, argv, *, check=True, timeout=None, input=None):
        self.ran.append(argv)
        if argv == ["esxdr-capabilities"] and self.serve:
            out = json.dumps({"openzfs": False, "compressors": ["zstd", "lz4"], "mbuffer": True})
            return CommandResult(argv, 0, out, "", 0.0)
        if check:
            raise CommandFailed("not found", argv=argv, returncode=127)
        return CommandResult(argv, 127, "", "not found", 0.0)


def test_a_probe_through_another_account_is_not_reused(tmp_path):
    admin, pull = FakeSsh("root", serve=False), FakeSsh("esxdr-dr", serve=True)
    assert detect(admin, ("zfs",), "auto", str(tmp_path)).compressors == ()
    caps = detect(pull, ("zfs",), "auto", str(tmp_path))
    assert caps.compressors == ("zstd", "lz4") and caps.mbuffer  # probed again, not the admin's entry
    assert detect(pull, ("zfs",), "auto", str(tmp_path)).compressors == ("zstd", "lz4")
    assert pull.ran == [["esxdr-capabilities"]]  # the second time from the cache
    assert json.loads((tmp_path / "ss1.json").read_text())["via"] == "esxdr-dr@198.18.0.1:22"

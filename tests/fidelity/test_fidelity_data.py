"""The vendored real data are what data/README.md says they are: unmodified, each sum listed."""

from __future__ import annotations

import hashlib
import re

from fidelity_replay import DATA, PYVMOMI, WORLD_CASSETTES, interactions


def _listed() -> dict[str, str]:
    text = (DATA / "README.md").read_text(encoding="utf-8")
    return dict(re.findall(r"^\| `([^`]+)` \| `([0-9a-f]{64})` \|", text, re.M))


def test_every_vendored_file_is_listed_with_its_sha256_and_unmodified():
    listed = _listed()
    present = sorted(p.name for p in PYVMOMI.iterdir())
    assert sorted(listed) == present
    for name, digest in listed.items():
        assert hashlib.sha256((PYVMOMI / name).read_bytes()).hexdigest() == digest, f"{name} differs from upstream"


def test_the_cassettes_are_one_vcenter_6_7_session_each():
    for name in WORLD_CASSETTES:
        its = interactions(name)
        assert [i.method for i in its[:4]] == ["GET", "RetrieveServiceContent", "Login", "RetrieveServiceContent"]
        assert "<apiVersion>6.7</apiVersion>" in its[1].response
        assert "VMware vCenter Server 6.7.0 build-9433931" in its[1].response

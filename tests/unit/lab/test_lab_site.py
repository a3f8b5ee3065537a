"""The lab's two site files: production's (push) and the DR box's view (pull mode)."""

from __future__ import annotations

from esxdr.lab import Lab, LabConfig
from esxdr.site import load_site

HOST_KEY = "SHA256:HYfOdYYK61d+0O8KfPYpweuLx8FB4tWQiemG1Yi2yOw"


def _state(tmp_path) -> dict:
    keys = tmp_path / "keys"
    return {"sshd": {"address": "127.0.0.1", "port": 2222, "account": "esxdr-dr", "key": str(keys / "id_ed25519"),
                     "pull_key": str(keys / "pull_ed25519"), "host_key": HOST_KEY},
            "tgtd": {"production": {"portal": "127.0.0.1:3260", "control_port": 5001},
                     "dr": {"portal": "127.0.0.2:3260", "control_port": 5002}}}


def test_the_dr_view_reaches_production_send_only_and_keeps_its_own_state(tmp_path):
    lab = Lab(LabConfig(dir=str(tmp_path), with_esxsim=False))
    lab._write_site(_state(tmp_path))
    push, pull = (load_site(p, check_files=False) for p in (lab.site_path, lab.dr_site_path))
    assert push.storage["ss1"].local and not push.storage["ss2"].local
    assert push.storage["ss2"].serve_prefix == "rp1" and push.storage["ss2"].key.endswith("/id_ed25519")
    ss1, ss2 = pull.storage["ss1"], pull.storage["ss2"]
    assert (ss1.local, ss1.address, ss1.port, ss1.user) == (False, "127.0.0.1", 2222, "esxdr-dr")
    assert ss1.key.endswith("/pull_ed25519") and ss1.host_key == HOST_KEY and ss1.serve_prefix == "sp1/iscsi"
    assert ss2.local and ss2.serve_prefix is None and ss2.address is None
    # each side keeps its target: DR fails over onto its own, and probes production's for split brain
    assert (ss1.target.portal, ss2.target.portal) == ("127.0.0.1:3260", "127.0.0.2:3260")
    assert ss2.target.control_port == 5002
    assert pull.state_dir == str(tmp_path / "state-dr") and push.state_dir == str(tmp_path / "state")
    assert pull.protection_groups["core"].source_root == push.protection_groups["core"].source_root


def test_productions_pull_view_holds_no_key_to_dr(tmp_path):
    lab = Lab(LabConfig(dir=str(tmp_path), with_esxsim=False))
    lab._write_site(_state(tmp_path))
    text = lab.production_pull_site_path.read_text()
    site = load_site(lab.production_pull_site_path, check_files=False)
    ss2 = site.storage["ss2"]
    assert ss2.pulls and (ss2.key, ss2.user, ss2.address) == (None, None, None)
    assert "pull_ed25519" not in text and "id_ed25519" not in text
    assert ss2.target.portal == "127.0.0.2:3260" and site.storage["ss1"].local
    assert site.state_dir == str(tmp_path / "state")


def test_productions_way_home_reads_dr_send_only_with_its_own_key(tmp_path):
    lab = Lab(LabConfig(dir=str(tmp_path), with_esxsim=False))
    state = _state(tmp_path)
    state["sshd"]["home_key"] = str(tmp_path / "keys" / "home_ed25519")
    lab._write_site(state)
    site = load_site(lab.production_home_site_path, check_files=False)
    ss1, ss2 = site.storage["ss1"], site.storage["ss2"]
    assert ss1.local and ss1.target.portal == "127.0.0.1:3260"
    assert (ss2.local, ss2.pulls, ss2.address, ss2.port) == (False, False, "127.0.0.1", 2222)
    assert ss2.key.endswith("/home_ed25519") and ss2.serve_prefix == "rp1/iscsi" and ss2.behind_serve
    assert ss2.target.portal == "127.0.0.2:3260"  # failback's split-brain guard probes DR's target
    assert site.state_dir == str(tmp_path / "state")  # production's own state: its hand-off, its marker
    assert "pull_ed25519" not in lab.production_home_site_path.read_text()

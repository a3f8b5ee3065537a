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


PROD_HOST_KEY = "SHA256:9xk3TQ0cRkGhcW2gQw8H0n2rQ0nY9ZrR2o0C3dA2bQs"
THUMB = ":".join(["AB"] * 32)


def _boxes_state(tmp_path) -> dict:
    keys = tmp_path / "keys"
    return {"boxes": {"production": {"role": "production", "netns": "esxdr-prod", "veth": "eth-prod",
                                     "address": "198.18.0.1"},
                      "dr": {"role": "dr", "netns": "esxdr-dr", "veth": "eth-dr", "address": "198.18.0.2"}},
            "sshd": {"address": "198.18.0.2", "port": 22, "account": "esxdr-dr", "key": str(keys / "id_ed25519"),
                     "pull_key": str(keys / "pull_ed25519"), "home_key": str(keys / "home_ed25519"),
                     "host_key": HOST_KEY},
            "sshd_production": {"address": "198.18.0.1", "port": 22, "account": "esxdr-dr",
                                "admin_key": str(keys / "admin_ed25519"), "host_key": PROD_HOST_KEY},
            "tgtd": {"production": {"portal": "198.18.0.1:3260", "control_port": 5001},
                     "dr": {"portal": "198.18.0.2:3260", "control_port": 5002}},
            "esxsim": {"production": {"url": "https://198.18.0.1:443/sdk", "username": "root", "password": "x",
                                      "host": "esx-prod", "thumbprint": THUMB},
                       "dr": {"url": "https://198.18.0.2:443/sdk", "username": "root", "password": "x",
                              "host": "esx-dr", "thumbprint": THUMB}}}


def test_two_boxes_each_reach_the_other_over_the_link_with_that_boxs_host_key(tmp_path):
    lab = Lab(LabConfig(dir=str(tmp_path), boxes=True))
    lab._write_site(_boxes_state(tmp_path))
    push, pull, dr_push = (load_site(p, check_files=False)
                           for p in (lab.site_path, lab.dr_site_path, lab.dr_push_site_path))
    # production pushes to DR's service account, pinned to DR's sshd
    assert (push.storage["ss2"].address, push.storage["ss2"].host_key) == ("198.18.0.2", HOST_KEY)
    # DR pulls from production's send-only account, pinned to production's own sshd (not DR's)
    ss1 = pull.storage["ss1"]
    assert (ss1.address, ss1.host_key, ss1.serve_prefix) == ("198.18.0.1", PROD_HOST_KEY, "sp1/iscsi")
    assert ss1.key.endswith("/pull_ed25519")
    # DR's push-mode recovery reaches production as an account that runs zfs and tgtadm there
    ss1 = dr_push.storage["ss1"]
    assert (ss1.address, ss1.user, ss1.host_key, ss1.serve_prefix) == ("198.18.0.1", "root", PROD_HOST_KEY, None)
    assert ss1.key.endswith("/admin_ed25519") and not ss1.behind_serve
    assert dr_push.storage["ss2"].local and dr_push.state_dir == str(tmp_path / "state-dr")
    assert (ss1.target.portal, dr_push.storage["ss2"].target.portal) == ("198.18.0.1:3260", "198.18.0.2:3260")
    # vSphere across the link: https with the pinned thumbprint (esxdr refuses http off loopback)
    for site in (push, pull, dr_push):
        assert {e.url for e in site.vsphere.values()} == {"https://198.18.0.1:443/sdk", "https://198.18.0.2:443/sdk"}
        assert all(e.thumbprint == THUMB for e in site.vsphere.values())
    assert "admin_ed25519" not in lab.site_path.read_text() + lab.dr_site_path.read_text()


def test_the_loopback_lab_writes_no_push_view_for_dr(tmp_path):
    lab = Lab(LabConfig(dir=str(tmp_path), with_esxsim=False))
    lab._write_site(_state(tmp_path))
    assert not lab.dr_push_site_path.exists()

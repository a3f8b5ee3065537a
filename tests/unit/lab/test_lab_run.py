"""`esxdr lab run`: a command on one box of the two-box lab, refused where there are no boxes."""

from __future__ import annotations

import json

from esxdr.cli.main import run
from esxdr.lab.netns import boxes, netns_prefix


def test_run_is_refused_on_a_lab_that_is_not_two_boxes(tmp_path, capsys):
    (tmp_path / "lab.json").write_text(json.dumps({"sshd": {"pid": 1}}))  # the loopback lab
    rc = run(["lab", "run", "--dir", str(tmp_path), "dr", "--", "true"])
    err = capsys.readouterr().err
    assert rc == 2 and "not up on two boxes" in err and "hint: esxdr lab up --boxes" in err, err


def test_a_box_is_entered_by_its_network_only():
    # nsenter --net: the box's network, this machine's mounts (zfs-fuse unmounts in the caller's
    # mount namespace, so a box with a private one would keep datasets busy)
    assert netns_prefix("esxdr-dr") == ["nsenter", "--net=/run/netns/esxdr-dr"]
    assert netns_prefix(None) == []
    b = boxes("t1")
    assert (b["production"].netns, b["dr"].netns) == ("t1-prod", "t1-dr")
    assert (b["production"].address, b["dr"].address) == ("198.18.0.1", "198.18.0.2")

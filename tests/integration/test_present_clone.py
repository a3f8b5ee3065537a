"""`esxdr target present-clone`: a DR snapshot cloned and presented with its production NAAs, on the wire,
replaced by another point in time, removed — while replication into the DR datasets goes on."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from esxdr.targets.probe import Session

pytestmark = pytest.mark.integration
pytest_plugins = ["drill_fixtures"]

DR_INITIATOR = "iqn.1998-01.com.vmware:esx-dr"


def served(dl) -> dict[str, str]:
    """NAA → LUN path as the DR tgtd serves them to the DR host's initiator, read over iSCSI."""
    t = dl.lab.state()["tgtd"]["dr"]
    addr, port = t["portal"].rsplit(":", 1)
    out: dict[str, str] = {}
    show = subprocess.run(["tgtadm", "-C", str(t["control_port"]), "--lld", "iscsi", "--op", "show", "--mode",
                           "target"], capture_output=True, text=True, check=True).stdout
    targets = re.findall(r"^Target \d+: (\S+)", show, re.M)
    for iqn in targets:
        with Session(addr, int(port), target=iqn, initiator=DR_INITIATOR) as s:
            for lun in s.report_luns():
                ident = s.identify(lun)
                if ident.esxi_name and lun:
                    out[ident.esxi_name] = f"{iqn} LUN {lun}"
    return out


def clones(dl) -> list[str]:
    out = subprocess.run(["zfs", "list", "-H", "-o", "name,origin", "-r", f"{dl.dr_pool}/iscsi"],
                         capture_output=True, text=True).stdout
    return sorted(line for line in out.splitlines() if "esxdr-test" in line.split("\t")[0])


def test_present_switch_remove_while_replicating(drill_lab):
    dl = drill_lab
    naas = sorted(d["naa"] for d in dl.seed["datastores"].values())
    before = served(dl)
    assert not set(naas) & set(before)

    r = dl.ok("--json", "target", "present-clone", "core", "--dry-run")
    assert clones(dl) == [] and served(dl) == before

    first = json.loads(dl.ok("--json", "target", "present-clone", "core").stdout)["snapshot"]
    now = served(dl)
    assert sorted(set(now) - set(before)) == naas  # the production identities, on the wire
    # ...as a third-party initiator (libiscsi) reads them from VPD 0x83, not only esxdr's own client.
    import libiscsi

    libiscsi.assert_served(dl.lab.state()["tgtd"]["dr"]["portal"], naas, initiator=DR_INITIATOR)
    assert all(f"@{first}" in c for c in clones(dl) if "\t" in c and not c.endswith("\t-"))

    # replication goes on while the clone is presented
    dl.ok("replicate", "core")
    dl.ok("replicate", "core")
    latest = subprocess.run(["zfs", "list", "-H", "-t", "snapshot", "-o", "name", "-r", f"{dl.dr_pool}/iscsi/lun0"],
                            capture_output=True, text=True).stdout.split()[-1].split("@")[1]
    assert latest != first

    # another point in time replaces the clone
    r = json.loads(dl.ok("--json", "target", "present-clone", "core", "--snapshot", latest).stdout)
    assert r["snapshot"] == latest
    assert sorted(set(served(dl)) - set(before)) == naas
    origins = [c.split("\t")[1] for c in clones(dl) if not c.endswith("\t-")]
    assert origins and all(o.endswith(f"@{latest}") for o in origins)

    # removing it restores the original
    dl.ok("target", "present-clone", "core", "--remove")
    assert clones(dl) == [] and served(dl) == before
    r = dl.esxdr("target", "present-clone", "core", "--remove")
    assert r.returncode == 0 and "no clone presented" in r.stdout
    dl.ok("replicate", "core")

"""A VMFS datastore spanning two LUNs, on a real tgtd and esxsim: `target verify` and the DR host
see it whole when both LUNs are presented, and both say which extent is missing when one is not.

The volume is written with esxdr.vmfs (docs/vmfs.md): every extent but the last holds whole
256 MiB physical extents, so the head's LUN file is 300 MiB (sparse, it costs nothing).
"""

from __future__ import annotations

import json

import pytest
from conftest_esxsim import make_lun_file
from vsphere_fixtures import PRODUCT, TARGET_IQN, esxdr_on, naa_for, vmfs_uuid_for

from esxdr import vmfs

pytestmark = pytest.mark.integration
pytest.importorskip("pyVmomi")
pytest_plugins = ["conftest_esxsim", "vsphere_fixtures"]  # the latter gives the `lab` fixture
esxdr = esxdr_on

DR_INITIATOR = "iqn.1998-01.com.vmware:esx-dr"  # esxsim's esx-dr
MOUNTS = "will mount as-is"


def verify_json(lab, manifest, check):
    p = esxdr(lab, "target", "verify", str(manifest), "--probe-portal", lab.portal, "--initiator", DR_INITIATOR,
              "--json", check=check)
    return json.loads(p.stdout.split('\n{\n  "error"')[0])


def test_spanned_datastore_mounts_whole_and_names_a_missing_extent(lab):
    head, tail = naa_for(41), naa_for(42)
    a = make_lun_file(lab.dir / "span-a.img", 300)
    b = make_lun_file(lab.dir / "span-b.img", 64)
    vmfs.write_volume([vmfs.Extent(a, head, PRODUCT, vendor="IET", lun=1),
                       vmfs.Extent(b, tail, PRODUCT, vendor="IET", lun=2)], uuid=vmfs_uuid_for(41), label="wide")
    lab.tgtd.add_target(1, TARGET_IQN)
    lab.tgtd.add_lun(1, 1, a, head)
    lab.luns[head], lab.lun_numbers[head] = a, 1
    esxdr(lab, "host", "apply", check=0)  # software iSCSI, discovery, rescans

    # Only the head is presented: verify fails naming the other extent; esx-dr mounts nothing.
    out = verify_json(lab, lab.manifest([head]), check=5)
    [c] = out["checks"]
    assert c["prediction"] == "will not mount: an extent is missing"
    assert f"missing extent 1 on naa.{tail}" in c["problems"][0] and "'wide'" in c["problems"][0]
    from esxdr.vsphere import inventory

    with lab.connect() as s:
        assert "wide" not in inventory.read_host(s).datastores
    assert f"is missing extent 1 on naa.{tail}: not mounted" in (lab.dir / "esx-dr.log").read_text()

    # Both presented: verify predicts a mount for each extent, and esx-dr mounts one datastore
    # over both LUNs, head first, as itself (the UUID written above).
    lab.tgtd.add_lun(1, 2, b, tail)
    lab.luns[tail], lab.lun_numbers[tail] = b, 2
    manifest = lab.manifest([head, tail])
    out = verify_json(lab, manifest, check=0)
    assert {c["naa"]: c["prediction"] for c in out["checks"]} == {head: MOUNTS, tail: MOUNTS}
    assert [c["vmfs"]["volume"]["ordinal"] for c in out["checks"]] == [0, 1]
    storage = json.loads(esxdr(lab, "host", "verify-storage", "--manifest", str(manifest), "--json", check=0).stdout)
    assert storage["ok"] and {c["datastore"] for c in storage["luns"]} == {"wide"}
    with lab.connect() as s:
        ds = inventory.read_host(s).datastores["wide"]
        assert ds.vmfs_uuid == vmfs_uuid_for(41)
        assert list(ds.extents) == [f"naa.{head}", f"naa.{tail}"]

    # The second extent taken away again: the datastore goes with it.
    lab.tgtd.adm("--op", "delete", "--mode", "logicalunit", "--tid", "1", "--lun", "2")
    from esxdr.vsphere import storage

    with lab.connect() as s:  # host apply rescans only when it changed the storage configuration
        storage.rescan(s, inventory.read_host(s, with_vms=False))
        assert "wide" not in inventory.read_host(s).datastores

"""Zvols as LUNs on tgt in the OpenZFS guest, seen from the host with esxdr's own iSCSI client.

The DR story end to end: production zvols (named as in the COMSTAR corpus) carry a
VMFS6 header written for their NAA; esxdr replicates them to the DR pool; a drill
clone of the replica is presented by tgt with the production NAA (manifest renamed
to the DR datasets, zvol paths in Linux style); and `verify` through the
forwarded port predicts "will mount as-is".

Only static targets on 127.0.0.1:<forwarded port>: a SendTargets answer would name
the guest's internal address, which nothing here may use.
"""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path

import pytest

from esxdr.model.manifest import Auth, Portal
from esxdr.plan import rewrite
from esxdr.targets import read_native, tgt
from esxdr.targets.probe import Session
from esxdr.targets.verify import MOUNT, verify
from esxdr.transport import SshTransport

pytestmark = pytest.mark.openzfs

CORPUS = Path(__file__).parents[1] / "unit" / "targets" / "target_corpus"
DR_INITIATOR = "iqn.1998-01.com.vmware:esxi-dr"


def comstar_prod():
    m = read_native("comstar", sorted(str(p) for p in (CORPUS / "comstar").iterdir()))
    for t in m.targets:
        t.auth = Auth()
    # The file-backed LU has no views on production; this test is about zvols.
    m.logical_units = [lu for lu in m.logical_units if lu.backing.kind == "zvol"]
    return m


@pytest.fixture
def root_transport(lane):
    t = SshTransport("guest", lane.ssh_address, port=lane.ssh_port, user="root", key_file=lane.key,
                     host_key=lane.host_fingerprint())
    yield t
    t.close()


@pytest.fixture
def clean_tgt(lane):
    yield
    lane.run("for tid in $(tgtadm --lld iscsi --op show --mode target | sed -n 's/^Target \\([0-9]*\\):.*/\\1/p'); "
             "do tgtadm --lld iscsi --op delete --mode target --tid $tid --force; done; true", check=False)


def write_vmfs_in_guest(lane, dataset: str, lu) -> None:
    """esxdr.vmfs.write_vmfs run in the guest (its copy of esxdr) onto the zvol itself."""
    code = (f"from esxdr.vmfs import write_vmfs; "
            f"write_vmfs('/dev/zvol/{dataset}', uuid='5f1e2d3c-a1b2c3d4-e5f6-001122334455', label='prod-ds1', "
            f"naa='{lu.naa.hex}', product_id='{lu.product_id}', vendor='{lu.vendor_id}')")
    lane.run(f"udevadm settle && PYTHONPATH=/opt/esxdr python3 -c \"{code}\" && sync")


def test_zvol_luns_replicated_and_presented_with_production_naa(group_factory, lane, root_transport, clean_tgt):
    prod = comstar_prod()
    sizes = [lu.size_bytes for lu in prod.logical_units]  # 100 GiB and 50 GiB, sparse
    g = group_factory(2, volsize=[str(s) for s in sizes])
    lu0 = prod.lu("600144f0b6a1c6b0000051a4d5e20001")
    write_vmfs_in_guest(lane, g.datasets[0], lu0)
    g.write(g.datasets[1], 1 << 20)
    r = g.esxdr("--json", "replicate", g.name)
    assert r.returncode == 0, r.stderr
    snap = json.loads(r.stdout)["snapshot"]
    # A drill clone of each replica (a replica itself is never written or presented read-write).
    test_root = f"{g.dr_root}-esxdr-test"
    lane.run(f"zfs create {test_root} && " + " && ".join(
        f"zfs clone {g.dr(ds)}@{snap} {test_root}/{ds.rsplit('/', 1)[1]}" for ds in g.datasets)
        + " && udevadm settle")
    try:
        m = rewrite.rename_datasets(prod, {"sp2/iscsi": test_root})
        m = rewrite.zvol_style(m, "linux")
        m = rewrite.set_portals(m, [Portal(lane.iscsi_address, lane.iscsi_port)])
        m = rewrite.allow_initiators(m, [DR_INITIATOR]).validate()
        assert all(lu.backing.path.startswith(f"/dev/zvol/{test_root}/") for lu in m.logical_units)

        result = tgt.apply(root_transport, m)
        assert result.commands
        # Each LU's NAA, read over iSCSI through the forwarded port (static target, no discovery).
        for t in m.targets:
            luns = m.luns_of(t.iqn)
            if not luns:
                continue
            with Session(lane.iscsi_address, lane.iscsi_port, target=t.iqn, initiator=DR_INITIATOR) as s:
                for n in s.report_luns():
                    ident = s.identify(n)
                    if ident.device_type != 0:
                        continue
                    lu = m.lu(ident.naa)
                    assert lu is not None, ident
                    assert ident.esxi_name == lu.naa.esxi_name
                    assert ident.size_bytes == lu.size_bytes
        report = verify(m, lane.iscsi_address, lane.iscsi_port, initiator=DR_INITIATOR)
        assert report.ok, report.text()
        by_naa = {c.naa: c for c in report.checks}
        assert by_naa[lu0.naa.hex].prediction == MOUNT
        assert by_naa[lu0.naa.hex].vmfs["label"] == "prod-ds1"
        # Idempotent: a second apply has nothing to do.
        assert tgt.apply(root_transport, m).commands == []
        # And the live tgt exports the same identities back (vendor/product read over iSCSI too).
        observed = tgt.observe(root_transport, portal=f"{lane.iscsi_address}:{lane.iscsi_port}",
                               initiator=DR_INITIATOR)
        assert {lu.naa.hex for lu in observed.logical_units} == {lu.naa.hex for lu in m.logical_units}
        assert {lu.product_id for lu in observed.logical_units} == {"COMSTAR"}
    finally:
        lane.run("for tid in $(tgtadm --lld iscsi --op show --mode target | sed -n 's/^Target \\([0-9]*\\):.*/\\1/p');"
                 f" do tgtadm --lld iscsi --op delete --mode target --tid $tid --force; done; "
                 f"zfs destroy -r {test_root}", check=False)


def test_replica_bytes_read_back_over_iscsi(group_factory, lane, root_transport, clean_tgt):
    """What production wrote is what the DR initiator reads, block for block, from a zvol LU."""
    g = group_factory(1, volsize="16M")
    ds = g.datasets[0]
    g.write(ds, 2 << 20)
    r = g.esxdr("--json", "replicate", g.name)
    assert r.returncode == 0, r.stderr
    snap = json.loads(r.stdout)["snapshot"]
    clone = f"{g.dr_root}-esxdr-test/lun0"
    lane.run(f"zfs create {g.dr_root}-esxdr-test && zfs clone {g.dr(ds)}@{snap} {clone} && udevadm settle")
    try:
        m = copy.deepcopy(comstar_prod())
        m.logical_units = m.logical_units[:1]
        lu = m.logical_units[0]
        lu.backing.path, lu.backing.dataset, lu.size_bytes = f"/dev/zvol/{clone}", clone, 16 << 20
        m = rewrite.allow_initiators(m, [DR_INITIATOR]).validate()
        tgt.apply(root_transport, m)
        iqn = next(t.iqn for t in m.targets if m.luns_of(t.iqn))
        expected = base64.b64decode(lane.out(f"dd if=/dev/zvol/{ds} bs=64k count=32 status=none | base64 -w0"))
        with Session(lane.iscsi_address, lane.iscsi_port, target=iqn, initiator=DR_INITIATOR) as s:
            n = next(n for n in s.report_luns() if s.identify(n).naa == lu.naa.hex)
            blocks, bs = s.read_capacity16(n)
            assert bs == 512
            got = b"".join(s.read10(n, lba, 128, bs) for lba in range(0, (2 << 20) // bs, 128))
        assert got == expected
    finally:
        lane.run("for tid in $(tgtadm --lld iscsi --op show --mode target | sed -n 's/^Target \\([0-9]*\\):.*/\\1/p');"
                 f" do tgtadm --lld iscsi --op delete --mode target --tid $tid --force; done; "
                 f"zfs destroy -r {g.dr_root}-esxdr-test", check=False)

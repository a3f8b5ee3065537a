"""`esxdr plan discover`'s pure part: production's datastores and VMs + the target manifest in,
the protection group's mapping out (and its site-file YAML)."""

from __future__ import annotations

from dataclasses import replace

import yaml
from test_runbook import NAAS, UUIDS, group, manifest, vm

from esxdr.plan.discover import SeenDatastore, SeenVm, discover
from esxdr.site.model import NetworkMap


def stores() -> list[SeenDatastore]:
    return [SeenDatastore(f"ds-lun{i}", UUIDS[i], (NAAS[i],)) for i in range(3)] + \
        [SeenDatastore("local-ds", None, ("600508b1001c0000000000000000abcd",))]


def test_maps_luns_datastores_and_vms_with_stubs():
    g = replace(group(), vms=(vm("dc01", 1),), luns={})
    seen = [SeenVm("dc01", "[ds-lun0] dc01/dc01.vmx", ("ds-lun0",), ("Prod-LAN",)),
            SeenVm("web01", "[ds-lun1] web01/web01.vmx", ("ds-lun1", "ds-lun2"), ("Prod-LAN", "DMZ", "Prod-LAN")),
            SeenVm("half", "[ds-lun2] half/half.vmx", ("ds-lun2", "local-ds"), ("Prod-LAN",)),
            SeenVm("other", "[local-ds] other/other.vmx", ("local-ds",), ())]
    d = discover(g, manifest(), stores(), seen, manifest_origin="m.yaml", endpoint="esx-prod")
    assert d.datasets == [{"name": f"lun{i}", "naa": f"naa.{NAAS[i]}", "datastore": f"ds-lun{i}",
                           "vmfs_uuid": UUIDS[i]} for i in range(3)]
    assert set(d.vms) == {"dc01", "web01"}  # "other" is not the group's, "half" only partly
    assert d.vms["dc01"]["priority"] == 1 and "stub_priority" not in d.vms["dc01"]  # the site file wins
    assert d.vms["dc01"]["networks"] == {"Prod-LAN": {"failover": "DR-LAN", "test": "Prod-LAN"}}
    assert d.vms["web01"]["priority"] == 3 and d.vms["web01"]["stub_priority"]
    assert list(d.vms["web01"]["networks"]) == ["Prod-LAN", "DMZ"]
    assert any("half has files on local-ds" in n for n in d.notes)
    frag = yaml.safe_load(d.to_yaml())["protection_groups"]["core"]
    assert frag["vms"]["web01"] == {"priority": 3, "vmx": "[ds-lun1] web01/web01.vmx",
                                    "networks": {"Prod-LAN": {"failover": "Prod-LAN", "test": "Prod-LAN"},
                                                 "DMZ": {"failover": "DMZ", "test": "DMZ"}}}
    assert frag["datasets"][0] == {"name": "lun0", "naa": f"naa.{NAAS[0]}", "datastore": "ds-lun0",
                                   "vmfs_uuid": UUIDS[0]}
    assert "# stub" in d.to_yaml()


def test_missing_lun_and_datastore_are_noted():
    m = manifest()
    m.logical_units = m.logical_units[:2]
    d = discover(group(), m, stores()[:1], [], manifest_origin="m.yaml")
    assert d.datasets[2] == {"name": "lun2"}
    assert any("lun2: no LU" in n for n in d.notes) and any("lun1 (naa." in n for n in d.notes)
    assert any("VM dc01 is in the site file but not" in n for n in d.notes)


def test_yaml_quotes_what_plain_yaml_would_misread():
    g = replace(group(), vms=(replace(vm("yes", 2), networks={"VM Network: 1": NetworkMap("on", "#x")}),))
    seen = [SeenVm("yes", "[ds-lun0] yes/yes.vmx", ("ds-lun0",), ("VM Network: 1",))]
    frag = yaml.safe_load(discover(g, manifest(), stores(), seen).to_yaml())["protection_groups"]["core"]
    assert frag["vms"] == {"yes": {"priority": 2, "vmx": "[ds-lun0] yes/yes.vmx",
                                   "networks": {"VM Network: 1": {"failover": "on", "test": "#x"}}}}

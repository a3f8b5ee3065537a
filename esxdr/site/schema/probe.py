"""The probe site the schema generator runs the loader on (esxdr.site.schema)."""

from __future__ import annotations

from typing import Any

# A valid site (`esxdr site validate --no-file-checks`, test_schema.py checks it) with each section
# and each form of each key at least once, and each mode of a section that changes what is
# required: a key is inferred required only when every instance of its section needs it.
_HOST_KEY = "SHA256:HYfOdYYK61d+0O8KfPYpweuLx8FB4tWQiemG1Yi2yOw"
_THUMB = ":".join(["AB"] * 32)
PROBE: dict[str, Any] = {
    "version": 1,
    "name": "probe",
    "state_dir": "state",
    "storage": {
        "prod": {"role": "production", "local": True, "zfs": "auto", "zfs_command": ["pfexec", "zfs"],
                 "stream_ciphers": "auto",
                 "target": {"stack": "comstar", "portal": "10.10.0.4:3260", "iqn_prefix": "iqn.2010-09.org.example"}},
        "dr": {"role": "dr", "address": "dr.example.com", "port": 22, "user": "esxdr", "key": "keys/id",
               "host_key": _HOST_KEY, "zfs": "openzfs", "zfs_command": "sudo -n zfs", "serve_prefix": "rp1",
               "stream_ciphers": "aes128-gcm@openssh.com", "target": {"stack": "tgt", "control_port": 5002}},
        "dr2": {"role": "dr", "address": "10.20.0.6", "user": "esxdr", "key": "keys/id", "known_hosts": "known"},
        "pulling": {"role": "dr", "pulls": True},
    },
    "vsphere": {
        "vc": {"role": "production", "kind": "vcenter", "url": "https://vc.example.com/sdk", "user": "u",
               "password_env": "VC_PASSWORD", "ca_file": "ca.pem", "hosts": ["esx1.example.com"]},
        "esxi-dr": {"role": "dr", "url": "https://esxi-dr.example.com/sdk", "user": "root",
                    "password_file": "secrets/pw", "thumbprint": _THUMB},
        "vc-dr": {"role": "dr", "kind": "vcenter", "url": "http://127.0.0.5/sdk", "user": "u",
                  "password_env": "VC_DR_PASSWORD", "hosts": ["esx-dr2.example.com"]},
    },
    "dr_network": {
        "esxi-dr": {
            "vswitches": {"vSwitch0": {"uplinks": ["vmnic0"]},
                          "vSwitch1": {"uplinks": ["vmnic1", "vmnic2"], "mtu": 9000, "active": ["vmnic1"],
                                       "standby": ["vmnic2"], "ports": 128}},
            "port_groups": {"iSCSI": {"vswitch": "vSwitch1", "vlan": 20, "active_uplinks": ["vmnic1"],
                                      "standby_uplinks": ["vmnic2"]},
                            "Test-LAN": {"vswitch": "vSwitch1", "vlan": 310, "isolated": True},
                            "DR-LAN": {"vswitch": "vSwitch0"}},
            "vmkernel": {"vmk1": {"port_group": "iSCSI", "ip": "10.20.0.11/24", "mtu": 9000},
                         "vmk2": {"port_group": "DR-LAN", "ip": "dhcp"}},
            "iscsi": {"enabled": True, "bind": ["vmk1"],
                      "send_targets": ["10.20.0.5:3260", {"address": "10.20.0.6", "port": 3260}],
                      "static_targets": [{"address": "10.20.0.5", "port": 3260,
                                          "iqn": "iqn.2010-09.org.example:lun0"}],
                      "chap": {"name": "esxi-dr", "secret_env": "CHAP_SECRET"}},
        },
        "esx-dr2.example.com": {"iscsi": {"chap": {"name": "dr2", "secret_file": "secrets/chap"}}},
    },
    "protection_groups": {
        "core": {
            "source": "prod", "destination": "dr", "source_root": "sp1/iscsi", "dr_root": "rp1/iscsi",
            "datasets": ["lun0", {"name": "lun1", "naa": "naa.600144f0928c010000004fc511ec0001",
                                  "datastore": "DS1", "vmfs_uuid": "5b7ee5c9-1a2b3c4d-5e6f-001122334455"}],
            "incremental": "direct",
            "retention": {"source": "48h 7d", "destination": {"hourly": 48, "daily": 30, "weekly": 12,
                                                              "monthly": 12, "yearly": 1, "last": 2},
                          "prune_foreign": True},
            "schedule": {"every": "1h", "timezone": "Europe/Berlin"},
            "rpo": "4h", "parallel": 4, "compression": "zstd", "bandwidth_limit": "50M", "mbuffer": "off",
            "consistency": "application", "vsphere_production": "vc", "vsphere_dr": "esxi-dr", "bookmarks": True,
            "vms": {"dc01": {"priority": 1, "networks": {"Prod-LAN": {"failover": "DR-LAN", "test": "Test-LAN"}},
                             "boot_timeout": "10m", "shutdown_timeout": "5m", "vmx": "[DS1] dc01/dc01.vmx"},
                    "sql01": {"priority": 1, "depends_on": ["dc01"]}},
            "callouts": {
                "power": {"post": ["/usr/local/bin/notify", "--channel", "dr"], "runs": ["failover", "test-start"],
                          "timeout": "2m"},
                "power:1:1": {"pre": "hooks/check-dns.sh"},
                "shutdown": {"pre": ["drain", "prod"], "post": {"plugin": "command", "with": {"note": "done"}}},
                "promote": {"pre": {"plugin": "command", "with": {"argv": "check"}}, "post": "notify promoted"},
            },
        },
        "web": {"source": "prod", "destination": "dr2", "source_root": "sp1/web", "dr_root": "rp2/web",
                "datasets": ["sp1/web/lun0"], "retention": {"source": {"daily": 7}, "destination": "30d"},
                "schedule": {"cron": "15 */4 * * *"}, "rpo": 86400},
        "files": {"source": "prod", "destination": "dr2", "source_root": "sp1/files", "dr_root": "rp2/files",
                  "datasets": ["a"], "retention": "48h 30d", "rpo": "1d"},
    },
}

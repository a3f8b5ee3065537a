"""The lab's site files: production's own (site.yaml) and each box's view of the same site.

Every view is site.yaml's lines with the storage servers rewritten as that box reaches them:
the DR box in pull mode (site-dr.yaml), production in pull mode (site-production-pull.yaml) and
for the way home (site-production-home.yaml), and, in the two-box lab, the DR box in push mode
(site-dr-push.yaml, written by boxes.py).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from esxdr.lab import Lab


def target_lines(server_block: list[str]) -> list[str]:
    """The `target:` mapping of a storage server's lines in the lab's site file."""
    return [ln for ln in server_block if ln == "    target:" or ln.startswith("      ")]




def write(lab: Lab, state: dict) -> None:
    s = state["sshd"]
    c = lab.cfg
    lines = [
        "# Written by `esxdr lab up`: the embedded lab's site.",
        "version: 1",
        "name: esxdr-lab",
        f"state_dir: {lab.dir / 'state'}",
        "storage:",
        "  ss1:",
        "    role: production",
        "    local: true",
        "    zfs: auto",
    ]
    t = state.get("tgtd", {})
    if "production" in t:
        lines += ["    target:", "      stack: tgt", f"      portal: {t['production']['portal']}",
                  f"      control_port: {t['production']['control_port']}"]
    lines += [
        "  ss2:",
        "    role: dr",
        f"    address: {s['address']}",
        f"    port: {s['port']}",
        f"    user: {s['account']}",
        f"    key: {s['key']}",
        f"    host_key: {s['host_key']}",
        "    zfs: auto",
        f"    serve_prefix: {c.dr_pool}",
    ]
    if "dr" in t:
        lines += ["    target:", "      stack: tgt", f"      portal: {t['dr']['portal']}",
                  f"      control_port: {t['dr']['control_port']}"]
    esx = state.get("esxsim", {})
    if esx:
        pw = lab.dir / "esxsim.password"
        pw.write_text(next(iter(esx.values()))["password"] + "\n")
        os.chmod(pw, 0o600)
        lines.append("vsphere:")
        for role, e in sorted(esx.items(), key=lambda kv: kv[0] != "production"):
            lines += [f"  {e['host']}:", f"    role: {role}", f"    url: {e['url']}", f"    user: {e['username']}",
                      f"    password_file: {pw}"]
            if e["url"].startswith("https:") and e.get("thumbprint"):
                lines.append(f"    thumbprint: {e['thumbprint']}")
    if "dr" in esx and "dr" in t:
        dr_addr, _, dr_port = t["dr"]["portal"].rpartition(":")
        lines += [
            "dr_network:",
            f"  {esx['dr']['host']}:",
            "    vswitches:",
            "      vSwitch0: {uplinks: [vmnic0]}",
            "      vSwitch1: {uplinks: [vmnic1], mtu: 9000}",
            "    port_groups:",
            "      iSCSI-Net0: {vswitch: vSwitch1, vlan: 20}",
            "      DR-LAN: {vswitch: vSwitch0, vlan: 10}",
            "      Prod-LAN: {vswitch: vSwitch1, vlan: 310, isolated: true}",
            "    vmkernel:",
            "      vmk1: {port_group: iSCSI-Net0, ip: "
            + ("198.18.0.12/24" if lab.boxed else "127.0.0.12/8") + ", mtu: 9000}",
            "    iscsi:",
            "      bind: [vmk1]",
            f"      send_targets: [{dr_addr}:{dr_port}]",
        ]
    seeded = state.get("seed", {})
    lines += [
        "protection_groups:",
        f"  {c.group}:",
        "    source: ss1",
        "    destination: ss2",
        f"    source_root: {c.prod_pool}/iscsi",
        f"    dr_root: {c.dr_pool}/iscsi",
    ]
    if seeded.get("datastores"):
        lines.append("    datasets:")
        for ds_name, d in sorted(seeded["datastores"].items()):
            lines.append(f"      - {{name: {d['dataset'].rsplit('/', 1)[1]}, naa: {d['naa']}, datastore: {ds_name}, "
                         f"vmfs_uuid: {d['uuid']}}}")
    else:
        lines.append("    datasets: [" + ", ".join(f"lun{i}" for i in range(c.luns)) + "]")
    if "production" in esx:
        # quiesced VMware snapshots around each ZFS snapshot, through esx-prod
        lines.append("    consistency: application")
        lines.append(f"    vsphere_production: {esx['production']['host']}")
    if "dr" in esx:
        lines.append(f"    vsphere_dr: {esx['dr']['host']}")
    if seeded.get("vms") and "dr" in esx:
        lines.append("    vms:")
        for vm in seeded["vms"]:
            lines += [f"      {vm['name']}:", f"        priority: {vm['priority']}",
                      "        networks: {Prod-LAN: {failover: DR-LAN, test: Prod-LAN}}"]
    lines += [
        "    retention:",
        "      source: {hourly: 48, daily: 30, weekly: 12, monthly: 12}",
        "      destination: {hourly: 48, daily: 30, weekly: 12, monthly: 12}",
        "    schedule: {every: 1h}",
        "    rpo: 2h",
    ]
    lab.site_path.write_text("\n".join(lines) + "\n")
    lab.dr_site_path.write_text("\n".join(dr_view(lab, lines, state)) + "\n")
    lab.production_pull_site_path.write_text("\n".join(production_pull_view(lines)) + "\n")
    if state.get("sshd", {}).get("home_key"):
        lab.production_home_site_path.write_text("\n".join(production_home_view(lab, lines, state)) + "\n")
    if state.get("sshd_production", {}).get("admin_key"):
        from esxdr.lab import boxes

        lab.dr_push_site_path.write_text("\n".join(boxes.dr_push_view(lines, state, lab)) + "\n")


def production_home_view(lab: Lab, lines: list[str], state: dict) -> list[str]:
    """site.yaml's lines as production keeps them for the way home in pull mode: ss1 local,
    ss2 behind DR's send-only account, reached with production's home key; production's state."""
    s, c = state["sshd"], lab.cfg
    start = lines.index("  ss2:")
    end = next(i for i in range(start + 1, len(lines)) if not lines[i].startswith("    "))
    ss2 = ["  ss2:", "    role: dr", f"    address: {s['address']}", f"    port: {s['port']}",
           f"    user: {s['account']}", f"    key: {s['home_key']}", f"    host_key: {s['host_key']}",
           "    zfs: auto", f"    serve_prefix: {c.dr_pool}/iscsi", *target_lines(lines[start + 1:end])]
    out = lines[:start] + ss2 + lines[end:]
    out[0] = "# Written by `esxdr lab up`: the embedded lab's production for the way home in pull mode."
    return out


def production_pull_view(lines: list[str]) -> list[str]:
    """site.yaml's lines as production keeps them in pull mode: ss2 pulls and is given no key,
    account or address (production never connects there); its target stays, for the record."""
    start = lines.index("  ss2:")
    end = next(i for i in range(start + 1, len(lines)) if not lines[i].startswith("    "))
    out = lines[:start] + ["  ss2:", "    role: dr", "    pulls: true", *target_lines(lines[start + 1:end])] \
        + lines[end:]
    out[0] = "# Written by `esxdr lab up`: the embedded lab's production in pull mode (the DR box pulls)."
    return out


def dr_view(lab: Lab, lines: list[str], state: dict) -> list[str]:
    """site.yaml's lines as the DR box sees them (pull mode): its own state directory, ss2
    local, ss1 behind production's send-only account, reached with DR's pull key."""
    # production's own sshd on a box of its own; the one sshd of the loopback lab otherwise
    s, c = state.get("sshd_production") or state["sshd"], lab.cfg
    start = lines.index("storage:")
    end = next(i for i in range(start + 1, len(lines)) if not lines[i].startswith(" "))
    storage = lines[start:end]
    ss2 = storage.index("  ss2:")
    targets = {"ss1": target_lines(storage[1:ss2]), "ss2": target_lines(storage[ss2:])}
    view = ["storage:", "  ss1:", "    role: production", f"    address: {s['address']}", f"    port: {s['port']}",
            f"    user: {s['account']}", f"    key: {state['sshd']['pull_key']}", f"    host_key: {s['host_key']}",
            "    zfs: auto", f"    serve_prefix: {c.prod_pool}/iscsi", *targets["ss1"],
            "  ss2:", "    role: dr", "    local: true", "    zfs: auto", *targets["ss2"]]
    out = [f"state_dir: {lab.dir / 'state-dr'}" if ln.startswith("state_dir: ") else ln for ln in lines]
    out[0] = "# Written by `esxdr lab up`: the embedded lab's site as its DR box sees it (pull mode)."
    return out[:start] + view + out[end:]

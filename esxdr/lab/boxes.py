"""The two-box lab (`esxdr lab up --boxes`): production and DR as boxes of their own.

Each site lives in its own network namespace (``netns.py``) with its own sshd, tgtd and esxsim,
on its own address of 198.18.0.0/24; the machine's zfs-fuse serves both pools (storage is shared,
the network is not). esxdr then runs inside a site's namespace, as it would on that box, and
every path between the sites crosses the veth link: the remote branches that the loopback lab
takes as local (a failback to a remote production, DR pulling from production, the split-brain
guard's probe of production's portal, vSphere over https with a pinned thumbprint).

The accounts, as a two-box site would set them up:

- on DR, the service account (``cfg.account``): production's replication key (``esxdr serve`` on
  the DR pool) and production's home key (``esxdr serve --send-only`` on the DR root, for the
  way home in pull mode), each only from production's address;
- on production, the same account name with DR's pull key (``esxdr serve --send-only`` on the
  source root), and root with DR's admin key: push-mode failover, reprotect and failback run on
  the DR box and stop, roll back, promote and present on production with zfs and tgtadm, which
  no forced command allows (docs/user-guide.md, "Reprotect and failback").
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from esxdr.lab import netns

if TYPE_CHECKING:
    from esxdr.lab import Lab

SSH_PORT = 22
TGT_PORT = 3260
ESXSIM_PORT = 443


def pair(lab: Lab) -> dict[str, netns.Box]:
    return netns.boxes(lab.cfg.netns_prefix)


def network(lab: Lab, state: dict, say) -> None:
    from esxdr.lab import ensure_packages

    ensure_packages({"iproute2": "ip", "util-linux": "nsenter"})
    if not netns.supported():
        from esxdr.errors import UsageError

        raise UsageError("--boxes needs network namespaces and veth pairs (root, iproute2, a kernel with both)",
                         hint="run `esxdr lab up` without --boxes: the loopback lab")
    b = pair(lab)
    fresh = not ({x.netns for x in b.values()} <= netns.existing())
    netns.create(b)
    state["boxes"] = {role: x.to_dict() for role, x in b.items()}
    if fresh:
        say(f"network namespaces {b['production'].netns} ({b['production'].address}) and {b['dr'].netns} "
            f"({b['dr'].address}), joined by a veth pair; no route leaves them")


def ssh(lab: Lab, state: dict, say) -> None:
    """Both boxes' sshd and the accounts behind them (see the module's docstring)."""
    from esxdr.lab import sshd as sshd_mod

    b, c = pair(lab), lab.cfg
    account = c.account
    sudoers, keys, launcher, log = lab._service_account()
    prod_from, dr_from = f'from="{b["production"].address}",', f'from="{b["dr"].address}",'

    def key(name: str, comment: str) -> str:
        return sshd_mod.keygen(str(keys / name), comment)

    line = (f'{prod_from}command="{launcher} serve --sudo --allow-prefix {c.dr_pool} --log {log}",restrict '
            + key("id_ed25519", f"esxdr@{c.prod_pool}"))
    home_line = (f'{prod_from}command="{launcher} serve --sudo --send-only --allow-prefix {c.dr_pool}/iscsi '
                 f'--log {log}",restrict ' + key("home_ed25519", f"esxdr-home@{c.prod_pool}"))
    pull_line = (f'{dr_from}command="{launcher} serve --sudo --send-only --allow-prefix {c.prod_pool}/iscsi '
                 f'--log {log}",restrict ' + key("pull_ed25519", f"esxdr-pull@{c.dr_pool}"))
    admin_line = f'{dr_from}restrict ' + key("admin_ed25519", f"esxdr-admin@{c.dr_pool}")
    files = {"dr": {account: [line, home_line]}, "production": {account: [pull_line], "root": [admin_line]}}
    for role, per_user in files.items():
        ak = lab.dir / f"authorized_keys-{role}"
        ak.mkdir(exist_ok=True)
        os.chmod(ak, 0o755)
        for user, lines in per_user.items():
            (ak / user).write_text("\n".join(lines) + "\n")
            os.chmod(ak / user, 0o644)
    started = {}
    for role, entry in (("dr", "sshd"), ("production", "sshd_production")):
        old = state.get(entry)
        box = b[role]
        if old and _alive(old["pid"]):
            continue
        s = sshd_mod.start(str(lab.dir), box.address, SSH_PORT, str(lab.dir / f"authorized_keys-{role}"),
                           netns=box.netns, name=f"sshd-{role}", root_login=role == "production")
        started[entry] = {"pid": s.pid, "address": box.address, "port": SSH_PORT, "account": account,
                          "host_key": sshd_mod.host_fingerprint(str(lab.dir), f"sshd-{role}"), "netns": box.netns}
        say(f"sshd {role} {box.address}:{SSH_PORT} in {box.netns}")
    state.update({k: {**state.get(k, {}), **v} for k, v in started.items()})
    state["sshd"].update({"key": str(keys / "id_ed25519"), "authorized_line": line, "sudoers": sudoers,
                          "home_key": str(keys / "home_ed25519"), "home_line": home_line,
                          "pull_key": str(keys / "pull_ed25519"), "pull_line": pull_line})
    state["sshd_production"].update({"admin_key": str(keys / "admin_ed25519"), "admin_line": admin_line})


def dr_push_view(lines: list[str], state: dict, lab: Lab) -> list[str]:
    """site.yaml's lines as the DR box keeps them for push mode's failover, reprotect and
    failback: ss2 local, production reached as root with DR's admin key (zfs and tgtadm there);
    the DR box's own state directory (its journals, marker and pins)."""
    p = state["sshd_production"]
    start = lines.index("storage:")
    end = next(i for i in range(start + 1, len(lines)) if not lines[i].startswith(" "))
    storage = lines[start:end]
    ss2 = storage.index("  ss2:")
    from esxdr.lab.sitefiles import target_lines

    view = ["storage:", "  ss1:", "    role: production", f"    address: {p['address']}", f"    port: {p['port']}",
            "    user: root", f"    key: {p['admin_key']}", f"    host_key: {p['host_key']}", "    zfs: auto",
            *target_lines(storage[1:ss2]),
            "  ss2:", "    role: dr", "    local: true", "    zfs: auto", *target_lines(storage[ss2:])]
    out = [f"state_dir: {lab.dir / 'state-dr'}" if ln.startswith("state_dir: ") else ln for ln in lines]
    out[0] = "# Written by `esxdr lab up --boxes`: the DR box's site for failover, reprotect and failback."
    return out[:start] + view + out[end:]


def status(state: dict) -> list[dict]:
    have = netns.existing()
    out = [{"kind": "netns", "role": role, "name": x["netns"], "address": x["address"], "up": x["netns"] in have}
           for role, x in state.get("boxes", {}).items()]
    if state.get("sshd_production"):
        s = state["sshd_production"]
        out.append({"kind": "sshd", "role": "production", "address": f"{s['address']}:{s['port']}",
                    "account": f"{s['account']} (pull), root (DR's admin key)", "host_key": s["host_key"],
                    "up": _alive(s["pid"])})
    return out


def namespaces(lab: Lab, state: dict) -> set[str]:
    """Every namespace this lab may have made: those in its state, and its prefix's two names
    even when the state file is gone (a crash between creating them and saving it)."""
    return {x["netns"] for x in state.get("boxes", {}).values()} | {x.netns for x in pair(lab).values()}


def _alive(pid: int) -> bool:
    from esxdr.util import pid_running

    return pid_running(pid)


def site_path_for(lab: Lab) -> Path:
    return lab.dir / "site-dr-push.yaml"

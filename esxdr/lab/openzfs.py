"""The OpenZFS 2.x lane: a Debian guest with real OpenZFS under qemu (see scripts/openzfs-lane).

The host reaches the guest only through qemu hostfwd ports on 127.0.0.1 (SSH and
iSCSI). Nothing here ever connects to the guest's own address (10.0.2.15 on
qemu's internal user net) or follows an iSCSI discovery answer: every address is
checked to be in 127.0.0.0/8 before use.

``Lane.from_env()`` reads what ``scripts/openzfs-lane up`` writes to its env file:
ESXDR_OPENZFS_SSH (127.0.0.1:PORT), ESXDR_OPENZFS_ISCSI, ESXDR_OPENZFS_KEY (the
lane's root key), ESXDR_OPENZFS_KNOWN_HOSTS and ESXDR_OPENZFS_DISKS.
"""

from __future__ import annotations

import ipaddress
import os
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

NOT_RUNNING = "OpenZFS lane not running: scripts/openzfs-lane up (then export the variables it prints)"

# What the DR service account may do under its prefix, by delegation (no sudo, no root).
# mount is needed by destroy/rollback/receive even with receive -u; the account still
# cannot mount anything on Linux (that needs root), which suits replicas that stay unmounted.
DR_PERMISSIONS = ("create,destroy,mount,receive,rollback,snapshot,hold,release,send,clone,bookmark,"
                  "userprop,readonly,canmount,compression,volsize,refreservation")


def loopback(address: str) -> str:
    """Refuse any address outside 127.0.0.0/8 (the lane's one network rule)."""
    if not ipaddress.ip_address(address).is_loopback or ipaddress.ip_address(address).version != 4:
        raise ValueError(f"{address} is not in 127.0.0.0/8; the OpenZFS lane is reached only through "
                         "qemu hostfwd ports on 127.0.0.1")
    return address


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return loopback(host), int(port)


@dataclass
class Lane:
    ssh_address: str
    ssh_port: int
    iscsi_address: str
    iscsi_port: int
    key: str
    known_hosts: str
    disks: list[str] = field(default_factory=list)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Lane | None:
        env = dict(os.environ if env is None else env)
        need = ("ESXDR_OPENZFS_SSH", "ESXDR_OPENZFS_ISCSI", "ESXDR_OPENZFS_KEY", "ESXDR_OPENZFS_KNOWN_HOSTS")
        if not all(env.get(k) for k in need):
            return None
        sa, sp = _hostport(env["ESXDR_OPENZFS_SSH"])
        ia, ip = _hostport(env["ESXDR_OPENZFS_ISCSI"])
        disks = [d for d in env.get("ESXDR_OPENZFS_DISKS", "").split(",") if d]
        return cls(sa, sp, ia, ip, env["ESXDR_OPENZFS_KEY"], env["ESXDR_OPENZFS_KNOWN_HOSTS"], disks)

    # -- ssh as root (the lane's own key; host key pinned in known_hosts) -------------
    def ssh_argv(self, user: str = "root", key: str | None = None) -> list[str]:
        # One multiplexed connection per account: an SSH handshake costs seconds under
        # emulation. The masters exit after 30 s idle; `scripts/openzfs-lane down` ends them.
        control = Path(self.key).parent / "cm-%C"
        return ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "ConnectTimeout=15", "-o", "LogLevel=ERROR",
                "-o", "ControlMaster=auto", "-o", f"ControlPath={control}", "-o", "ControlPersist=30",
                "-i", key or self.key, "-p", str(self.ssh_port), f"{user}@{loopback(self.ssh_address)}"]

    def run(self, command: str | list[str], *, check: bool = True, input: bytes | str | None = None,
            timeout: float = 600, user: str = "root", key: str | None = None) -> subprocess.CompletedProcess:
        """Run a command in the guest (a string is a shell command line, a list is quoted)."""
        line = command if isinstance(command, str) else shlex.join(command)
        text = not isinstance(input, bytes)
        r = subprocess.run([*self.ssh_argv(user, key), line], input=input, capture_output=True, text=text,
                           timeout=timeout)
        if check and r.returncode != 0:
            raise subprocess.CalledProcessError(r.returncode, line, r.stdout, r.stderr)
        return r

    def out(self, command: str | list[str], **kw) -> str:
        return self.run(command, **kw).stdout

    def host_fingerprint(self) -> str:
        """SHA256:… of the guest's host key, for a site file's host_key."""
        out = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", self.known_hosts], check=True,
                             capture_output=True, text=True).stdout
        return out.split()[1]

    def zfs_version(self) -> str:
        return self.out("zfs version").splitlines()[0].strip()

    # -- storage in the guest -------------------------------------------------------
    def ensure_pool(self, name: str, disk: str) -> None:
        """A pool on a data disk addressed by its virtio serial (disk order is not stable)."""
        if self.run(["zpool", "list", "-H", name], check=False).returncode == 0:
            return
        self.run(["zpool", "create", "-f", "-o", "ashift=12", "-O", "compression=off", "-O", "mountpoint=/" + name,
                  name, disk])

    def dr_account(self, user: str, prefix: str, pubkey: str, log: str = "/var/log/esxdr-serve.log",
                   permissions: str = DR_PERMISSIONS, on: str | None = None) -> str:
        """The DR service account: forced `esxdr serve`, zfs rights by `zfs allow`, no sudo.

        The rights go on ``on`` (default: the prefix's pool). Returns the authorized_keys line installed.
        """
        line = f'command="/usr/local/bin/esxdr serve --allow-prefix {prefix} --log {log}",restrict {pubkey.strip()}'
        script = f"""set -e
id {user} >/dev/null 2>&1 || useradd -m -s /bin/sh {user}
usermod -p '*' {user}
home=$(getent passwd {user} | cut -d: -f6)
mkdir -p "$home/.ssh"
printf '%s\\n' {shlex.quote(line)} > "$home/.ssh/authorized_keys"
chown -R {user}: "$home/.ssh"; chmod 700 "$home/.ssh"; chmod 600 "$home/.ssh/authorized_keys"
touch {log}; chmod 666 {log}
zfs allow -u {user} {permissions} {on or prefix.split('/')[0]}
"""
        self.run(script)
        return line


def site_storage(lane: Lane, name: str, role: str, *, user: str = "root", key: str | None = None,
                 serve_prefix: str | None = None) -> str:
    """A storage entry of a site file for the guest (as YAML text)."""
    lines = [f"  {name}:", f"    role: {role}", f"    address: {loopback(lane.ssh_address)}",
             f"    port: {lane.ssh_port}", f"    user: {user}", f"    key: {key or lane.key}",
             f"    host_key: {lane.host_fingerprint()}", "    zfs: auto"]
    if serve_prefix:
        lines.append(f"    serve_prefix: {serve_prefix}")
    return "\n".join(lines) + "\n"


def keygen(path: Path, comment: str) -> str:
    if not path.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True)
    return path.with_name(path.name + ".pub").read_text().strip()

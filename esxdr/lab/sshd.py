"""A dedicated OpenSSH sshd on 127.0.0.1 for the lab's DR service account.

The account's only way in is its authorized_keys line, whose forced command is
`esxdr serve`; zfs-fuse needs root, so the account may run exactly
/usr/sbin/zfs through sudo (on OpenZFS, `zfs allow` delegation replaces that).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from esxdr.lab.netns import netns_prefix
from esxdr.lab.tgtd import _port_open
from esxdr.util import pid_running


@dataclass
class Sshd:
    pid: int
    address: str
    port: int
    config: str

    def stop(self) -> None:
        try:
            os.kill(self.pid, 15)
        except OSError:
            return
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and pid_running(self.pid):
            time.sleep(0.05)


def ensure_account(user: str, home: str) -> None:
    try:
        pwd.getpwnam(user)
        return
    except KeyError:
        pass
    subprocess.run(["useradd", "--system", "--home-dir", home, "--no-create-home", "--shell", "/bin/sh", user],
                   check=True, capture_output=True)
    # useradd leaves the password "!" (locked); sshd without PAM refuses locked accounts even for
    # key logins, while "*" means "no password" and keeps key-only access working.
    subprocess.run(["usermod", "-p", "*", user], check=True, capture_output=True)


def remove_account(user: str) -> None:
    try:
        pwd.getpwnam(user)
    except KeyError:
        return
    subprocess.run(["userdel", user], check=False, capture_output=True)


def write_sudoers(user: str, path: str) -> None:
    zfs = shutil.which("zfs") or "/usr/sbin/zfs"
    Path(path).write_text(f"# esxdr lab: the DR service account may run zfs only\n"
                          f"{user} ALL=(root) NOPASSWD: {zfs}\n"
                          f"Defaults:{user} !requiretty\n")
    os.chmod(path, 0o440)


def keygen(path: str, comment: str) -> str:
    if not Path(path).exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path],
                       check=True, capture_output=True)
    return Path(path + ".pub").read_text().strip()


def start(lab_dir: str, address: str, port: int, authorized_keys_dir: str, *, netns: str | None = None,
          name: str = "sshd", root_login: bool = False) -> Sshd:
    """An sshd of the lab's own (config, host key and log under ``lab_dir/name``); with ``netns``, in
    that network namespace. ``root_login``: root may log in with a key (production's admin account
    in the two-box lab, which DR's push-mode failback needs)."""
    d = Path(lab_dir) / name
    d.mkdir(parents=True, exist_ok=True)
    host_key = d / "ssh_host_ed25519_key"
    keygen(str(host_key), "esxdr-lab-host")
    config = d / "sshd_config"
    config.write_text(f"""# esxdr lab sshd
ListenAddress {address}:{port}
HostKey {host_key}
PidFile {d}/sshd.pid
AuthorizedKeysFile {authorized_keys_dir}/%u
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin {'prohibit-password' if root_login else 'no'}
UsePAM no
StrictModes yes
AllowTcpForwarding no
X11Forwarding no
PermitTTY no
# A client that vanished (its link cut) is dropped within 45 s, and with it the session's
# `zfs receive`, which would otherwise hold its dataset until TCP gave up, hours later.
ClientAliveInterval 15
ClientAliveCountMax 3
MaxStartups 100:30:200
MaxSessions 100
LogLevel ERROR
""")
    Path("/run/sshd").mkdir(exist_ok=True)
    proc = subprocess.Popen(netns_prefix(netns) + ["/usr/sbin/sshd", "-D", "-e", "-f", str(config)], stdout=subprocess.DEVNULL,
                            stderr=open(d / "sshd.log", "ab"), start_new_session=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited with {proc.returncode}; see {d / 'sshd.log'}")
        if _port_open(address, port, netns):
            return Sshd(pid=proc.pid, address=address, port=port, config=str(config))
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"sshd did not listen on {address}:{port}")


def host_fingerprint(lab_dir: str, name: str = "sshd") -> str:
    out = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f",
                          str(Path(lab_dir) / name / "ssh_host_ed25519_key.pub")],
                         check=True, capture_output=True, text=True).stdout
    return out.split()[1]

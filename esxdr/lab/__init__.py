"""The embedded lab: a production and a DR site on this machine's loopback.

``Lab.up()`` starts (idempotently): zfs-fuse with a production pool and a DR
pool on sparse file vdevs, LUN files on sp1/iscsi/lun0..N, an sshd on
127.0.0.1 with the DR service account behind `esxdr serve`, one tgtd per site
(production portal 127.0.0.1, DR portal 127.0.0.2) and, when it can be built,
one esxsim per site. It writes a ready site file. ``Lab.down()`` leaves no
process, pool, mount, account or file behind.

Needs root on Debian 12; missing packages are installed with apt.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from esxdr.errors import UsageError
from esxdr.lab import zfsfuse
from esxdr.model import manifest as mf
from esxdr.util import atomic_write, pid_running

PACKAGES = {"zfs-fuse": "zfs", "tgt": "tgtd", "openssh-server": "sshd", "openssh-client": "ssh", "sudo": "sudo"}
DEFAULT_DIR = "/var/lib/esxdr-lab"


def ensure_packages(extra: dict[str, str] | None = None) -> None:
    wanted = {**PACKAGES, **(extra or {})}
    missing = [pkg for pkg, binary in wanted.items()
               if not (shutil.which(binary) or Path("/usr/sbin", binary).exists())]
    if not missing:
        return
    if os.geteuid() != 0:
        raise UsageError(f"the lab needs these packages: {' '.join(missing)}", hint="run as root on Debian 12")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=False, env=env, capture_output=True)
    r = subprocess.run(["apt-get", "install", "-y", "-qq", *missing], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise UsageError(f"apt-get install {' '.join(missing)} failed: {r.stderr.strip()[-500:]}")


def zfs_fuse_running() -> bool:
    return zfsfuse.running()


def ensure_zfs_fuse(timeout: float = 20.0, vdev_dirs: tuple[Path, ...] = ()) -> str:
    """Start zfs-fuse, or restart a hung one; returns what it found ("up", "down" or "hung")."""
    return zfsfuse.ensure(timeout, vdev_dirs)


@dataclass
class LabConfig:
    dir: str = DEFAULT_DIR
    prod_pool: str = "sp1"
    dr_pool: str = "rp1"
    luns: int = 3
    lun_size: int = 64 << 20
    pool_size: int = 2 << 30
    account: str = "esxdr-dr"
    group: str = "core"
    with_tgt: bool = True
    with_esxsim: bool = True
    esxsim_profile: str | None = None  # "realistic": a real host's pace; None: ESXSIM_PROFILE or "lab"
    # --boxes: production and DR in network namespaces <netns_prefix>-prod and -dr (lab/boxes.py)
    boxes: bool = False
    netns_prefix: str = "esxdr"


@dataclass
class Lab:
    cfg: LabConfig = field(default_factory=LabConfig)

    @property
    def dir(self) -> Path:
        return Path(self.cfg.dir)

    @property
    def state_path(self) -> Path:
        return self.dir / "lab.json"

    @property
    def site_path(self) -> Path:
        return self.dir / "site.yaml"

    @property
    def dr_site_path(self) -> Path:
        """The site as the DR box sees it, for pull mode: ss2 is here, ss1 is reached through
        production's send-only account (`esxdr serve --send-only`) with DR's own key."""
        return self.dir / "site-dr.yaml"

    @property
    def production_pull_site_path(self) -> Path:
        """Production's own site in pull mode: ss2 pulls (`pulls: true`), no key or account for it."""
        return self.dir / "site-production-pull.yaml"

    @property
    def dr_push_site_path(self) -> Path:
        """The two-box lab's DR box in push mode (failover, reprotect, failback there): ss2 here,
        production reached as root with DR's admin key."""
        return self.dir / "site-dr-push.yaml"

    @property
    def production_home_site_path(self) -> Path:
        """Production's site for the way home in pull mode: ss1 here, ss2 reached through DR's
        send-only account (`esxdr serve --send-only`) with production's home key."""
        return self.dir / "site-production-home.yaml"

    @property
    def boxed(self) -> bool:
        """The two-box lab: asked for now, or already up as one (`up`, `status` and `down` follow it)."""
        return self.cfg.boxes or bool(self.state().get("boxes"))

    def box(self, role: str) -> tuple[str | None, str]:
        """Where ``role``'s daemons run: (network namespace or None, address)."""
        if self.boxed:
            from esxdr.lab import boxes

            b = boxes.pair(self)[role]
            return b.netns, b.address
        return None, {"production": "127.0.0.1", "dr": "127.0.0.2"}[role]

    def state(self) -> dict:
        try:
            return json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return {}

    def _save(self, state: dict) -> None:
        atomic_write(self.state_path, json.dumps(state, indent=2))

    # -- up ----------------------------------------------------------------------
    def up(self, say=lambda s: None) -> dict:
        if os.geteuid() != 0:
            raise UsageError("the lab must run as root (zfs-fuse, tgtd, useradd)")
        ensure_packages()
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o755)
        state = self.state()
        if self.cfg.boxes and state.get("sshd") and not state.get("boxes"):
            raise UsageError(f"the lab in {self.dir} is up on loopback; it does not become two boxes in place",
                             hint=f"esxdr lab down --dir {self.dir}, then esxdr lab up --boxes")
        found = ensure_zfs_fuse(vdev_dirs=(self.dir / "vdevs",))
        say({"up": "zfs-fuse running", "down": "zfs-fuse started",
             "hung": "zfs-fuse was hung (not answering): restarted"}[found])
        if self.boxed:
            from esxdr.lab import boxes

            boxes.network(self, state, say)
            self._save(state)  # the namespaces are on record before anything starts in them
            self._pools(state, say)
            boxes.ssh(self, state, say)
        else:
            self._pools(state, say)
            self._ssh(state, say)
        if self.cfg.with_tgt:
            self._tgtds(state, say)
        if self.cfg.with_esxsim:
            self._esxsim(state, say)
        self._save(state)
        if self.cfg.with_tgt and self.cfg.luns:
            self._seed(state, say)
        self._save(state)
        self._write_site(state)
        say(f"site file: {self.site_path}")
        return self.status()

    def _pools(self, state: dict, say) -> None:
        vdevs = self.dir / "vdevs"
        vdevs.mkdir(exist_ok=True)
        mnt = self.dir / "mnt"
        for pool in (self.cfg.prod_pool, self.cfg.dr_pool):
            if subprocess.run(["zpool", "list", "-H", pool], capture_output=True).returncode == 0:
                continue
            img = vdevs / f"{pool}.img"
            with open(img, "wb") as f:
                f.truncate(self.cfg.pool_size)
            run(["zpool", "create", "-f", "-m", str(mnt / pool), pool, str(img)])
            say(f"pool {pool} on {img}")
        root = f"{self.cfg.prod_pool}/iscsi"
        if not _exists(root):
            run(["zfs", "create", root])
        for i in range(self.cfg.luns):
            ds = f"{root}/lun{i}"
            if not _exists(ds):
                run(["zfs", "create", ds])
            lun = mnt / self.cfg.prod_pool / "iscsi" / f"lun{i}" / "lun.img"
            if not lun.exists():
                with open(lun, "wb") as f:
                    f.truncate(self.cfg.lun_size)
                say(f"LUN file {lun} ({self.cfg.lun_size >> 20} MiB)")
        state["pools"] = {"production": self.cfg.prod_pool, "dr": self.cfg.dr_pool,
                          "vdevs": str(vdevs), "mountpoint_root": str(mnt)}
        state["luns"] = [f"{root}/lun{i}" for i in range(self.cfg.luns)]

    def _serve_install(self) -> str:
        """What the service account runs: serve as one file (esxdr keys serve-file), as a storage
        box without an esxdr install would have it, so every test through the account runs that
        very file. Returns the command that starts it."""
        from esxdr import __version__
        from esxdr.serve.bundle import bundle

        path = self.dir / "bin" / "esxdr-serve"
        path.parent.mkdir(exist_ok=True)
        os.chmod(path.parent, 0o755)
        path.write_text(bundle(__version__))
        os.chmod(path, 0o755)
        return f"/usr/bin/python3 -I {path}"

    def _service_account(self) -> tuple[str, Path, str, Path]:
        """The service account behind every forced command of the lab (its sudoers rule for zfs),
        the keys directory, esxdr's copy the account runs, and serve's log: (sudoers, keys,
        launcher, log)."""
        from esxdr.lab import sshd as sshd_mod

        account = self.cfg.account
        home = self.dir / "home"
        home.mkdir(exist_ok=True)
        sshd_mod.ensure_account(account, str(home))
        sudoers = f"/etc/sudoers.d/{account.replace('.', '_')}"
        sshd_mod.write_sudoers(account, sudoers)
        keys = self.dir / "keys"
        keys.mkdir(exist_ok=True, mode=0o700)
        launcher = self._serve_install()
        log = self.dir / "serve.log"
        log.touch()
        os.chmod(log, 0o666)
        return sudoers, keys, launcher, log

    def _ssh(self, state: dict, say) -> None:
        from esxdr.lab import sshd as sshd_mod
        from esxdr.lab.tgtd import free_port

        account = self.cfg.account
        sudoers, keys, launcher, log = self._service_account()
        pub = sshd_mod.keygen(str(keys / "id_ed25519"), f"esxdr@{self.cfg.prod_pool}")
        ak_dir = self.dir / "authorized_keys"
        ak_dir.mkdir(exist_ok=True)
        os.chmod(ak_dir, 0o755)
        line = (f'command="{launcher} serve --sudo --allow-prefix {self.cfg.dr_pool} --log {log}",restrict {pub}')
        # Pull mode: DR's own key, whose line on production runs serve --send-only. Production and
        # DR share this machine (and this account) in the lab; each key gets its own forced command.
        pull_pub = sshd_mod.keygen(str(keys / "pull_ed25519"), f"esxdr-pull@{self.cfg.dr_pool}")
        pull_line = (f'command="{launcher} serve --sudo --send-only --allow-prefix {self.cfg.prod_pool}/iscsi '
                     f'--log {log}",restrict {pull_pub}')
        # The way home in pull mode: production's own key, whose line on DR runs serve --send-only
        # on the DR root (production pulls DR's final snapshot; it still holds no key that writes).
        home_pub = sshd_mod.keygen(str(keys / "home_ed25519"), f"esxdr-home@{self.cfg.prod_pool}")
        home_line = (f'command="{launcher} serve --sudo --send-only --allow-prefix {self.cfg.dr_pool}/iscsi '
                     f'--log {log}",restrict {home_pub}')
        (ak_dir / account).write_text(line + "\n" + pull_line + "\n" + home_line + "\n")
        os.chmod(ak_dir / account, 0o644)
        old = state.get("sshd")
        more = {"pull_key": str(keys / "pull_ed25519"), "pull_line": pull_line,
                "home_key": str(keys / "home_ed25519"), "home_line": home_line}
        if old and _alive(old["pid"]):
            old.update(more)  # a lab from before pull mode
            return
        port = free_port("127.0.0.1")
        s = sshd_mod.start(str(self.dir), "127.0.0.1", port, str(ak_dir))
        state["sshd"] = {"pid": s.pid, "address": "127.0.0.1", "port": port, "account": account,
                         "key": str(keys / "id_ed25519"), "host_key": sshd_mod.host_fingerprint(str(self.dir)),
                         "authorized_line": line, "sudoers": sudoers, **more}
        say(f"sshd 127.0.0.1:{port} (account {account}, forced command esxdr serve)")

    def _tgtds(self, state: dict, say) -> None:
        from esxdr.lab import tgtd

        state.setdefault("tgtd", {})
        for site in ("production", "dr"):
            ns, addr = self.box(site)
            old = state["tgtd"].get(site)
            if old and _alive(old["pid"]):
                continue
            port = 3260 if ns else tgtd.free_port(addr)  # a box of its own: the standard port is free
            t = tgtd.start(tgtd.free_control_port(), addr, port, str(self.dir / f"tgtd-{site}.log"), netns=ns)
            state["tgtd"][site] = {"pid": t.pid, "portal": t.portal, "control_port": t.control_port}
            say(f"tgtd {site} portal {t.portal} (control port {t.control_port})")

    def _esxsim(self, state: dict, say) -> None:
        try:
            from esxdr.lab import esxsim
        except ImportError:
            return
        if not shutil.which("go"):
            ensure_packages({"golang-go": "go"})
        state.setdefault("esxsim", {})
        from esxdr.lab.tgtd import free_port

        for site, host in (("production", "esx-prod"), ("dr", "esx-dr")):
            ns, addr = self.box(site)
            old = state["esxsim"].get(site)
            if old and _alive(old["pid"]):
                continue
            datadir = self.dir / f"esxsim-{host}"
            datadir.mkdir(exist_ok=True)
            # On a box of its own, as a real host: https on 443, reached with a pinned thumbprint
            # (esxdr refuses plain http to anything but loopback).
            p = esxsim.start(host, addr, 443 if ns else free_port(addr), str(datadir),
                             iqn=f"iqn.1998-01.com.vmware:{host}", password="esxsim",
                             log_path=str(self.dir / f"esxsim-{host}.log"), profile=self.cfg.esxsim_profile,
                             tls=bool(ns), netns=ns)
            state["esxsim"][site] = {"pid": p.pid, "url": p.url, "username": p.username, "password": p.password,
                                     "host": host, "thumbprint": getattr(p, "thumbprint", None)}
            say(f"esxsim {host} at {p.url}")

    def _seed(self, state: dict, say) -> None:
        from esxdr.lab import netns, seed

        ns, _addr = self.box("production")
        m = seed.export_production(state, str(self.dir), self.cfg.prod_pool, self.cfg.luns, self.cfg.lun_size,
                                   initiators="198.18.0.0/24" if ns else "127.0.0.0/8")
        path = self.dir / "production-manifest.yaml"
        mf.save(m, path)
        state["production_manifest"] = str(path)
        say(f"tgtd production exports {len(m.logical_units)} LUNs with COMSTAR-style NAAs ({path})")
        if "esxsim" in state and "production" in state["esxsim"]:
            with netns.entered(ns):  # esx-prod answers inside production's box only
                state["seed"] = seed.seed_esx_prod(state["esxsim"]["production"],
                                                   state["tgtd"]["production"]["portal"], m, say)

    def _write_site(self, state: dict) -> None:
        from esxdr.lab import sitefiles

        sitefiles.write(self, state)

    # -- status / down ---------------------------------------------------------------
    def status(self) -> dict:
        state = self.state()
        zstate, imported = zfsfuse.check()
        out: dict = {"dir": str(self.dir), "site": str(self.site_path) if self.site_path.exists() else None,
                     "zfs_fuse": zstate == "up", "zfs_fuse_state": zstate, "components": []}
        if state.get("pools"):
            for role in ("production", "dr"):
                name = state["pools"][role]
                out["components"].append({"kind": "pool", "role": role, "name": name, "up": name in imported})
        if state.get("sshd"):
            s = state["sshd"]
            out["components"].append({"kind": "sshd", "role": "dr", "address": f"{s['address']}:{s['port']}",
                                      "account": s["account"], "host_key": s["host_key"], "up": _alive(s["pid"])})
        if state.get("boxes"):
            from esxdr.lab import boxes

            out["components"] += boxes.status(state)
        for role, t in state.get("tgtd", {}).items():
            out["components"].append({"kind": "tgtd", "role": role, "portal": t["portal"],
                                      "control_port": t["control_port"], "up": _alive(t["pid"])})
        for role, e in state.get("esxsim", {}).items():
            out["components"].append({"kind": "esxsim", "role": role, "host": e["host"], "url": e["url"],
                                      "username": e["username"], "password": e["password"], "up": _alive(e["pid"])})
        return out

    def up_plan(self) -> list[str]:
        """What `up` would start or create now (for --dry-run): the components not up."""
        st = self.status()
        todo = {"down": ["start zfs-fuse"], "hung": ["restart zfs-fuse (hung: not answering)"]}.get(
            st["zfs_fuse_state"], [])
        up = {(c["kind"], c.get("role")) for c in st["components"] if c["up"]}
        wanted = [("pool", "production", self.cfg.prod_pool), ("pool", "dr", self.cfg.dr_pool),
                  ("sshd", "dr", f"sshd with the DR account {self.cfg.account}")]
        if self.boxed:
            wanted = [("netns", "production", f"network namespace {self.cfg.netns_prefix}-prod"),
                      ("netns", "dr", f"network namespace {self.cfg.netns_prefix}-dr"), *wanted,
                      ("sshd", "production", "production's sshd (pull and admin accounts)")]
        if self.cfg.with_tgt:
            wanted += [("tgtd", "production", "tgtd for production"), ("tgtd", "dr", "tgtd for DR")]
        if self.cfg.with_esxsim:
            wanted += [("esxsim", "production", "esxsim esx-prod"), ("esxsim", "dr", "esxsim esx-dr")]
        for kind, role, what in wanted:
            if (kind, role) not in up:
                todo.append({"pool": f"create pool {what}", "netns": f"create {what}"}.get(kind, f"start {what}"))
        if not self.site_path.exists():
            todo.append(f"write {self.site_path}")
        return todo

    def down_plan(self) -> list[str]:
        """What `down` would stop or remove now (for --dry-run)."""
        state = self.state()
        todo = [f"stop esxsim {role} (pid {e['pid']})" for role, e in state.get("esxsim", {}).items()]
        todo += [f"stop tgtd {role} (pid {t['pid']})" for role, t in state.get("tgtd", {}).items()]
        if state.get("sshd"):
            todo.append(f"stop sshd (pid {state['sshd']['pid']}), remove the account {state['sshd']['account']}")
        if state.get("sshd_production"):
            todo.append(f"stop production's sshd (pid {state['sshd_production']['pid']})")
        pools = state.get("pools") or {"production": self.cfg.prod_pool, "dr": self.cfg.dr_pool}
        zstate, imported = zfsfuse.check()
        if zstate == "hung":
            todo.append("restart zfs-fuse (hung: not answering) to destroy the pools")
        for role in ("dr", "production"):
            if pools[role] in imported:
                todo.append(f"destroy pool {pools[role]}")
        from esxdr.lab import boxes, netns

        todo += [f"remove network namespace {n} (and every process left in it)"
                 for n in sorted(boxes.namespaces(self, state) & netns.existing())]
        if self.dir.exists():
            todo.append(f"remove {self.dir}")
        return todo

    def _account_is_ours(self) -> bool:
        return _home_of(self.cfg.account) == str(self.dir / "home")

    def down(self, say=lambda s: None) -> None:
        state = self.state()
        for _role, e in state.get("esxsim", {}).items():
            _kill(e["pid"])
        for role, t in state.get("tgtd", {}).items():
            from esxdr.lab.tgtd import Tgtd

            Tgtd(control_port=t["control_port"], portal=t["portal"], pid=t["pid"], log_path="").stop()
            say(f"tgtd {role} stopped")
        if state.get("sshd_production"):
            _kill(state["sshd_production"]["pid"])
        if state.get("sshd"):
            _kill(state["sshd"]["pid"])
            from esxdr.lab.sshd import remove_account

            remove_account(state["sshd"]["account"])
            Path(state["sshd"].get("sudoers", "/nonexistent")).unlink(missing_ok=True)
            say("sshd stopped, account removed")
        elif self._account_is_ours():
            # the state is lost (a crash): the account is still the lab's when its home is ours
            from esxdr.lab.sshd import remove_account

            remove_account(self.cfg.account)
            Path(f"/etc/sudoers.d/{self.cfg.account.replace('.', '_')}").unlink(missing_ok=True)
            say(f"account {self.cfg.account} removed")
        from esxdr.lab import boxes, netns

        # Whatever the state file says or lost: a process started in a box dies with it.
        for name in netns.destroy(boxes.namespaces(self, state)):
            say(f"network namespace {name} removed")
        pools = state.get("pools") or {"production": self.cfg.prod_pool, "dr": self.cfg.dr_pool}
        zstate, imported = zfsfuse.check()
        if zstate == "hung":
            # its pools can only be destroyed by a daemon that answers
            zfsfuse.restart([self.dir / "vdevs"])
            say("zfs-fuse was hung: restarted")
            imported = zfsfuse.pool_names() or []
        for role in ("dr", "production"):
            name = pools[role]
            if name in imported:
                _destroy_pool(name)
                say(f"pool {name} destroyed")
        if self.dir.exists():
            shutil.rmtree(self.dir, ignore_errors=True)


def _home_of(user: str) -> str | None:
    import pwd

    try:
        return pwd.getpwnam(user).pw_dir
    except KeyError:
        return None


def _destroy_pool(name: str) -> None:
    # zfs-fuse may report a just-used dataset as busy for a moment: retry.
    for _ in range(20):
        if subprocess.run(["zpool", "destroy", "-f", name], capture_output=True).returncode == 0:
            return
        time.sleep(0.5)
    raise RuntimeError(f"could not destroy pool {name}")


def _exists(ds: str) -> bool:
    return subprocess.run(["zfs", "list", "-H", "-o", "name", ds], capture_output=True).returncode == 0


def _alive(pid: int) -> bool:
    return pid_running(pid)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, 15)
    except OSError:
        return
    for _ in range(100):
        if not _alive(pid):
            return
        time.sleep(0.05)
    try:
        os.kill(pid, 9)
    except OSError:
        pass


def run(argv: list[str]) -> str:
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        sys.stderr.write(r.stderr)
        raise UsageError(f"lab: `{' '.join(argv)}` failed: {r.stderr.strip()}")
    return r.stdout

"""Build, start and stop esxsim, the Go ESXi simulator of the lab (tests/esxsim).

Standard library only. esxsim prints one JSON line on stdout when its SOAP port is
ready ({"url", "thumbprint", "hostname", "iqn", "username", "pid", "api_type"}, and in
vCenter mode "hosts": [{"name", "moid", "iqn"}], "cluster", "drs"); logs go to stderr,
which we send to a log file. The password travels in the environment, never in argv.

``start(..., vcenter_hosts=["esx-a", "esx-b"], drs=True)`` serves a vCenter named
``name`` with one cluster of those hosts, each with its own software iSCSI initiator
(``iqn.1998-01.com.vmware:<host>``).

``start(..., profile="realistic")`` runs it at a real host's pace: guest heartbeats 45 s after
power-on and rescans that hold their call 35 s (esxsim ``-profile``; ``heartbeat_delay`` and
``rescan_delay`` override either value). Without ``profile`` esxsim takes ``ESXSIM_PROFILE``
from the environment, else the fast ``lab`` profile: ``ESXSIM_PROFILE=realistic`` runs a whole
test suite at that pace.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from esxdr.lab.netns import netns_prefix

DEFAULT_USERNAME = "root"
READY_TIMEOUT_S = 20.0
PROFILES = ("lab", "realistic")  # esxsim -profile: tests/esxsim/main.go Profiles


class EsxsimError(RuntimeError):
    """esxsim could not be built or started."""


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def build(root: Path | str | None = None, force: bool = False) -> Path:
    """Run scripts/build-esxsim (idempotent) and return the binary path."""
    base = Path(root) if root is not None else repo_root()
    script = base / "scripts" / "build-esxsim"
    cmd = [str(script)] + (["--force"] if force else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise EsxsimError(
            f"building esxsim failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}; "
            "install golang-go and golang-github-vmware-govmomi-dev, then run scripts/build-esxsim"
        )
    binary = base / "build" / "esxsim"
    if not binary.exists():
        raise EsxsimError(f"scripts/build-esxsim succeeded but {binary} is missing")
    return binary


@dataclass
class EsxsimProcess:
    """A running esxsim. stop() terminates it and waits."""

    name: str
    pid: int
    url: str
    host: str
    port: int
    username: str
    password: str = field(repr=False)
    thumbprint: str
    iqn: str
    datadir: Path
    log_path: Path
    popen: subprocess.Popen | None = field(default=None, repr=False, compare=False)
    api_type: str = "HostAgent"  # "VirtualCenter" in vCenter mode
    hosts: list[dict] = field(default_factory=list)  # vCenter mode: [{"name", "moid", "iqn"}]
    cluster: str = ""
    drs: bool | None = None
    profile: str = "lab"
    heartbeat_delay: float = 1.0  # seconds from power-on to a green guest heartbeat, as esxsim reports it
    rescan_delay: float = 0.0  # seconds a rescan call is held, as esxsim reports it

    @property
    def vcenter(self) -> bool:
        return self.api_type == "VirtualCenter"

    def host_iqn(self, host: str) -> str:
        """The software iSCSI initiator name of one host (vCenter mode) or of the host."""
        for h in self.hosts:
            if h["name"] == host:
                return h["iqn"]
        if not self.hosts and host == self.name:
            return self.iqn
        raise KeyError(f"esxsim {self.name} has no host {host!r}")

    def stop(self, timeout: float = 10.0) -> None:
        stop(self, timeout=timeout)

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _port_open(host: str, port: int, netns: str | None = None) -> bool:
    from esxdr.lab.netns import port_open

    return port_open(host, port, netns)


def start(
    name: str,
    listen_host: str,
    port: int,
    datadir: Path | str,
    iqn: str | None = None,
    password: str = "esxsim",
    heartbeat_delay: float | None = None,
    log_path: Path | str | None = None,
    username: str = DEFAULT_USERNAME,
    tls: bool = False,
    mount_registry: Path | str | None = None,
    binary: Path | str | None = None,
    ready_timeout: float = READY_TIMEOUT_S,
    vcenter_hosts: list[str] | None = None,
    drs: bool = True,
    cluster: str = "cluster0",
    dell_idrac: bool = False,
    profile: str | None = None,
    rescan_delay: float | None = None,
    netns: str | None = None,
) -> EsxsimProcess:
    """Start esxsim serving host `name` on listen_host:port and wait for its SOAP port.

    With ``vcenter_hosts`` it serves a vCenter named `name` instead: one cluster (``cluster``,
    DRS on or off) of those hosts; ``iqn`` is then ignored (each host has its own).
    ``profile``: esxsim's timing (``lab``, or ``realistic`` for a real host's pace; None: esxsim's
    own default, ``ESXSIM_PROFILE`` or ``lab``); an explicit
    ``heartbeat_delay`` / ``rescan_delay`` (seconds) overrides the profile's value.
    ``dell_idrac``: every host also has a Dell iDRAC USB NIC (vusb0, vmk1 at 169.254.0.2 on
    the hidden "iDRAC Network"), as real Dell hosts report it (esxsim -dell-idrac).
    ``netns``: run it in that network namespace (the two-box lab), on an address of 198.18.0.0/15.
    """
    from esxdr.lab.netns import is_lab_address

    if not (listen_host.startswith("127.") or is_lab_address(listen_host)):
        raise EsxsimError(f"esxsim listens on 127.0.0.0/8 and 198.18.0.0/15 only, not {listen_host}")
    if profile is not None and profile not in PROFILES:
        raise EsxsimError(f"esxsim profile {profile!r}: choose one of {', '.join(PROFILES)}")
    if vcenter_hosts is not None and (not vcenter_hosts or len(set(vcenter_hosts)) != len(vcenter_hosts)):
        raise EsxsimError(f"vcenter_hosts must name at least one host, each once: {vcenter_hosts!r}")
    exe = Path(binary) if binary else build()
    data = Path(datadir)
    data.mkdir(parents=True, exist_ok=True)
    logp = Path(log_path) if log_path else data / "esxsim.log"
    logp.parent.mkdir(parents=True, exist_ok=True)
    if _port_open(listen_host, port, netns):
        raise EsxsimError(f"{listen_host}:{port} is already in use; pick another port for esxsim {name}")
    cmd = [
        str(exe),
        "-listen",
        f"{listen_host}:{port}",
        "-hostname",
        name,
        "-datadir",
        str(data),
        "-username",
        username,
    ]
    if profile is not None:
        cmd += ["-profile", profile]
    if heartbeat_delay is not None:
        cmd += ["-heartbeat-delay", f"{heartbeat_delay}s"]
    if rescan_delay is not None:
        cmd += ["-rescan-delay", f"{rescan_delay}s"]
    if vcenter_hosts:
        cmd += ["-vcenter", "-hosts", ",".join(vcenter_hosts), "-cluster", cluster, f"-drs={str(drs).lower()}"]
    else:
        cmd += ["-iqn", iqn or f"iqn.1998-01.com.vmware:{name}"]
    if tls:
        cmd.append("-tls")
    if mount_registry:
        cmd += ["-mount-registry", str(mount_registry)]
    if dell_idrac:
        cmd.append("-dell-idrac")
    env = dict(os.environ)
    env["ESXSIM_PASSWORD"] = password
    logf = open(logp, "ab")
    try:
        popen = subprocess.Popen(
            netns_prefix(netns) + cmd,
            stdout=subprocess.PIPE,
            stderr=logf,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    finally:
        logf.close()
    assert popen.stdout is not None
    deadline = time.monotonic() + ready_timeout
    line = b""
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            break
        ready, _, _ = select.select([popen.stdout], [], [], 0.2)
        if ready:
            chunk = os.read(popen.stdout.fileno(), 4096)
            if not chunk:
                break
            line += chunk
            if b"\n" in line:
                break
    first = line.split(b"\n", 1)[0]
    if not first:
        popen.kill()
        popen.wait()
        tail = logp.read_text(errors="replace")[-2000:] if logp.exists() else ""
        raise EsxsimError(f"esxsim {name} did not become ready on {listen_host}:{port}: {tail}")
    info = json.loads(first)
    while time.monotonic() < deadline and not _port_open(listen_host, port, netns):
        time.sleep(0.05)
    # keep draining stdout so esxsim never blocks on a full pipe
    popen.stdout.close()
    return EsxsimProcess(
        name=name,
        pid=popen.pid,
        url=info["url"],
        host=listen_host,
        port=port,
        username=username,
        password=password,
        thumbprint=info.get("thumbprint", ""),
        iqn=info.get("iqn", ""),
        datadir=data,
        log_path=logp,
        popen=popen,
        api_type=info.get("api_type", "HostAgent"),
        hosts=list(info.get("hosts") or []),
        cluster=info.get("cluster", ""),
        drs=info.get("drs"),
        profile=info.get("profile") or profile or "lab",
        heartbeat_delay=float(info.get("heartbeat_delay_s", heartbeat_delay if heartbeat_delay is not None else 1.0)),
        rescan_delay=float(info.get("rescan_delay_s", rescan_delay or 0.0)),
    )


def stop(proc: EsxsimProcess, timeout: float = 10.0) -> None:
    """Terminate esxsim (it syncs datastores to their LUNs on SIGTERM) and wait."""
    if proc.popen is not None:
        if proc.popen.poll() is None:
            proc.popen.send_signal(signal.SIGTERM)
            try:
                proc.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait()
        return
    try:
        os.kill(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    try:
        os.kill(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass

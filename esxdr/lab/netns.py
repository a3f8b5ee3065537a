"""Network namespaces for the two-box lab (`esxdr lab up --boxes`).

Production and DR each get a network namespace of their own, joined by one veth pair and
addressed from 198.18.0.0/15, the range RFC 2544 sets aside for network tests. Neither namespace
has a route anywhere else, and the machine's own namespace has no address in the range: nothing
the lab starts can send a packet outside the two namespaces.

Processes are started in a namespace with ``nsenter --net``, which execs the command (its pid is
the daemon's) and, unlike ``ip netns exec``, keeps this machine's mount namespace: zfs-fuse's
``zfs unmount`` unmounts from the namespace of the process that runs it, so a box with mounts of
its own would keep a dataset mounted (busy) that the machine has unmounted. A check from this process (is a port open there?) enters the namespace for the
calling thread only, with setns(2), and leaves it again.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

CLONE_NEWNET = 0x40000000
LAB_NET = ipaddress.ip_network("198.18.0.0/15")
# one /24 on the link: the two boxes, and addresses for what lives on them (esx-dr's vmk1 at .12)
PRODUCTION_ADDRESS = "198.18.0.1"
DR_ADDRESS = "198.18.0.2"
PREFIX_LEN = 24


@dataclass(frozen=True)
class Box:
    """One site's namespace: its name, its end of the veth pair and its address."""

    role: str
    netns: str
    veth: str
    address: str

    def exec_prefix(self) -> list[str]:
        return netns_prefix(self.netns)

    def to_dict(self) -> dict[str, str]:
        return {"role": self.role, "netns": self.netns, "veth": self.veth, "address": self.address}


def boxes(prefix: str) -> dict[str, Box]:
    """The two boxes of a lab whose namespaces are named ``<prefix>-prod`` and ``<prefix>-dr``."""
    return {"production": Box("production", f"{prefix}-prod", "eth-prod", PRODUCTION_ADDRESS),
            "dr": Box("dr", f"{prefix}-dr", "eth-dr", DR_ADDRESS)}


def netns_prefix(netns: str | None) -> list[str]:
    """The argv prefix that runs a command in ``netns`` (nothing for None): its network only."""
    return ["nsenter", f"--net=/run/netns/{netns}"] if netns else []


def is_lab_address(host: str) -> bool:
    try:
        return ipaddress.ip_address(host) in LAB_NET
    except ValueError:
        return False


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {r.stderr.strip()}")
    return r


def existing() -> set[str]:
    out = _ip("netns", "list", check=False).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def supported() -> bool:
    """Whether this machine lets us make a namespace and a veth pair (root, a kernel with both)."""
    if os.geteuid() != 0:
        return False
    name = f"esxdr-probe-{os.getpid()}"
    try:
        if _ip("netns", "add", name, check=False).returncode != 0:
            return False
        return _ip("-n", name, "link", "add", "p0", "type", "veth", "peer", "name", "p1", check=False).returncode == 0
    finally:
        _ip("netns", "del", name, check=False)


def create(pair: dict[str, Box]) -> None:
    """Both namespaces, their loopback up, and the veth pair between them (idempotent)."""
    prod, dr = pair["production"], pair["dr"]
    have = existing()
    for b in (prod, dr):
        if b.netns not in have:
            _ip("netns", "add", b.netns)
        _ip("-n", b.netns, "link", "set", "lo", "up")
    if _ip("-n", prod.netns, "link", "show", prod.veth, check=False).returncode != 0:
        # created inside production's namespace, its peer moved straight into DR's
        _ip("-n", prod.netns, "link", "add", prod.veth, "type", "veth", "peer", "name", dr.veth,
            "netns", dr.netns)
    for b in (prod, dr):
        addrs = _ip("-n", b.netns, "-o", "addr", "show", "dev", b.veth).stdout
        if f"{b.address}/" not in addrs:
            _ip("-n", b.netns, "addr", "add", f"{b.address}/{PREFIX_LEN}", "dev", b.veth)
        _ip("-n", b.netns, "link", "set", b.veth, "up")


def set_link(box: Box, up: bool) -> None:
    """Cut (or restore) the link as the other box sees it: this box's end goes down, and every
    TCP stream across it stalls with no FIN or RST, as when a cable is pulled."""
    _ip("-n", box.netns, "link", "set", box.veth, "up" if up else "down")


def pids(netns: str) -> list[int]:
    out = _ip("netns", "pids", netns, check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def destroy(names: set[str], timeout: float = 10.0) -> list[str]:
    """Kill every process left in these namespaces, then remove them (the veth pair goes with
    them). Works from names alone, so a lab whose state file was lost is still cleaned up."""
    gone = []
    for name in sorted(names & existing()):
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids(name):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + timeout / 2
            while pids(name) and time.monotonic() < deadline:
                time.sleep(0.05)
            if not pids(name):
                break
        _ip("netns", "del", name, check=False)
        gone.append(name)
    return gone


@contextlib.contextmanager
def entered(netns: str | None) -> Iterator[None]:
    """Run the body with this thread in ``netns`` (None: stay where we are): the sockets it
    opens belong to that namespace. Other threads are not moved."""
    if not netns:
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)
    here = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net", os.O_RDONLY)
    there = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        if libc.setns(there, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {netns}")
        try:
            yield
        finally:
            if libc.setns(here, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back to this process's namespace")
    finally:
        os.close(there)
        os.close(here)


def port_open(address: str, port: int, netns: str | None = None, timeout: float = 0.5) -> bool:
    with entered(netns):
        try:
            with socket.create_connection((address, port), timeout=timeout):
                return True
        except OSError:
            return False

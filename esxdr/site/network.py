"""dr_network in the site file: each DR host's vSwitches, port groups, VMkernel NICs and software iSCSI."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import TypeVar

import yaml

from esxdr.site import values as v
from esxdr.site.model import (
    ChapSpec,
    HostNetwork,
    IscsiSpec,
    Portal,
    PortGroupSpec,
    StaticTarget,
    VmkernelNic,
    VSwitch,
)
from esxdr.site.nodes import Mark, Reader, Section, join, mark_of

HOSTNET_KEYS = ("vswitches", "port_groups", "vmkernel", "iscsi")
VSWITCH_KEYS = ("uplinks", "mtu", "active", "standby", "ports")
PORTGROUP_KEYS = ("vswitch", "vlan", "active_uplinks", "standby_uplinks", "isolated")
VMK_KEYS = ("port_group", "ip", "mtu")
ISCSI_KEYS = ("enabled", "bind", "send_targets", "static_targets", "chap")
PORTAL_KEYS = ("address", "port")
STATIC_KEYS = ("address", "port", "iqn")
CHAP_KEYS = ("name", "secret_file", "secret_env")

T = TypeVar("T")
_UPLINK = re.compile(r"^(vmnic|vusb)\d+$")


class NetworkReader:
    """Reads ``dr_network:``; every problem goes to the reader with its position."""

    def __init__(self, reader: Reader):
        self.r = reader

    def dr_network(self, node: yaml.Node | None) -> dict[str, HostNetwork]:
        out: dict[str, HostNetwork] = {}
        for host, hnode, where in self.r.entries(node, "dr_network", "DR hosts"):
            path = join("dr_network", host)
            h = self.r.mapping(hnode, path, HOSTNET_KEYS, where, "host network settings")
            if h is None:
                continue
            vswitches = {n: sw for n, sw in self._each(h, "vswitches", "vSwitches", self.vswitch)}
            port_groups = {n: pg for n, pg in self._each(h, "port_groups", "port groups", self.port_group)}
            vmkernel = {n: nic for n, nic in self._each(h, "vmkernel", "VMkernel NICs", self.vmknic)}
            iscsi = self.iscsi(h)
            out[host] = HostNetwork(host=host, vswitches=vswitches, port_groups=port_groups, vmkernel=vmkernel,
                                    iscsi=iscsi, endpoint="", line=where[0])
        return out

    def _each(self, h: Section, key: str, what: str,
              build: Callable[[str, yaml.Node, str, Mark], T | None]) -> Iterable[tuple[str, T]]:
        for name, node, where in self.r.entries(h.node(key), h.p(key), what):
            item = build(name, node, join(h.p(key), name), where)
            if item is not None:
                yield name, item

    def vswitch(self, name: str, node: yaml.Node, path: str, where: Mark) -> VSwitch | None:
        s = self.r.mapping(node, path, VSWITCH_KEYS, where, "vSwitch settings")
        if s is None:
            return None
        uplinks = s.strings("uplinks", "uplink NICs", check=_check_uplink) or ()
        active = s.strings("active", "uplink NICs", default=None, check=_check_uplink)
        standby = s.strings("standby", "uplink NICs", check=_check_uplink) or ()
        for key, names in (("active", active or ()), ("standby", standby)):
            for i, nic in enumerate(names):
                if nic not in uplinks:
                    self.r.fail(join(s.p(key), i), f"{nic} is not an uplink of {name} "
                                f"(uplinks: {', '.join(uplinks) or 'none'})", f"add it to {name}'s uplinks")
        for i, nic in enumerate(standby):
            if active and nic in active:
                self.r.fail(join(s.p("standby"), i), f"{nic} is both active and standby")
        if active is None:
            active = tuple(n for n in uplinks if n not in standby)
        return VSwitch(name=name, uplinks=uplinks, mtu=s.integer("mtu", default=1500, lo=1280, hi=9000) or 1500,
                       active=active, standby=standby, ports=s.integer("ports", default=128, lo=8, hi=4096) or 128)

    def port_group(self, name: str, node: yaml.Node, path: str, where: Mark) -> PortGroupSpec | None:
        s = self.r.mapping(node, path, PORTGROUP_KEYS, where, "port group settings")
        if s is None:
            return None
        return PortGroupSpec(
            name=name, vswitch=s.text("vswitch", required=True, hint="the vSwitch it lives on, e.g. vswitch: vSwitch1")
            or "", vlan=s.integer("vlan", default=0, lo=0, hi=4094) or 0,
            active_uplinks=s.strings("active_uplinks", "uplink NICs", default=None, check=_check_uplink),
            standby_uplinks=s.strings("standby_uplinks", "uplink NICs", default=None, check=_check_uplink),
            isolated=bool(s.flag("isolated", default=False)))

    def vmknic(self, name: str, node: yaml.Node, path: str, where: Mark) -> VmkernelNic | None:
        if not name.startswith("vmk") or not name[3:].isdigit():
            self.r.error(where, path, f"{name!r} is not a VMkernel NIC name", "they are named vmk0, vmk1, …")
        s = self.r.mapping(node, path, VMK_KEYS, where, "VMkernel NIC settings")
        if s is None:
            return None
        ip: str | None = None
        if (inode := s.node("ip")) is not None:
            text = self.r.text(inode, s.p("ip"), "an address with prefix length")
            if text is not None and text.lower() != "dhcp":
                try:
                    ip = v.check_interface(text)
                except v.Invalid as e:
                    self.r.error(inode, s.p("ip"), e.message, e.hint)
        return VmkernelNic(name=name, port_group=s.text("port_group", required=True,
                                                        hint="e.g. port_group: iSCSI-Net0") or "",
                           ip=ip, mtu=s.integer("mtu", default=1500, lo=1280, hi=9000) or 1500)

    def iscsi(self, h: Section) -> IscsiSpec | None:
        r = self.r
        s = h.section("iscsi", ISCSI_KEYS)
        if s is None:
            return None
        send: list[Portal] = []
        for i, item in enumerate(r.sequence(s.node("send_targets"), s.p("send_targets"), "portals")):
            path = join(s.p("send_targets"), i)
            r.marks[path] = mark_of(item)
            if isinstance(item, yaml.MappingNode):
                m = r.mapping(item, path, PORTAL_KEYS, mark_of(item))
                if m is None:
                    continue
                address = m.text("address", required=True, check=v.check_host)
                port = m.integer("port", default=3260, lo=1, hi=65535)
                if address and port:
                    send.append(Portal(address, port))
            elif (hp := r.checked(item, path, lambda t: v.split_host_port(t, 3260), "address:port")) is not None:
                send.append(Portal(*hp))
        static: list[StaticTarget] = []
        for i, item in enumerate(r.sequence(s.node("static_targets"), s.p("static_targets"), "targets")):
            path = join(s.p("static_targets"), i)
            r.marks[path] = mark_of(item)
            m = r.mapping(item, path, STATIC_KEYS, mark_of(item), "address, port and iqn")
            if m is None:
                continue
            address = m.text("address", required=True, check=v.check_host)
            port = m.integer("port", default=3260, lo=1, hi=65535)
            iqn = m.text("iqn", required=True, check=v.check_iqn, hint="the target's name, e.g. "
                         "iqn.2010-09.org.example:lun0")
            if address and port and iqn:
                static.append(StaticTarget(address, port, iqn))
        chap = None
        if (c := s.section("chap", CHAP_KEYS)) is not None:
            name = c.text("name", required=True, hint="the CHAP user name")
            secret_file = c.file("secret_file", secret=True, what="CHAP secret file")
            secret_env = c.text("secret_env", check=v.check_env_name)
            if "secret_file" in c and "secret_env" in c:
                r.error(c.key_mark("secret_env"), c.p("secret_env"), "secret_file and secret_env are both set",
                        "keep one of them")
            elif "secret_file" not in c and "secret_env" not in c:
                c.missing("secret_file", "secret_file: FILE (mode 0600) or secret_env: VAR")
            chap = ChapSpec(name=name or "", secret_file=secret_file, secret_env=secret_env)
        return IscsiSpec(enabled=bool(s.flag("enabled", default=True)),
                         bind=s.strings("bind", "VMkernel NIC names") or (),
                         send_targets=tuple(send), static_targets=tuple(static), chap=chap)


def _check_uplink(text: str) -> str:
    if not _UPLINK.match(text):
        raise v.Invalid(f"{text!r} is not a physical NIC name", "uplinks are named vmnic0, vmnic1, … (or vusb0)")
    return text

"""Load and check a site file: YAML → :class:`~esxdr.site.model.Site`, or every problem at once.

Two passes over one node tree. The first reads each section into model
values, checking types, enums, formats and files; the second checks what
spans sections (references between objects, roles, dataset placement,
network consistency). Problems from both are sorted by position and raised
together as one :class:`~esxdr.errors.SiteError`.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Iterable
from typing import TypeVar
from urllib.parse import urlsplit

import yaml

from esxdr.errors import SiteError, UsageError
from esxdr.site import values as v
from esxdr.site.checks import CrossChecks
from esxdr.site.model import (
    CALLOUT_RUNS,
    CALLOUT_STEP_KINDS,
    KEEP_PERIODS,
    Callout,
    ChapSpec,
    HostNetwork,
    IscsiSpec,
    KeepRules,
    LunSpec,
    NetworkMap,
    Portal,
    PortGroupSpec,
    ProtectionGroup,
    RetentionPolicy,
    Schedule,
    Site,
    StaticTarget,
    StorageServer,
    TargetConfig,
    VmkernelNic,
    VmSpec,
    VsphereEndpoint,
    VSwitch,
)
from esxdr.site.nodes import Mark, Reader, Section, describe, did_you_mean, join, mark_of

T = TypeVar("T")

DEFAULT_STATE_DIR = "/var/lib/esxdr"

ROLES = ("production", "dr")
ZFS_FLAVOURS = ("auto", "openzfs", "legacy")
KINDS = ("esxi", "vcenter")
INCREMENTAL = ("intermediate", "direct")
COMPRESSION = ("auto", "zstd", "lz4", "none")
MBUFFER = ("auto", "on", "off")
CONSISTENCY = ("crash", "application")

SITE_KEYS = ("version", "name", "state_dir", "storage", "vsphere", "protection_groups", "dr_network")
STORAGE_KEYS = ("role", "local", "address", "port", "user", "key", "host_key", "known_hosts", "zfs",
                "zfs_command", "serve_prefix", "stream_ciphers", "target", "pulls")
TARGET_KEYS = ("stack", "portal", "control_port", "iqn_prefix")
VSPHERE_KEYS = ("role", "kind", "url", "user", "password_env", "password_file", "thumbprint", "ca_file", "hosts")
GROUP_KEYS = ("source", "destination", "source_root", "dr_root", "datasets", "incremental", "retention",
              "schedule", "rpo", "parallel", "compression", "bandwidth_limit", "mbuffer", "consistency",
              "vsphere_production", "vsphere_dr", "vms", "callouts", "bookmarks")
CALLOUT_KEYS = ("pre", "post", "runs", "timeout")
LUN_KEYS = ("name", "naa", "datastore", "vmfs_uuid")
RETENTION_KEYS = ("source", "destination", "prune_foreign")
KEEP_KEYS = (*KEEP_PERIODS, "last")
SCHEDULE_KEYS = ("every", "cron", "timezone")
VM_KEYS = ("priority", "depends_on", "networks", "boot_timeout", "shutdown_timeout", "vmx")
NETMAP_KEYS = ("failover", "test")
HOSTNET_KEYS = ("vswitches", "port_groups", "vmkernel", "iscsi")
VSWITCH_KEYS = ("uplinks", "mtu", "active", "standby", "ports")
PORTGROUP_KEYS = ("vswitch", "vlan", "active_uplinks", "standby_uplinks", "isolated")
VMK_KEYS = ("port_group", "ip", "mtu")
ISCSI_KEYS = ("enabled", "bind", "send_targets", "static_targets", "chap")
PORTAL_KEYS = ("address", "port")
STATIC_KEYS = ("address", "port", "iqn")
CHAP_KEYS = ("name", "secret_file", "secret_env")

try:  # libyaml's parser is several times faster; positions are the same
    _YamlLoader: type = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - PyYAML built without libyaml
    _YamlLoader = yaml.SafeLoader


def load_site(path: str | os.PathLike[str], *, check_files: bool = True) -> Site:
    """Read, check and resolve a site file.

    Raises :class:`SiteError` with every problem found (file:line:column, path,
    message, hint), or :class:`UsageError` when the file cannot be read at all.
    With ``check_files=False`` referenced files (SSH keys, known_hosts, password
    and CA files) are resolved but not looked at, for checking a site file on
    another machine than the one it is for.
    """
    shown = os.fspath(path)
    full = os.path.abspath(shown)
    try:
        with open(full, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise UsageError(f"site file {shown} not found",
                         hint="pass --site FILE or set $ESXDR_SITE; examples/site.yaml is a starting point") from None
    except OSError as e:
        raise UsageError(f"cannot read site file {shown}: {e.strerror}") from None
    reader = Reader(shown, os.path.dirname(full), check_files)
    root = _parse(reader, data)
    site = _SiteBuilder(reader, full).build(root) if root is not None else None
    if reader.problems or site is None:
        raise SiteError(sorted(reader.problems, key=lambda p: (p.line, p.column)))
    return site


def _parse(reader: Reader, data: bytes) -> yaml.Node | None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        reader.error((line, col), "", "the site file is not UTF-8 text", "save it as UTF-8")
        return None
    try:
        root = yaml.compose(text, Loader=_YamlLoader)
    except yaml.MarkedYAMLError as e:
        m = e.problem_mark or e.context_mark
        where = (m.line + 1, m.column + 1) if m else (1, 1)
        message = f"not valid YAML: {e.problem or e.context}"
        if e.context and e.problem:
            message += f" ({e.context})"
        if isinstance(e, yaml.composer.ComposerError):
            hint = ("a site file is one YAML document: remove the `---` line" if "document" in message
                    else "define an anchor (&name) before its alias (*name)" if "alias" in message else None)
        else:
            hint = "check the indentation and quoting around this position"
        reader.error(where, "", message, hint)
        return None
    except yaml.reader.ReaderError as e:
        line = text[:e.position].count("\n") + 1
        col = e.position - (text.rfind("\n", 0, e.position) + 1) + 1
        reader.error((line, col), "", f"not valid YAML: {e.reason} (#x{e.character:04x})"
                     if isinstance(e.character, int) else f"not valid YAML: {e.reason}")
        return None
    except yaml.YAMLError as e:  # pragma: no cover - other parser errors carry marks
        reader.error((1, 1), "", f"not valid YAML: {e}")
        return None
    if root is None:
        reader.error((1, 1), "", "the site file is empty",
                     "start from examples/site.yaml: version, name, storage, protection_groups")
        return None
    if not isinstance(root, yaml.MappingNode):
        reader.error(root, "", f"the site file must be a mapping of keys (version, name, storage, …), "
                     f"not {describe(root)}")
        return None
    return root


class _SiteBuilder:
    def __init__(self, reader: Reader, full_path: str):
        self.r = reader
        self.full_path = full_path
        # Names declared, even when their entry has problems: references to them are not reported again.
        self.storage_names: set[str] = set()
        self.vsphere_names: set[str] = set()

    def build(self, root: yaml.MappingNode) -> Site | None:
        r = self.r
        top = r.mapping(root, "", SITE_KEYS, (1, 1))
        assert top is not None
        version = top.integer("version", required=True, hint="this esxdr reads version: 1")
        if version is not None and version != 1:
            r.error(top.node("version") or (1, 1), "version", f"site file version {version} is not supported",
                    "this esxdr reads version: 1")
        name = top.text("name", required=True, check=lambda s: v.check_object_name(s, "site"),
                        hint="a short name for this site, used in reports, e.g. name: acme")
        state_dir = DEFAULT_STATE_DIR
        if (node := top.node("state_dir")) is not None and (text := r.text(node, "state_dir", "a path")):
            state_dir = os.path.normpath(os.path.join(r.base_dir, os.path.expanduser(text)))

        if "storage" not in top:
            top.missing("storage", "describe the production and DR storage servers under storage:")
        storage = self.storage(top.node("storage"))
        vsphere = self.vsphere(top.node("vsphere"))
        dr_network = self.dr_network(top.node("dr_network"))
        groups = self.groups(top.node("protection_groups"))
        CrossChecks(r, storage, vsphere, groups, dr_network, self.storage_names, self.vsphere_names).run()
        if r.problems:
            return None
        return Site(path=self.full_path, version=version or 1, name=name or "", state_dir=state_dir,
                    storage=storage, vsphere=vsphere, protection_groups=groups, dr_network=dr_network)

    # ------------------------------------------------------------------ storage

    def storage(self, node: yaml.Node | None) -> dict[str, StorageServer]:
        out: dict[str, StorageServer] = {}
        for name, vnode, where in self.r.entries(node, "storage", "storage servers"):
            self.storage_names.add(name)
            path = join("storage", name)
            if not self._name(name, "storage server", path, where):
                continue
            server = self.storage_server(name, vnode, path, where)
            if server is not None:
                out[name] = server
        return out

    def storage_server(self, name: str, node: yaml.Node, path: str, where: Mark) -> StorageServer | None:
        s = self.r.mapping(node, path, STORAGE_KEYS, where, "storage server settings")
        if s is None:
            return None
        role = s.choice("role", ROLES, required=True)
        local = s.flag("local", default=False)
        pulls = s.flag("pulls", default=False)
        if pulls:
            # Production's view in pull mode: it holds no key to DR and never connects there.
            if role != "dr" or local:
                self.r.error(s.key_mark("pulls"), s.p("pulls"),
                             "pulls: true is for a DR server in production's site file (the DR box pulls)",
                             "remove it" + (" (a local server is this box)" if local else ""))
            for k in ("user", "key", "host_key", "known_hosts"):
                if k in s:
                    self.r.error(s.key_mark(k), s.p(k), f"a DR server that pulls is never reached from here: "
                                 f"production holds no {k.replace('_', ' ')} for it",
                                 f"remove {k}: the DR box reaches production with its own key")
        remote = local is False and not pulls
        address = s.text("address", required=remote, check=v.check_host,
                         hint="the server's address for SSH (or local: true when esxdr runs on it)")
        port = s.integer("port", default=22, lo=1, hi=65535)
        user = s.text("user", required=remote, check=_check_user, hint="the SSH service account, e.g. user: esxdr")
        key = s.file("key", required=remote, secret=True, what="SSH key",
                     hint="the private key esxdr logs in with, e.g. key: keys/esxdr_ed25519",
                     create_hint="create it with ssh-keygen -t ed25519 -N '' -f {path}")
        host_key = s.text("host_key", check=v.check_host_key)
        known_hosts = s.file("known_hosts", what="known_hosts file")
        if remote and "host_key" not in s and "known_hosts" not in s:
            s.missing("host_key", "pin the server's key: host_key: SHA256:… (ssh-keyscan HOST | ssh-keygen -lf -)"
                      ", or give known_hosts: FILE; unknown keys are never trusted")
        zfs = s.choice("zfs", ZFS_FLAVOURS, default="auto")
        zfs_command: tuple[str, ...] = ("zfs",)
        if (cnode := s.node("zfs_command")) is not None:
            zfs_command = self.r.command(cnode, s.p("zfs_command")) or zfs_command
        serve_prefix = s.text("serve_prefix", check=v.check_zfs_name)
        stream_ciphers = s.text("stream_ciphers", check=v.check_ciphers) or "auto"
        target = None
        if (tnode := s.node("target")) is not None:
            target = self.target(tnode, s.p("target"), s.key_mark("target"), address)
        return StorageServer(name=name, role=role, local=bool(local), address=address, port=port or 22,  # type: ignore[arg-type]
                             user=user, key=key, host_key=host_key, known_hosts=known_hosts,
                             zfs=zfs or "auto", zfs_command=zfs_command,  # type: ignore[arg-type]
                             serve_prefix=serve_prefix, stream_ciphers=stream_ciphers, target=target,
                             pulls=bool(pulls), line=where[0])

    def target(self, node: yaml.Node, path: str, where: Mark, address: str | None) -> TargetConfig | None:
        t = self.r.mapping(node, path, TARGET_KEYS, where, "target settings")
        if t is None:
            return None
        from esxdr import plugins  # esxdr's own stacks and any plugin's

        stack = t.choice("stack", plugins.names("esxdr.targets"), required=True)
        portal = t.text("portal", required=address is None, check=lambda s: v.join_host_port(
            *v.split_host_port(s, 3260)), hint="where initiators log in, e.g. portal: 10.20.0.5:3260")
        if portal is None and address is not None and "portal" not in t:
            portal = v.join_host_port(address, 3260)
        control_port = t.integer("control_port", lo=1, hi=65535)
        if control_port is not None and stack not in (None, "tgt"):
            self.r.error(t.key_mark("control_port"), t.p("control_port"),
                         f"control_port is only for stack: tgt, not {stack}", "remove it")
        iqn_prefix = t.text("iqn_prefix", check=lambda s: v.check_iqn(s, prefix=True))
        return TargetConfig(stack=stack, portal=portal or "", control_port=control_port,  # type: ignore[arg-type]
                            iqn_prefix=iqn_prefix)

    # ------------------------------------------------------------------ vsphere

    def vsphere(self, node: yaml.Node | None) -> dict[str, VsphereEndpoint]:
        out: dict[str, VsphereEndpoint] = {}
        for name, vnode, where in self.r.entries(node, "vsphere", "vSphere endpoints"):
            self.vsphere_names.add(name)
            path = join("vsphere", name)
            if not self._name(name, "vsphere endpoint", path, where):
                continue
            endpoint = self.endpoint(name, vnode, path, where)
            if endpoint is not None:
                out[name] = endpoint
        return out

    def endpoint(self, name: str, node: yaml.Node, path: str, where: Mark) -> VsphereEndpoint | None:
        r = self.r
        e = r.mapping(node, path, VSPHERE_KEYS, where, "vSphere endpoint settings")
        if e is None:
            return None
        role = e.choice("role", ROLES, required=True)
        kind = e.choice("kind", KINDS, default="esxi")
        url = e.text("url", required=True, hint="the SDK URL, e.g. url: https://esxi-dr.example.com/sdk")
        plain_http = False
        if url is not None and (url := self._vsphere_url(url, e)) is not None:
            plain_http = url.startswith("http://")
        user = e.text("user", required=True, hint="e.g. user: root or user: esxdr@vsphere.local")
        password_env = e.text("password_env", check=v.check_env_name)
        password_file = e.file("password_file", secret=True, what="password file",
                               create_hint="put the password in it (one line) and chmod 600 {path}")
        if "password_env" in e and "password_file" in e:
            r.error(e.key_mark("password_file"), e.p("password_file"),
                    "password_env and password_file are both set", "keep one of them")
        elif "password_env" not in e and "password_file" not in e:
            e.missing("password_env", "name where the password comes from: password_env: VAR or "
                      "password_file: FILE (mode 0600)")
        thumbprint = e.text("thumbprint", check=v.check_thumbprint)
        ca_file = e.file("ca_file", what="CA file")
        if url is not None and not plain_http and "thumbprint" not in e and "ca_file" not in e:
            host = urlsplit(url).hostname or url
            e.missing("thumbprint", f"run `esxdr host thumbprint {host}` and pin it, or give ca_file: FILE; "
                      "TLS is always verified")
        hosts = e.strings("hosts", "host names", check=_check_nonblank) or ()
        if hosts and kind == "esxi":
            r.error(e.key_mark("hosts"), e.p("hosts"), "hosts is only for kind: vcenter",
                    "a standalone ESXi endpoint is its own host; set kind: vcenter or remove hosts")
        return VsphereEndpoint(name=name, role=role, url=url or "", user=user or "",  # type: ignore[arg-type]
                               password_env=password_env, password_file=password_file, thumbprint=thumbprint,
                               ca_file=ca_file, kind=kind or "esxi", hosts=hosts, line=where[0])  # type: ignore[arg-type]

    def _vsphere_url(self, url: str, e: Section) -> str | None:
        where, path = e.node("url") or e.where, e.p("url")
        hint = "write it like https://esxi-dr.example.com/sdk"
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            self.r.error(where, path, f"{url!r} is not a URL: {exc}", hint)
            return None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            self.r.error(where, path, f"{url!r} is not an http(s) URL", hint)
            return None
        if parts.username or parts.password:
            self.r.error(where, path, "credentials must not be written into the URL",
                         "use user: with password_env or password_file")
            return None
        try:
            v.check_host(parts.hostname)
        except v.Invalid as exc:
            self.r.error(where, path, exc.message, exc.hint)
            return None
        if port is not None and port == 0:
            self.r.error(where, path, "port 0 is not valid", hint)
            return None
        if parts.scheme == "http" and not parts.hostname.startswith("127."):
            self.r.error(where, path, f"plain http to {parts.hostname} would send the password unprotected",
                         "use https:// (plain http is allowed only for a loopback lab endpoint on 127.x)")
            return None
        return url

    # ------------------------------------------------------------------ protection groups

    def groups(self, node: yaml.Node | None) -> dict[str, ProtectionGroup]:
        out: dict[str, ProtectionGroup] = {}
        for name, vnode, where in self.r.entries(node, "protection_groups", "protection groups"):
            path = join("protection_groups", name)
            try:
                v.check_group_name(name)
            except v.Invalid as e:
                self.r.error(where, path, e.message, e.hint)
                continue
            group = self.group(name, vnode, path, where)
            if group is not None:
                out[name] = group
        return out

    def group(self, name: str, node: yaml.Node, path: str, where: Mark) -> ProtectionGroup | None:
        r = self.r
        g = r.mapping(node, path, GROUP_KEYS, where, "protection group settings")
        if g is None:
            return None
        source = g.text("source", required=True, hint="the production storage server, e.g. source: ss1")
        destination = g.text("destination", required=True, hint="the DR storage server, e.g. destination: ss2")
        source_root = g.text("source_root", required=True, check=v.check_zfs_name,
                             hint="the dataset the LUNs live under on the source, e.g. source_root: sp1/iscsi")
        dr_root = g.text("dr_root", required=True, check=v.check_zfs_name,
                         hint="where they go on the DR side, e.g. dr_root: rp1/iscsi")
        datasets, luns = self.datasets(g, source_root)
        incremental = g.choice("incremental", INCREMENTAL, default="intermediate")
        retention = self.retention(g)
        schedule = self.schedule(g)
        rpo = g.scalar("rpo", v.parse_duration, required=True, what="a duration",
                       hint="the recovery point objective, e.g. rpo: 4h (status fails when the newest "
                            "replicated snapshot is older)")
        if rpo == 0:
            r.error(g.node("rpo") or g.where, g.p("rpo"), "rpo must be longer than 0s")
        parallel = g.integer("parallel", default=4, lo=1, hi=64)
        compression = g.choice("compression", COMPRESSION, default="auto")
        bandwidth = g.scalar("bandwidth_limit", v.parse_size, what="a size")
        if bandwidth == 0:
            r.error(g.node("bandwidth_limit") or g.where, g.p("bandwidth_limit"),
                    "bandwidth_limit 0 would stop replication", "remove it (or set null) for no limit")
        mbuffer = g.choice("mbuffer", MBUFFER, default="auto")
        consistency = g.choice("consistency", CONSISTENCY, default="crash")
        vsphere_production = g.text("vsphere_production")
        vsphere_dr = g.text("vsphere_dr")
        vms = self.vms(g)
        callouts = self.callouts(g)
        return ProtectionGroup(
            name=name, source=source or "", destination=destination or "", source_root=source_root or "",
            dr_root=dr_root or "", datasets=datasets, incremental=incremental or "intermediate",  # type: ignore[arg-type]
            retention=retention, schedule=schedule, rpo_seconds=rpo or 0, parallel=parallel or 4,
            compression=compression or "auto", bandwidth_limit=bandwidth or None,  # type: ignore[arg-type]
            mbuffer=mbuffer or "auto", consistency=consistency or "crash",  # type: ignore[arg-type]
            vsphere_production=vsphere_production, vsphere_dr=vsphere_dr, vms=vms, line=where[0], luns=luns,
            callouts=callouts, bookmarks=bool(g.flag("bookmarks", default=False)))

    def datasets(self, g: Section, root: str | None) -> tuple[tuple[str, ...], dict[str, LunSpec]]:
        r = self.r
        node = g.node("datasets")
        if node is None:
            g.missing("datasets", "list the datasets (LUNs) replicated together, e.g. datasets: [lun0, lun1]")
            return (), {}
        out: list[str] = []
        luns: dict[str, LunSpec] = {}
        seen: dict[str, int] = {}
        items = r.sequence(node, g.p("datasets"), "dataset names")
        if isinstance(node, yaml.SequenceNode) and not items:
            r.error(node, g.p("datasets"), "lists no datasets")
        for i, item in enumerate(items):
            path = join(g.p("datasets"), i)
            r.marks[path] = mark_of(item)
            spec: LunSpec | None = None
            if isinstance(item, yaml.MappingNode):
                lun = r.mapping(item, path, LUN_KEYS, mark_of(item))
                assert lun is not None
                text = lun.text("name", required=True, hint="the dataset, e.g. name: lun0")
                spec = LunSpec(dataset="", naa=lun.text("naa", check=v.check_naa), datastore=lun.text("datastore"),
                               vmfs_uuid=lun.text("vmfs_uuid", check=v.check_vmfs_uuid), line=mark_of(item)[0])
            else:
                text = r.text(item, path, "a dataset name")
            if text is None or root is None:
                continue
            full = self._dataset_name(text, root, item, path)
            if full is None:
                continue
            if full in seen:
                r.error(item, path, f"{full} is listed twice (also datasets[{seen[full]}])")
                continue
            seen[full] = i
            out.append(full)
            if spec is not None:
                luns[full] = dataclasses.replace(spec, dataset=full)
        return tuple(out), luns

    def _dataset_name(self, text: str, root: str, node: yaml.Node, path: str) -> str | None:
        """Datasets are written relative to source_root (lun0) or in full (sp1/iscsi/lun0)."""
        pool = root.split("/", 1)[0]
        absolute = text == pool or text.startswith(pool + "/")
        full = text if absolute else f"{root}/{text}"
        try:
            v.check_zfs_name(full)
        except v.Invalid as e:
            self.r.error(node, path, e.message, e.hint)
            return None
        if absolute and not v.zfs_under(full, root):
            self.r.error(node, path, f"{full} is not under source_root {root}",
                         "datasets must live under source_root; write them relative to it (lun0) or in full")
            return None
        return full

    def retention(self, g: Section) -> RetentionPolicy:
        r = self.r
        node = g.node("retention")
        hint = 'e.g. retention: {source: "48h 7d", destination: "48h 30d 12w 12m"}'
        if node is None:
            g.missing("retention", hint)
            return RetentionPolicy()
        path = g.p("retention")
        if isinstance(node, yaml.ScalarNode):  # one rule for both sides
            rules = self.keep_rules(node, path)
            return RetentionPolicy(source=rules, destination=rules)
        sec = r.mapping(node, path, RETENTION_KEYS, g.key_mark("retention"))
        if sec is None:
            return RetentionPolicy()
        sides = {}
        for side in ("source", "destination"):
            if (snode := sec.node(side)) is None:
                sec.missing(side, f'keep rules for the {side} side, e.g. {side}: "48h 30d 12w 12m"')
                sides[side] = KeepRules()
            else:
                sides[side] = self.keep_rules(snode, sec.p(side), sec.key_mark(side))
        return RetentionPolicy(source=sides["source"], destination=sides["destination"],
                               prune_foreign=bool(sec.flag("prune_foreign", default=False)))

    def keep_rules(self, node: yaml.Node, path: str, where: Mark | None = None) -> KeepRules:
        r = self.r
        if isinstance(node, yaml.ScalarNode):
            rules = r.checked(node, path, v.parse_keep_rules, "keep rules")
            if rules is None:
                return KeepRules()
        else:
            sec = r.mapping(node, path, KEEP_KEYS, where or mark_of(node), "keep rules")
            if sec is None:
                return KeepRules()
            counts = {k: sec.integer(k, lo=0, default=None) for k in KEEP_KEYS}
            rules = KeepRules(**{k: n for k, n in counts.items() if n is not None})
        if not any(getattr(rules, k) for k in KEEP_KEYS):
            r.error(node, path, "keeps no snapshots at all",
                    "keep at least one, e.g. last: 1 (the newest common snapshot is never pruned anyway)")
        return rules

    def schedule(self, g: Section) -> Schedule:
        r = self.r
        s = g.section("schedule", SCHEDULE_KEYS)
        if s is None:
            return Schedule()
        every = s.scalar("every", v.parse_duration, what="a duration")
        if every == 0:
            r.error(s.node("every") or s.where, s.p("every"), "every must be longer than 0s")
        cron = s.text("cron", check=v.check_cron)
        timezone = s.text("timezone", default="UTC", check=v.check_timezone)
        if "every" in s and "cron" in s:
            r.error(s.key_mark("cron"), s.p("cron"), "every and cron are both set", "keep one of them")
        elif "every" not in s and "cron" not in s:
            s.missing("every", 'e.g. schedule: {every: 1h} or schedule: {cron: "0 */4 * * *"}')
        return Schedule(every_seconds=every or None, cron=cron, timezone=timezone or "UTC")

    def vms(self, g: Section) -> tuple[VmSpec, ...]:
        r = self.r
        out: list[VmSpec] = []
        for name, node, where in r.entries(g.node("vms"), g.p("vms"), "VMs"):
            path = join(g.p("vms"), name)
            vm = r.mapping(node, path, VM_KEYS, where, "VM settings")
            if vm is None:
                continue
            networks: dict[str, NetworkMap] = {}
            for pg, nnode, nwhere in r.entries(vm.node("networks"), vm.p("networks"), "port group mappings"):
                npath = join(vm.p("networks"), pg)
                m = r.mapping(nnode, npath, NETMAP_KEYS, nwhere, "failover/test port groups")
                if m is None:
                    continue
                failover = m.text("failover", required=True, hint="the DR port group used by a real failover")
                test = m.text("test", required=True, hint="the isolated DR port group used by drills")
                if failover and test:
                    networks[pg] = NetworkMap(failover=failover, test=test)
            boot = vm.scalar("boot_timeout", v.parse_duration, default=300, what="a duration")
            shutdown = vm.scalar("shutdown_timeout", v.parse_duration, default=300, what="a duration")
            for key, value in (("boot_timeout", boot), ("shutdown_timeout", shutdown)):
                if value == 0:
                    r.error(vm.node(key) or where, vm.p(key), f"{key} must be longer than 0s")
            out.append(VmSpec(name=name, priority=vm.integer("priority", default=3, lo=1, hi=5) or 3,
                              depends_on=vm.strings("depends_on", "VM names") or (), networks=networks,
                              boot_timeout_seconds=boot or 300, shutdown_timeout_seconds=shutdown or 300,
                              line=where[0], vmx=vm.text("vmx", check=_check_vmx_path)))
        return tuple(out)

    def callouts(self, g: Section) -> tuple[Callout, ...]:
        """``callouts: {STEP: {pre: CMD, post: CMD, runs: [KIND…], timeout: DURATION}}``."""
        r = self.r
        out: list[Callout] = []
        for step, node, where in r.entries(g.node("callouts"), g.p("callouts"), "step callouts"):
            path = join(g.p("callouts"), step)
            kind, _, rest = step.partition(":")
            if kind not in CALLOUT_STEP_KINDS or (_ and not rest):
                close = did_you_mean(kind, CALLOUT_STEP_KINDS)
                r.error(where, path, f"{step!r} is not a runbook step",
                        (f"{close} " if close else "")
                        + "name a step kind (" + ", ".join(CALLOUT_STEP_KINDS[:10])
                        + ", …) or one step id such as power:1:1 (esxdr test start --dry-run --json lists them)")
                continue
            c = r.mapping(node, path, CALLOUT_KEYS, where, "pre/post commands")
            if c is None:
                continue
            pre, pre_plugin = self._callout_action(c, "pre")
            post, post_plugin = self._callout_action(c, "post")
            if "pre" not in c and "post" not in c:
                r.error(where, path, "a callout needs a pre or a post command (or both)",
                        "e.g. post: [/usr/local/bin/notify, --channel, dr]")
            runs = c.strings("runs", "run kinds", check=_check_run) or ()
            timeout = c.scalar("timeout", v.parse_duration, default=300, what="a duration")
            if timeout == 0:
                r.error(c.node("timeout") or where, c.p("timeout"), "timeout must be longer than 0s")
            out.append(Callout(step=step, pre=pre, post=post, pre_plugin=pre_plugin, post_plugin=post_plugin,
                               runs=runs, timeout_seconds=timeout or 300, line=where[0]))
        return tuple(out)

    def _callout_action(self, c: Section, key: str) -> tuple[tuple[str, ...] | None,
                                                             tuple[str, tuple[tuple[str, str], ...]] | None]:
        """A command (a list of words or one string), or ``{plugin: NAME, with: {KEY: VALUE}}``: a
        kind of callout a plugin package registers (esxdr.callouts entry point, docs/plugins.md)."""
        node = c.node(key)
        if not isinstance(node, yaml.MappingNode):
            return self._callout_command(c, key), None
        r, path = self.r, c.p(key)
        p = r.mapping(node, path, ("plugin", "with"), mark_of(node), "a plugin callout")
        if p is None:
            return None, None
        name = p.text("plugin", required=True)
        if name is None:
            return None, None
        from esxdr import plugins  # esxdr's own kinds and those of installed plugins

        known = plugins.names("esxdr.callouts")
        if name not in known:
            r.error(p.node("plugin") or node, p.p("plugin"), f"no callout plugin {name!r} is installed",
                    f"installed: {', '.join(known) or 'none'}; a plugin package registers more (docs/plugins.md)")
        args: list[tuple[str, str]] = []
        for k, vnode, _w in r.entries(p.node("with"), p.p("with"), "plugin arguments"):
            value = r.text(vnode, join(p.p("with"), k), "a string")
            if value is not None:
                args.append((k, value))
        return None, (name, tuple(args))

    def _callout_command(self, c: Section, key: str) -> tuple[str, ...] | None:
        node = c.node(key)
        if node is None:
            return None
        argv = self.r.command(node, c.p(key))
        if not argv:
            return None
        prog = argv[0]
        if "/" in prog:  # a path: relative to the site file's directory, like every path in it
            full = os.path.normpath(os.path.join(self.r.base_dir, os.path.expanduser(prog)))
            if self.r.check_files and not (os.path.isfile(full) and os.access(full, os.X_OK)):
                self.r.error(node, c.p(key), f"{full} is not an executable file",
                             f"chmod +x {full}" if os.path.isfile(full) else
                             "the path is relative to the site file's directory" if not os.path.isabs(
                                 os.path.expanduser(prog)) else None)
            argv = (full, *argv[1:])
        return argv

    # ------------------------------------------------------------------ DR network

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

    # ------------------------------------------------------------------ helpers

    def _name(self, name: str, what: str, path: str, where: Mark) -> bool:
        try:
            v.check_object_name(name, what)
            return True
        except v.Invalid as e:
            self.r.error(where, path, e.message, e.hint)
            return False


_USER = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*\$?$")
_UPLINK = re.compile(r"^(vmnic|vusb)\d+$")


def _check_vmx_path(text: str) -> str:
    if not re.match(r"^\[[^\]]+\] ?\S.*\.vmx$", text):
        raise v.Invalid(f"{text!r} is not a datastore path of a .vmx file",
                        "write it as vSphere shows it: \"[datastore] dir/name.vmx\" (esxdr plan discover writes it)")
    return text


def _check_run(text: str) -> str:
    if text not in CALLOUT_RUNS:
        close = did_you_mean(text, CALLOUT_RUNS)
        raise v.Invalid(f"{text!r} is not one of {', '.join(CALLOUT_RUNS)}",
                        close)
    return text


def _check_user(text: str) -> str:
    if not _USER.match(text):
        raise v.Invalid(f"{text!r} is not a user name", "the SSH service account, e.g. user: esxdr")
    return text


def _check_uplink(text: str) -> str:
    if not _UPLINK.match(text):
        raise v.Invalid(f"{text!r} is not a physical NIC name", "uplinks are named vmnic0, vmnic1, … (or vusb0)")
    return text


def _check_nonblank(text: str) -> str:
    if not text.strip():
        raise v.Invalid("must not be blank")
    return text.strip()

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
from urllib.parse import urlsplit

import yaml

from esxdr import plugins  # esxdr's own stacks and any plugin's
from esxdr.errors import SiteError, UsageError
from esxdr.site import values as v
from esxdr.site.checks import CrossChecks
from esxdr.site.groups import GroupReader, drill_max_age_of
from esxdr.site.model import (
    Site,
    StorageServer,
    TargetConfig,
    VsphereEndpoint,
)
from esxdr.site.network import NetworkReader
from esxdr.site.nodes import Mark, Reader, Section, describe, join

DEFAULT_STATE_DIR = "/var/lib/esxdr"

ROLES = ("production", "dr")
ZFS_FLAVOURS = ("auto", "openzfs", "legacy")
KINDS = ("esxi", "vcenter")
SITE_KEYS = ("version", "name", "state_dir", "storage", "vsphere", "protection_groups", "dr_network",
             "drill_max_age")
STORAGE_KEYS = ("role", "local", "address", "port", "user", "key", "host_key", "known_hosts", "zfs",
                "zfs_command", "serve_prefix", "stream_ciphers", "target", "pulls")
TARGET_KEYS = ("stack", "portal", "control_port", "iqn_prefix")
VSPHERE_KEYS = ("role", "kind", "url", "user", "password_env", "password_file", "thumbprint", "ca_file", "hosts")
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
        dr_network = NetworkReader(r).dr_network(top.node("dr_network"))
        groups = GroupReader(r).groups(top.node("protection_groups"))
        drill_max_age = drill_max_age_of(top)
        CrossChecks(r, storage, vsphere, groups, dr_network, self.storage_names, self.vsphere_names).run()
        if r.problems:
            return None
        # A group without its own drill_max_age takes the site's: resolved once, here.
        groups = {n: g if g.drill_max_age_seconds is not None else
                  dataclasses.replace(g, drill_max_age_seconds=drill_max_age) for n, g in groups.items()}
        return Site(path=self.full_path, version=version or 1, name=name or "", state_dir=state_dir,
                    storage=storage, vsphere=vsphere, protection_groups=groups, dr_network=dr_network,
                    drill_max_age_seconds=drill_max_age)

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

    # ------------------------------------------------------------------ helpers

    def _name(self, name: str, what: str, path: str, where: Mark) -> bool:
        try:
            v.check_object_name(name, what)
            return True
        except v.Invalid as e:
            self.r.error(where, path, e.message, e.hint)
            return False


_USER = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*\$?$")


def _check_user(text: str) -> str:
    if not _USER.match(text):
        raise v.Invalid(f"{text!r} is not a user name", "the SSH service account, e.g. user: esxdr")
    return text


def _check_nonblank(text: str) -> str:
    if not text.strip():
        raise v.Invalid("must not be blank")
    return text.strip()

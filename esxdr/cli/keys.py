"""esxdr keys authorized-line: the DR service account's authorized_keys line, and its zfs rights."""

from __future__ import annotations

import ipaddress
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

import click

from esxdr.cli.main import Context, json_option, pass_ctx, site_option
from esxdr.errors import UsageError

if TYPE_CHECKING:
    from esxdr.site.model import Site

# What the DR account may do by `zfs allow`, on the serve prefix only, for push replication:
# receive the streams, create the DR root, hold the newest common snapshot, set esxdr's user
# properties and seal replicas (readonly=on canmount=noauto). Nothing that removes or rewinds:
# no destroy, rollback or release, so even a shell as this account (serve bypassed) cannot
# empty DR. `mount` cannot be left out: the kernel checks receive, create AND mount for every
# receive (zfs_secpolicy_recv) and create and mount for create (zfs_secpolicy_create_clone), as
# zfs-allow(8) says ("receive: Must also have the mount and create ability"). It mounts nothing
# for this account on Linux, where only root may mount (`zfs mount` refuses non-root before
# mount(2)), nor on FreeBSD while vfs.usermount stays 0 (the default). Streams are sent without
# -p, so no property permission is needed to receive them (received properties would each need
# their own). Drills clone and destroy, failover promotes: both run on the DR box with its own
# privileges, not through this account.
DR_DELEGATION = ("create", "mount", "receive", "hold", "userprop", "readonly", "canmount")
# Pull mode: what production's account lends DR (serve --send-only), on the source root only:
# send, and replication's cursor (the hold DR keeps on the snapshot it pulled last). zfs get needs
# no right. No destroy, snapshot, receive or rollback: a leaked DR key reads, and removes nothing.
SOURCE_DELEGATION = ("send", "hold", "release")

# Key types OpenSSH writes into a .pub file; anything else there is not a public key line.
_KEY_TYPES = ("ssh-ed25519", "ssh-rsa", "ssh-dss", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
              "ecdsa-sha2-nistp521", "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com")


def _safe_word(value: str, what: str) -> str:
    """A word for the forced command: any printable text (it is shell-quoted), but no control
    characters: authorized_keys is one line per key, and a newline or a NUL there would cut it."""
    if not value:
        raise UsageError(f"{what} is empty")
    bad = sorted({c for c in value if ord(c) < 0x20 or ord(c) == 0x7F})
    if bad:
        raise UsageError(f"{what} {value!r} contains control characters ({', '.join(map(repr, bad))}), "
                         "which an authorized_keys line cannot carry")
    return value


def _command_option(argv: list[str]) -> str:
    """``command="…"`` for authorized_keys: sshd hands the text to the account's shell, so each word
    is shell-quoted; sshd's own reading takes only ``\\"`` as an escape (a backslash before any other
    character stays a backslash), so escaping each double quote is all its syntax needs."""
    return 'command="' + shlex.join(argv).replace('"', '\\"') + '"'


def _from_addresses(values: list[str], origin: str) -> list[str]:
    """IP addresses or CIDR networks for ``from=``. sshd compares host names only with UseDNS on
    (off by default), so a name there would quietly never match: names are refused, as are
    patterns and negations, whose meaning is easy to get wrong."""
    out: list[str] = []
    for v in values:
        v = v.strip()
        try:
            text = str(ipaddress.ip_network(v, strict=True)) if "/" in v else str(ipaddress.ip_address(v))
        except ValueError:
            raise UsageError(f"{origin}: {v!r} is not an IP address or network",
                             hint="from= needs the IP address(es) production connects from, "
                                  "e.g. --from 192.0.2.10 or --from 192.0.2.0/28") from None
        if text not in out:
            out.append(text)
    if not out:
        raise UsageError(f"{origin}: no address given")
    return out


def _production_addresses(site: Site, srv, *, pull: bool = False) -> list[str]:
    """The addresses the key's owner connects from: production's in push mode; in pull mode
    (``srv`` is production) the DR servers' that pull from it."""
    if pull:
        sources = sorted({g.destination for g in site.protection_groups.values() if g.source == srv.name})
    else:
        sources = sorted({g.source for g in site.protection_groups.values() if g.destination == srv.name})
    addresses: list[str] = []
    for name in sources:
        prod = site.storage.get(name)
        address = prod.address if prod is not None else None
        where = f"storage.{name}"
        if not address:
            raise UsageError(f"the address {name} connects to {srv.name} from is unknown: {where} has no address"
                             + (" (local: true)" if prod is not None and prod.local else ""),
                             hint="give it: --from ADDRESS[,ADDRESS…], the IP address(es) the DR box sees "
                                  "production's SSH connections come from")
        try:
            addresses += _from_addresses([address], f"{where}.address")
        except UsageError:
            raise UsageError(f"{where}.address is the host name {address!r}; sshd matches from= against the "
                             "client's IP address (unless UseDNS is on)",
                             hint="give its IP address(es): --from ADDRESS[,ADDRESS…]") from None
    return list(dict.fromkeys(addresses))


def _public_key(path: Path) -> str:
    try:
        lines = [x.strip() for x in path.read_text().splitlines() if x.strip() and not x.startswith("#")]
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read public key {path}: {getattr(e, 'strerror', None) or e}") from e
    if len(lines) != 1 or lines[0].split()[0] not in _KEY_TYPES or len(lines[0].split()) < 2:
        raise UsageError(f"{path} is not one OpenSSH public key line (TYPE BASE64 [COMMENT])",
                         hint=f"ssh-keygen -y -f {path.with_suffix('')} > {path}")
    return lines[0]


@click.group()
def keys() -> None:
    """SSH keys for the DR service account."""


@keys.command("authorized-line", epilog="""\b
Examples:
  esxdr keys authorized-line --site site.yaml >> ~esxdr/.ssh/authorized_keys   (on the DR box)
  esxdr keys authorized-line --from 192.0.2.10      production connects from this address
  esxdr keys authorized-line --log /var/log/esxdr-serve.log
  esxdr keys authorized-line --sudo        for zfs builds without `zfs allow` (zfs-fuse, old Solaris)
  esxdr keys authorized-line --drills      production also runs drills through this key
  esxdr keys authorized-line --pull --from 198.51.100.20 --site dr-site.yaml
                                           pull mode: the line for production's account
  esxdr keys authorized-line --home --from 192.0.2.10 --site production-home.yaml
                                           pull mode's way home: the line for DR's account,
                                           send-only, for production's home key

The lines after the key line are comments (authorized_keys ignores them): the zfs rights to
give the account, on the serve prefix only.
""")
@click.option("--server", help="The DR storage server (default: the only one with role dr).")
@click.option("--sudo", is_flag=True, help="Run zfs through `sudo -n` (pair with a sudoers rule for zfs only).")
@click.option("--esxdr-path", default="esxdr", show_default=True, help="Path of esxdr on the DR box.")
@click.option("--from", "from_", metavar="ADDRESS[,ADDRESS…]",
              help="IP addresses or networks production connects from "
                   "(default: the address of each production server replicating here).")
@click.option("--drills", is_flag=True,
              help="Let drills run through this key (clone, mount and destroy drill clones on DR). Without it "
                   "serve gets --no-drills and drills run on the DR box itself.")
@click.option("--pull", is_flag=True,
              help="Pull mode, with DR's site file: the line for the account DR pulls from on production "
                   "(esxdr serve --send-only on the group's source root; from= the DR box's address).")
@click.option("--home", is_flag=True,
              help="Pull mode's way home, with production's home site file: the line for the DR account "
                   "production pulls from after a failover (esxdr serve --send-only on the DR root).")
@click.option("--log", "log", default="syslog", show_default=True, metavar="FILE|syslog",
              help="Where esxdr serve logs each request run and refused: syslog, or an absolute file "
                   "the account can append to.")
@json_option
@site_option
@pass_ctx
def authorized_line(ctx: Context, server: str | None, sudo: bool, esxdr_path: str, from_: str | None,
                    drills: bool, pull: bool, home: bool, log: str) -> None:
    """Print the line that pins `esxdr serve` as the forced command, under the DR dataset prefix
    (with --pull: production's line, under the source root, send-only; with --home: DR's line for
    the way home, under the DR root, send-only)."""
    _safe_word(esxdr_path, "--esxdr-path")
    if esxdr_path.startswith("-"):
        raise UsageError(f"--esxdr-path {esxdr_path!r} starts with '-'",
                         hint="give the command's name or absolute path, e.g. /usr/local/bin/esxdr")
    payload, text = line_for(ctx, server, [esxdr_path, "serve"], from_=from_, sudo=sudo, drills=drills, pull=pull,
                             home=home, log=log)
    ctx.emit(payload, text)


def storage_server(ctx: Context, server: str | None, pull: bool):
    """The storage server a line (and serve's file) is for: DR's, or with --pull production's."""
    site = ctx.site()
    role = "production" if pull else "dr"
    candidates = [s for s in site.storage.values() if s.role == role and not (pull and s.local)]
    if server:
        candidates = [s for s in candidates if s.name == server]
    if len(candidates) != 1:
        raise UsageError(f"name the {role} storage server with --server"
                         + (" (pull mode reads production through its account: it is not local: true)" if pull else ""),
                         hint=", ".join(s.name for s in candidates) or None)
    return candidates[0]


def line_for(ctx: Context, server: str | None, launcher: list[str], *, from_: str | None, sudo: bool,
             drills: bool, pull: bool, home: bool, log: str) -> tuple[dict, str]:
    """The authorized_keys line whose forced command is ``launcher`` + serve's options, with the
    zfs rights to give the account; (--json payload, text)."""
    if pull and home:
        raise UsageError("--pull (production's account, on DR's site file) and --home (DR's account, on "
                         "production's home site file) print different lines: choose one")
    if home and drills:
        raise UsageError("--drills is for the DR push account; the way home only reads and sends")
    site = ctx.site()
    srv = storage_server(ctx, server, pull)
    if pull:
        prefixes = sorted({g.source_root for g in site.protection_groups.values() if g.source == srv.name})
    else:
        prefixes = sorted({g.dr_root for g in site.protection_groups.values() if g.destination == srv.name})
    if srv.serve_prefix:
        prefixes = [srv.serve_prefix]
    if not prefixes:
        raise UsageError(f"no protection group replicates {'from' if pull else 'to'} {srv.name}")
    if pull and drills:
        raise UsageError("--drills is for the DR account; production's pull account only reads and sends")
    account = "the account DR pulls from" if pull else "the DR service account"
    if not srv.key:
        raise UsageError(f"storage.{srv.name}.key is not set; it names the private key esxdr uses")
    if not srv.user:
        raise UsageError(f"storage.{srv.name}.user is not set; it names {account}")
    if log != "syslog" and not log.startswith("/"):
        raise UsageError(f"--log takes an absolute file or 'syslog', not {log!r}")
    _safe_word(log, "--log")
    addresses = _from_addresses(from_.split(","), "--from") if from_ is not None \
        else _production_addresses(site, srv, pull=pull)
    pub = _public_key_path(srv.key)
    key = _public_key(pub)

    mode = ["--send-only"] if pull or home else ([] if drills else ["--no-drills"])
    argv = [*launcher, *(["--sudo"] if sudo else []), *mode]
    for p in prefixes:
        argv += ["--allow-prefix", p]
    argv += ["--log", log]
    line = f'restrict,from="{",".join(addresses)}",{_command_option(argv)} {key}'
    setup = _source_setup(srv.name, srv.user, prefixes, sudo) if pull else \
        _home_setup(srv.name, srv.user, prefixes, sudo) if home else _dr_setup(srv.name, srv.user, prefixes, sudo)
    return ({"server": srv.name, "mode": "pull" if pull else "home" if home else "push", "prefixes": prefixes,
             "from": addresses, "log": log, "line": line, "sudo": sudo, "drills": drills and not pull,
             "dr_setup" if not pull else "production_setup": [c.strip() for c in setup if not c.startswith("#")]},
            "\n".join([line, *(f"# {c}" if not c.startswith("#") else c for c in setup)]))


def _public_key_path(key: str) -> Path:
    pub = Path(key + ".pub")
    if not pub.exists():
        raise UsageError(f"public key {pub} not found", hint=f"ssh-keygen -y -f {key} > {pub}")
    return pub


def _send_only_rights(server: str, user: str, prefixes: list[str], sudo: bool) -> list[str]:
    """The send-only account's zfs rights: sudoers for --sudo, else `zfs allow` on the prefixes only."""
    if sudo:
        return [f"# On {server}: zfs runs as root through sudo, so esxdr serve --send-only is the only guard. "
                "sudoers:", f"  {user} ALL=(root) NOPASSWD: /usr/sbin/zfs"]
    perms = ",".join(SOURCE_DELEGATION)
    out = [f"# On {server}, as root: zfs rights for {user} on {', '.join(prefixes)} only, never on the pool:"]
    return out + [f"  zfs allow -u {shlex.quote(user)} {perms} {shlex.quote(p)}" for p in prefixes]


def _source_setup(server: str, user: str, prefixes: list[str], sudo: bool) -> list[str]:
    """Pull mode: the commands for the production box, with the comments that explain them."""
    out = _send_only_rights(server, user, prefixes, sudo)
    if sudo:
        return out
    out += ["# Send, and the hold DR keeps on the snapshot it pulled last (production's retention keeps it).",
            "# No destroy, snapshot, receive or rollback: a leaked DR key reads production, and removes nothing.",
            f"# Production snapshots and prunes itself: `esxdr replicate GROUP --snapshot-only` on {server}, on a",
            "# schedule; it also publishes the target manifest that DR copies with each pull."]
    return out


def _home_setup(server: str, user: str, prefixes: list[str], sudo: bool) -> list[str]:
    """Pull mode's way home: the commands for the DR box, with the comments that explain them."""
    out = _send_only_rights(server, user, prefixes, sudo)
    if sudo:
        return out
    out += ["# The way home after a failover: production pulls what DR wrote (esxdr reprotect, then esxdr failback",
            f"# --planned on production, after esxdr failback --planned --hand-off on {server}). Send and",
            "# replication's hold only: production's key reads DR and removes nothing. Remove the line once home."]
    return out


def _dr_setup(server: str, user: str, prefixes: list[str], sudo: bool) -> list[str]:
    """The commands for the DR box (lines without '#') with the comments that explain them."""
    if sudo:
        return [f"# On {server}: zfs runs as root through sudo, so esxdr serve is the only guard. sudoers:",
                f"  {user} ALL=(root) NOPASSWD: /usr/sbin/zfs"]
    perms = ",".join(DR_DELEGATION)
    out = [f"# On {server}, as root: zfs rights for {user} on {', '.join(prefixes)} only, never on the pool:"]
    for p in prefixes:
        out += [f"  zfs create -p {shlex.quote(p)}", f"  zfs allow -u {shlex.quote(user)} {perms} {shlex.quote(p)}"]
    out += ["# No destroy, rollback or release: this key cannot remove anything on DR. mount is required by",
            "# the kernel for receive and create; on Linux only root mounts (FreeBSD: keep vfs.usermount=0).",
            "# Drills (clone, destroy, release) and failover get no rights here: run them on the DR box,",
            "# from a site file where this server is local: true.",
            "# DR retention runs there too: replication through this key keeps its DR holds, and the DR",
            "# box prunes with `esxdr prune GROUP --side dr` (schedule: `esxdr schedule render --side dr`)."]
    return out


@keys.command("serve-file", epilog="""\b
Examples:
  esxdr keys serve-file -o /tmp/esxdr-serve          then copy it to the DR box yourself
  esxdr keys serve-file | ssh root@dr 'cat > /usr/local/libexec/esxdr-serve'

The file is `esxdr serve` alone: standard library only, Python 3.6 or newer, for storage boxes
(TrueNAS, OmniOS, older appliances) without an esxdr install. Its forced command is
`python3 -I /path/esxdr-serve serve --allow-prefix …` (esxdr keys deploy-serve prints it).
""")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write it here (mode 755) instead of stdout.")
@json_option
@pass_ctx
def serve_file(ctx: Context, output: str | None) -> None:
    """Print (or write) `esxdr serve` as one standard-library file for Python 3.6 and newer."""
    from esxdr import __version__
    from esxdr.serve.bundle import bundle, sources_sha256

    text = bundle(__version__)
    if output is None:
        if ctx.json:
            raise UsageError("--json describes a written file: add -o FILE")
        click.echo(text, nl=False)
        return
    try:
        with open(output, "w") as f:
            f.write(text)
        Path(output).chmod(0o755)
    except OSError as e:
        raise UsageError(f"cannot write {output}: {e.strerror}") from None
    ctx.emit({"path": output, "version": __version__, "sources_sha256": sources_sha256(), "bytes": len(text.encode())},
             f"wrote {output} (esxdr serve {__version__}, one file, Python 3.6+)")


@keys.command("deploy-serve", epilog="""\b
Examples:
  esxdr keys deploy-serve --admin-key ~/.ssh/id_admin
      copy serve to the DR box as root over its pinned host key, print the authorized_keys line
  esxdr keys deploy-serve --admin-user admin --admin-key K --path /mnt/tank/esxdr/esxdr-serve --sudo
      TrueNAS: a path on a pool (the root filesystem is replaced on upgrades), zfs through sudo
  esxdr keys deploy-serve --admin-key K --python /usr/local/bin/python3.9 --dry-run
      check the box's Python and show what would be written

Then put the printed line into the service account's authorized_keys on the box.
""")
@click.option("--admin-user", default="root", show_default=True,
              help="An account on the box that may write the file (not the service account: its key only reaches serve).")
@click.option("--admin-key", required=True, type=click.Path(dir_okay=False), help="That account's private key.")
@click.option("--path", "path", default="/usr/local/libexec/esxdr-serve", show_default=True,
              help="Where the file goes on the box.")
@click.option("--python", "python", help="The box's Python 3.6+ (default: the first of python3, "
                                         "/usr/local/bin/python3, /usr/bin/python3, … that is 3.6 or newer).")
@click.option("--server", help="The storage server (default: the only one with role dr; with --pull production).")
@click.option("--sudo", is_flag=True, help="serve runs zfs through `sudo -n`.")
@click.option("--from", "from_", metavar="ADDRESS[,ADDRESS…]", help="As for authorized-line.")
@click.option("--drills", is_flag=True, help="As for authorized-line.")
@click.option("--pull", is_flag=True, help="As for authorized-line: production's send-only account.")
@click.option("--home", is_flag=True, help="As for authorized-line: DR's send-only account for the way home.")
@click.option("--log", "log", default="syslog", show_default=True, metavar="FILE|syslog", help="As for authorized-line.")
@click.option("--dry-run", is_flag=True, help="Connect and check the box's Python; write nothing.")
@json_option
@site_option
@pass_ctx
def deploy_serve(ctx: Context, admin_user: str, admin_key: str, path: str, python: str | None, server: str | None,
                 sudo: bool, from_: str | None, drills: bool, pull: bool, home: bool, log: str, dry_run: bool) -> None:
    """Copy `esxdr serve` as one file to a storage box without an esxdr install (over the site's pinned
    SSH host key) and print the authorized_keys line that runs it."""
    from esxdr.replication.serve_file import deploy

    srv = storage_server(ctx, server, pull)
    _safe_word(admin_user, "--admin-user")
    if python is not None:
        _safe_word(python, "--python")
    # the line first: a site that cannot give one (no key, no group) is refused before any copy
    probe_line = line_for(ctx, srv.name, ["python3", "-I", path, "serve"], from_=from_, sudo=sudo, drills=drills,
                          pull=pull, home=home, log=log)
    del probe_line
    done = deploy(ctx.site(), srv, admin_user=admin_user, admin_key=admin_key, path=path, python=python,
                  dry_run=dry_run, say=ctx.info)
    payload, text = line_for(ctx, srv.name, [done["python"], "-I", path, "serve"], from_=from_, sudo=sudo,
                             drills=drills, pull=pull, home=home, log=log)
    ctx.emit({**payload, "deployed": done}, ("# dry run: nothing written; the line would be:\n" if dry_run else "")
             + text)

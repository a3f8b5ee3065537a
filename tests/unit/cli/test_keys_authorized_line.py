"""`esxdr keys authorized-line`: from=, a quoted forced command, --log, and the prefix-only zfs allow lines."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from esxdr.cli.main import run

PUB = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMfwxHvQ8d1M1RnNx4NJeppHyR/NRDriQLgaKjpdLl9q esxdr@ss1"
HOST_KEY = "SHA256:HYfOdYYK61d+0O8KfPYpweuLx8FB4tWQiemG1Yi2yOw"


def _key_pair(tmp_path: Path, name: str, pub: str) -> Path:
    """A private key file (never read by this command) and its .pub under tmp_path/keys."""
    keys = tmp_path / "keys"
    keys.mkdir(exist_ok=True)
    key = keys / name
    key.write_text("not read by this command\n")
    key.chmod(0o600)
    (keys / f"{name}.pub").write_text(pub + "\n")
    return key


def _site(tmp_path: Path, *, prod: str = "    address: 192.0.2.10\n", extra_groups: str = "",
          extra_storage: str = "", pub: str = PUB, dr_root: str = "rp1/iscsi") -> Path:
    key = _key_pair(tmp_path, "id_ed25519", pub)
    remote = f"    user: root\n    key: {key}\n    host_key: {HOST_KEY}\n" if "address:" in prod else ""
    site = tmp_path / "site.yaml"
    site.write_text(f"""version: 1
name: t
storage:
  ss1:
    role: production
{prod}{remote}  ss2:
    role: dr
    address: 198.51.100.20
    user: esxdr
    key: {key}
    host_key: {HOST_KEY}
    serve_prefix: rp1/iscsi
{extra_storage}protection_groups:
  core:
    source: ss1
    destination: ss2
    source_root: sp1/iscsi
    dr_root: {dr_root}
    datasets: [lun0]
    retention: "48h 30d"
    rpo: 4h
{extra_groups}""")
    return site


def _line(capsys, *args: str) -> tuple[int, str, str]:
    rc = run(["keys", "authorized-line", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_the_line_and_the_delegation(tmp_path, capsys):
    rc, out, err = _line(capsys, "--site", str(_site(tmp_path)))
    assert rc == 0, err
    assert out.splitlines() == [
        'restrict,from="192.0.2.10",command="esxdr serve --no-drills --allow-prefix rp1/iscsi --log syslog" ' + PUB,
        "# On ss2, as root: zfs rights for esxdr on rp1/iscsi only, never on the pool:",
        "#   zfs create -p rp1/iscsi",
        "#   zfs allow -u esxdr create,mount,receive,hold,userprop,readonly,canmount rp1/iscsi",
        "# No destroy, rollback or release: this key cannot remove anything on DR. mount is required by",
        "# the kernel for receive and create; on Linux only root mounts (FreeBSD: keep vfs.usermount=0).",
        "# Drills (clone, destroy, release) and failover get no rights here: run them on the DR box,",
        "# from a site file where this server is local: true.",
        "# DR retention runs there too: replication through this key keeps its DR holds, and the DR",
        "# box prunes with `esxdr prune GROUP --side dr` (schedule: `esxdr schedule render --side dr`).",
    ]


def test_the_delegation_never_covers_the_pool_nor_removes(tmp_path, capsys):
    rc, out, _ = _line(capsys, "--site", str(_site(tmp_path)), "--json")
    d = json.loads(out)
    assert rc == 0 and d["from"] == ["192.0.2.10"] and d["log"] == "syslog" and d["prefixes"] == ["rp1/iscsi"]
    allow = [c for c in d["dr_setup"] if c.startswith("zfs allow")]
    assert allow == ["zfs allow -u esxdr create,mount,receive,hold,userprop,readonly,canmount rp1/iscsi"]
    perms = set(allow[0].split()[3].split(","))
    assert not perms & {"destroy", "rollback", "release", "promote", "rename", "allow", "share", "sharenfs",
                        "mountpoint", "volsize", "refreservation", "clone", "diff", "send"}
    assert all(c.split()[-1] == "rp1/iscsi" for c in d["dr_setup"])


def test_from_lists_every_production_server_replicating_here(tmp_path, capsys):
    site = _site(tmp_path, dr_root="rp1/iscsi/core", extra_storage=f"""  ss3:
    role: production
    address: "2001:db8::7"
    user: root
    key: {tmp_path}/keys/id_ed25519
    host_key: {HOST_KEY}
""", extra_groups="""  more:
    source: ss3
    destination: ss2
    source_root: sp3/iscsi
    dr_root: rp1/iscsi/more
    datasets: [lun0]
    retention: "48h 30d"
    rpo: 4h
""")
    rc, out, err = _line(capsys, "--site", str(site))
    assert rc == 0, err
    assert out.startswith('restrict,from="192.0.2.10,2001:db8::7",command=')


def test_a_local_production_needs_from(tmp_path, capsys):
    site = _site(tmp_path, prod="    local: true\n")
    rc, out, err = _line(capsys, "--site", str(site))
    assert rc == 2 and out == "" and "Traceback" not in err
    assert "storage.ss1 has no address (local: true)" in err and "--from ADDRESS" in err
    rc, out, err = _line(capsys, "--site", str(site), "--from", "127.0.0.1")
    assert rc == 0 and out.startswith('restrict,from="127.0.0.1",command="esxdr serve ')


def test_a_host_name_is_refused_for_from(tmp_path, capsys):
    site = _site(tmp_path, prod="    address: ss1.example.com\n")
    rc, out, err = _line(capsys, "--site", str(site))
    assert rc == 2 and out == ""
    assert "storage.ss1.address is the host name 'ss1.example.com'" in err and "UseDNS" in err
    rc, out, _ = _line(capsys, "--site", str(site), "--from", "192.0.2.10, 198.51.100.0/28 ,2001:db8::1")
    assert rc == 0 and out.startswith('restrict,from="192.0.2.10,198.51.100.0/28,2001:db8::1",')


@pytest.mark.parametrize("value", [
    'x",command="/bin/sh',          # an attempt to close from= and add a command of its own
    "192.0.2.10 ,*",                 # a wildcard pattern
    "!192.0.2.10",                   # a negation
    "10.0.0.1/8",                    # host bits set: a typo for 10.0.0.0/8 or for 10.0.0.1?
    "ss1.example.com",               # a name: never matches without UseDNS
    "",
    ",",
    "192.0.2.10\n192.0.2.11",        # a newline inside: a second authorized_keys line
])
def test_hostile_or_malformed_from_is_refused(tmp_path, capsys, value):
    rc, out, err = _line(capsys, "--site", str(_site(tmp_path)), "--from", value)
    assert rc == 2 and out == "" and "Traceback" not in err
    assert "--from: " in err


# -- quoting: what sshd and the account's shell make of the line --------------------------------
def _sshd_options(line: str) -> tuple[dict[str, str], str]:
    """Split an authorized_keys line into its options and key, as OpenSSH reads it: options end at
    the first blank outside double quotes; inside quotes only \\" is an escape (auth-options.c)."""
    i, quoted = 0, False
    while i < len(line) and (quoted or line[i] not in " \t"):
        if line[i] == "\\" and line[i + 1:i + 2] == '"':
            i += 1
        elif line[i] == '"':
            quoted = not quoted
        i += 1
    opts_text, key = line[:i], line[i:].strip()
    opts: dict[str, str] = {}
    j = 0
    while j < len(opts_text):
        name_end = j
        while name_end < len(opts_text) and opts_text[name_end] not in '=,':
            name_end += 1
        name = opts_text[j:name_end]
        if name_end < len(opts_text) and opts_text[name_end] == "=":
            assert opts_text[name_end + 1] == '"', opts_text
            k, value = name_end + 2, []
            while opts_text[k] != '"':
                if opts_text[k] == "\\" and opts_text[k + 1] == '"':
                    k += 1
                value.append(opts_text[k])
                k += 1
            opts[name] = "".join(value)
            j = k + 2  # past the closing quote and the comma
        else:
            opts[name] = ""
            j = name_end + 1
    return opts, key


@pytest.mark.parametrize("path", [
    "/usr/local/bin/esxdr",
    "/opt/my esxdr/bin/esxdr",                  # a blank
    "/opt/o'brien/esxdr",                       # a single quote: shlex.quote writes '"'"'
    '/opt/"quoted"/esxdr',                      # double quotes: escaped for authorized_keys
    '/opt/a\\"b/esxdr',                         # a backslash right before a double quote
    "/opt/$(reboot)/`id`;rm -rf ~/esxdr",       # shell syntax stays data
    "/opt/ünï/esxdr",
])
def test_the_forced_command_survives_sshd_and_the_shell(tmp_path, capsys, path):
    rc, out, err = _line(capsys, "--site", str(_site(tmp_path)), "--esxdr-path", path, "--log", "/var/log/my serve.log")
    assert rc == 0, err
    opts, key = _sshd_options(out.splitlines()[0])
    assert key == PUB and set(opts) == {"restrict", "from", "command"} and opts["from"] == "192.0.2.10"
    # sshd gives the command to `$SHELL -c`: a POSIX shell splits it back into exactly these words
    assert shlex.split(opts["command"]) == [path, "serve", "--no-drills", "--allow-prefix", "rp1/iscsi",
                                            "--log", "/var/log/my serve.log"]


@pytest.mark.skipif(not shutil.which("ssh-keygen"), reason="no OpenSSH ssh-keygen on this machine")
def test_openssh_reads_the_line_with_a_hostile_path(tmp_path, capsys):
    key = tmp_path / "keys" / "id_ed25519"
    _site(tmp_path)
    key.unlink()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "esxdr@ss1", "-f", str(key)], check=True)
    pub = key.with_name("id_ed25519.pub").read_text().strip()
    rc, out, err = _line(capsys, "--site", str(tmp_path / "site.yaml"), "--esxdr-path", '/opt/a"b c\'/esxdr')
    assert rc == 0, err
    ak = tmp_path / "authorized_keys"
    ak.write_text(out)
    # ssh-keygen skips the options as sshd does; unbalanced quoting would hide the key from it
    fp = subprocess.run(["ssh-keygen", "-l", "-f", str(ak)], capture_output=True, text=True)
    own = subprocess.run(["ssh-keygen", "-l", "-f", str(key)], capture_output=True, text=True)
    assert fp.returncode == 0, fp.stderr
    assert fp.stdout.split()[1] == own.stdout.split()[1] and out.splitlines()[0].endswith(pub)


@pytest.mark.parametrize("path, words", [
    ("/opt/esxdr\n,command=\"/bin/sh\"", "control characters"),   # a second line, or a forged option
    ("/opt/esxdr\r", "control characters"),
    ("/opt/es\x00xdr", "control characters"),
    ("/opt/es\x1bxdr", "control characters"),
    ("-oProxyCommand=x", "starts with '-'"),
    ("", "--esxdr-path is empty"),
])
def test_paths_that_cannot_be_carried_are_refused(tmp_path, capsys, path, words):
    rc, out, err = _line(capsys, "--site", str(_site(tmp_path)), "--esxdr-path", path)
    assert rc == 2 and out == "" and words in err and "Traceback" not in err


@pytest.mark.parametrize("log, words", [
    ("serve.log", "--log takes an absolute file or 'syslog', not 'serve.log'"),
    ("SYSLOG", "--log takes an absolute file or 'syslog'"),
    ("/var/log/x\nrestrict", "control characters"),
])
def test_bad_log_destinations_are_refused(tmp_path, capsys, log, words):
    rc, out, err = _line(capsys, "--site", str(_site(tmp_path)), "--log", log)
    assert rc == 2 and out == "" and words in err


def test_a_log_file_and_sudo(tmp_path, capsys):
    rc, out, err = _line(capsys, "--site", str(_site(tmp_path)), "--sudo", "--log", "/var/log/esxdr-serve.log")
    assert rc == 0, err
    assert out.splitlines() == [
        'restrict,from="192.0.2.10",command="esxdr serve --sudo --no-drills --allow-prefix rp1/iscsi '
        '--log /var/log/esxdr-serve.log" ' + PUB,
        "# On ss2: zfs runs as root through sudo, so esxdr serve is the only guard. sudoers:",
        "#   esxdr ALL=(root) NOPASSWD: /usr/sbin/zfs",
    ]


def test_serve_accepts_the_command_the_line_pins(tmp_path, capsys, monkeypatch):
    """The options keys writes are the ones serve reads: the pinned command runs a request."""
    import os

    from esxdr import serve

    rc, out, err = _line(capsys, "--site", str(_site(tmp_path)), "--log", str(tmp_path / "serve.log"))
    assert rc == 0, err
    command = shlex.split(_sshd_options(out.splitlines()[0])[0]["command"])
    assert command[:2] == ["esxdr", "serve"]
    ran: list[list[str]] = []

    def execvp(prog, argv):
        ran.append(argv)
        raise SystemExit(0)

    monkeypatch.setattr(os, "execvp", execvp)
    monkeypatch.setenv("SSH_ORIGINAL_COMMAND", "zfs get -H -o value guid rp1/iscsi/lun0")
    with pytest.raises(SystemExit):
        serve.main(command[2:])
    assert ran == [["zfs", "get", "-H", "-o", "value", "guid", "rp1/iscsi/lun0"]]
    assert "run 'zfs get -H -o value guid rp1/iscsi/lun0'" in (tmp_path / "serve.log").read_text()


@pytest.mark.parametrize("pub, words", [
    (PUB + "\n" + PUB, "is not one OpenSSH public key line"),
    ('command="/bin/sh" ' + PUB, "is not one OpenSSH public key line"),
    ("ssh-ed25519", "is not one OpenSSH public key line"),
    ("-----BEGIN OPENSSH PRIVATE KEY-----", "is not one OpenSSH public key line"),
])
def test_a_public_key_file_that_is_not_one_key_is_refused(tmp_path, capsys, pub, words):
    rc, out, err = _line(capsys, "--site", str(_site(tmp_path, pub=pub)))
    assert rc == 2 and out == "" and words in err and "ssh-keygen -y -f" in err


def test_drills_through_the_key_only_when_asked(tmp_path, capsys):
    """Without --drills the line pins serve --no-drills: a stolen key cannot clone, mount or open
    DR data; drills then run on the DR box. --drills (the lab's way) leaves them to the key."""
    from esxdr.serve import Refused, parse

    rc, out, err = _line(capsys, "--site", str(_site(tmp_path)), "--json")
    assert rc == 0, err
    assert json.loads(out)["drills"] is False and "--no-drills" in json.loads(out)["line"]
    rc, out, err = _line(capsys, "--site", str(_site(tmp_path)), "--drills")
    assert rc == 0 and "--no-drills" not in out.splitlines()[0]
    clone = "rp1/iscsi/esxdr-test-core/lun0"
    for command in (f"zfs clone rp1/iscsi/lun0@a {clone}", f"zfs mount {clone}", f"zfs unmount -f {clone}",
                    f"zfs destroy {clone}", "zfs release esxdr-test-core rp1/iscsi/lun0@a",
                    f"zfs set readonly=off canmount=on {clone}"):
        parse(command, ["rp1/iscsi"])  # allowed by default (drills through the key)...
        with pytest.raises(Refused, match="drills run on the DR box itself here"):
            parse(command, ["rp1/iscsi"], drills=False)  # ...and refused under --no-drills
    # replication itself is untouched by --no-drills
    assert parse("zfs receive -u rp1/iscsi/lun0", ["rp1/iscsi"], drills=False) == \
        [["zfs", "receive", "-u", "rp1/iscsi/lun0"]]


def _dr_view_site(tmp_path: Path, *, dr: str = "    local: true\n", production: str | None = None) -> Path:
    """The site as the DR box sees it (pull mode): production behind its send-only account
    (``production``: other lines for ss1, the key's included)."""
    key = _key_pair(tmp_path, "pull_ed25519", PUB)
    ss1 = production if production is not None else \
        f"    address: 192.0.2.10\n    user: esxdr-src\n    key: {key}\n    host_key: {HOST_KEY}\n    serve_prefix: sp1/iscsi\n"
    site = tmp_path / "dr-site.yaml"
    site.write_text(f"""version: 1
name: t
storage:
  ss1:
    role: production
{ss1}  ss2:
    role: dr
{dr}protection_groups:
  core:
    source: ss1
    destination: ss2
    source_root: sp1/iscsi
    dr_root: rp1/iscsi
    datasets: [lun0]
    retention: "48h 30d"
    rpo: 4h
""")
    return site


def test_pull_mode_line_for_production_is_send_only(tmp_path, capsys):
    rc, out, err = _line(capsys, "--site", str(_dr_view_site(tmp_path)), "--pull", "--from", "198.51.100.20")
    assert rc == 0, err
    assert out.splitlines() == [
        'restrict,from="198.51.100.20",command="esxdr serve --send-only --allow-prefix sp1/iscsi --log syslog" '
        + PUB,
        "# On ss1, as root: zfs rights for esxdr-src on sp1/iscsi only, never on the pool:",
        "#   zfs allow -u esxdr-src send,hold,release sp1/iscsi",
        "# Send, and the hold DR keeps on the snapshot it pulled last (production's retention keeps it).",
        "# No destroy, snapshot, receive or rollback: a leaked DR key reads production, and removes nothing.",
        "# Production snapshots and prunes itself: `esxdr replicate GROUP --snapshot-only` on ss1, on a",
        "# schedule; it also publishes the target manifest that DR copies with each pull.",
    ]
    rc, out, _ = _line(capsys, "--site", str(_dr_view_site(tmp_path)), "--pull", "--from", "198.51.100.20",
                       "--json")
    d = json.loads(out)
    assert rc == 0 and d["mode"] == "pull" and d["production_setup"] == [
        "zfs allow -u esxdr-src send,hold,release sp1/iscsi"]


def test_pull_mode_needs_the_dr_address_when_dr_is_this_box(tmp_path, capsys):
    rc, _, err = _line(capsys, "--site", str(_dr_view_site(tmp_path)), "--pull")
    assert rc == 2 and "storage.ss2 has no address (local: true)" in err and "--from" in err
    dr = f"    address: 198.51.100.21\n    user: x\n    key: {tmp_path / 'keys' / 'pull_ed25519'}\n" \
         f"    host_key: {HOST_KEY}\n"
    rc, out, err = _line(capsys, "--site", str(_dr_view_site(tmp_path, dr=dr)), "--pull", "--json")
    assert rc == 0, err
    assert json.loads(out)["from"] == ["198.51.100.21"]


def test_pull_mode_refuses_drills_and_a_local_production(tmp_path, capsys):
    site = _dr_view_site(tmp_path)
    rc, _, err = _line(capsys, "--site", str(site), "--pull", "--from", "198.51.100.20", "--drills")
    assert rc == 2 and "--drills is for the DR account" in err
    rc, _, err = _line(capsys, "--site", str(_site(tmp_path, prod="    local: true\n")), "--pull", "--from",
                       "198.51.100.20")
    assert rc == 2 and "name the production storage server with --server" in err


def test_the_way_home_line_for_dr_is_send_only(tmp_path, capsys):
    # Production's home site file: ss1 here, ss2 behind DR's account, reached with production's home key.
    site = str(_site(tmp_path, prod="    local: true\n"))
    rc, _, err = _line(capsys, "--site", site, "--home")
    assert rc == 2 and "storage.ss1 has no address (local: true)" in err  # from= production: say where it is
    rc, out, err = _line(capsys, "--site", site, "--home", "--from", "192.0.2.10")
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0] == ('restrict,from="192.0.2.10",command="esxdr serve --send-only --allow-prefix rp1/iscsi '
                        '--log syslog" ' + PUB)
    assert "#   zfs allow -u esxdr send,hold,release rp1/iscsi" in lines
    assert any("Remove the line once home" in x for x in lines)
    d = json.loads(_line(capsys, "--site", site, "--home", "--from", "192.0.2.10", "--json")[1])
    assert d["mode"] == "home" and d["dr_setup"] == ["zfs allow -u esxdr send,hold,release rp1/iscsi"]
    from esxdr.serve import Refused, parse

    prefixes = ["rp1/iscsi"]
    assert parse("zfs send -I rp1/iscsi/lun0@a rp1/iscsi/lun0@b", prefixes, send_only=True)
    for command in ("zfs receive -u rp1/iscsi/lun0", "zfs destroy rp1/iscsi/lun0@a", "zfs rollback rp1/iscsi/lun0@a",
                    "zfs release esxdr-test-core rp1/iscsi/lun0@a"):
        with pytest.raises(Refused):
            parse(command, prefixes, send_only=True)  # what the home key may not do on DR


def test_home_and_pull_are_different_lines(tmp_path, capsys):
    site = str(_site(tmp_path, prod="    local: true\n"))
    rc, _, err = _line(capsys, "--site", site, "--home", "--pull", "--from", "192.0.2.10")
    assert rc == 2 and "choose one" in err
    rc, _, err = _line(capsys, "--site", site, "--home", "--drills", "--from", "192.0.2.10")
    assert rc == 2 and "--drills" in err

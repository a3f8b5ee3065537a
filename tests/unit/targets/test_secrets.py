"""Secrets: files must be the running user's and mode 0600; mask() hides a secret however it was quoted."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import pytest

from esxdr.errors import CommandFailed, UsageError
from esxdr.targets.base import Secrets, read_secret_file
from esxdr.transport import base
from esxdr.transport.base import display, finish, mask, register_secret

CORPUS = Path(__file__).parent / "target_corpus"


def _secret_file(tmp_path: Path, mode: int, text: str = "chap-secret-0001\n", name: str = "chap") -> Path:
    p = tmp_path / name
    p.write_text(text)
    p.chmod(mode)
    return p


# --------------------------------------------------------------------------- file: secrets
def test_file_secret_of_the_user_with_mode_0600_is_read(tmp_path):
    p = _secret_file(tmp_path, 0o600)
    assert Secrets().resolve(f"file:{p}", "CHAP of iqn.x") == "chap-secret-0001"


def test_mode_0400_is_stricter_and_accepted(tmp_path):
    p = _secret_file(tmp_path, 0o400)
    assert Secrets().resolve(f"file:{p}", "CHAP of iqn.x") == "chap-secret-0001"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o602, 0o610, 0o601, 0o666, 0o777], ids=oct)
def test_file_secret_readable_or_writable_by_others_is_refused(tmp_path, mode):
    p = _secret_file(tmp_path, mode)
    with pytest.raises(UsageError) as e:
        Secrets().resolve(f"file:{p}", "CHAP of iqn.x")
    assert str(p) in e.value.message and f"mode {mode:04o}" in e.value.message
    assert e.value.message.startswith("CHAP of iqn.x: secret file: ")
    assert e.value.hint == f"chmod 600 {p}"


def test_file_secret_owned_by_someone_else_is_refused(tmp_path, monkeypatch):
    p = _secret_file(tmp_path, 0o600)
    owner = os.stat(p).st_uid
    # the file stays where it is; esxdr now runs as another user than the file's owner
    monkeypatch.setattr(os, "geteuid", lambda: owner + 4242)
    with pytest.raises(UsageError) as e:
        Secrets().resolve(f"file:{p}", "CHAP of iqn.x")
    assert str(p) in e.value.message and "who runs esxdr" in e.value.message
    assert e.value.hint is not None and e.value.hint.endswith(f"chmod 600 {p}") and e.value.hint.startswith("chown ")


def test_symlink_is_judged_by_the_file_it_points_to(tmp_path):
    good = _secret_file(tmp_path, 0o600, name="good")
    bad = _secret_file(tmp_path, 0o644, name="bad")
    (tmp_path / "to-good").symlink_to(good)
    (tmp_path / "to-bad").symlink_to(bad)
    assert Secrets().resolve(f"file:{tmp_path / 'to-good'}", "CHAP") == "chap-secret-0001"
    with pytest.raises(UsageError, match="mode 0644"):
        Secrets().resolve(f"file:{tmp_path / 'to-bad'}", "CHAP")


def test_not_a_regular_file_is_refused_without_blocking(tmp_path):
    import signal

    def hung(*_):
        raise AssertionError("reading the FIFO blocked (it waits for a writer forever)")

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(5)
    try:
        with pytest.raises(UsageError, match="is not a regular file"):
            Secrets().resolve(f"file:{fifo}", "CHAP")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    d = tmp_path / "dir"
    d.mkdir(mode=0o700)
    with pytest.raises(UsageError, match="is not a regular file"):
        Secrets().resolve(f"file:{d}", "CHAP")


def test_missing_and_binary_files_are_clear_errors(tmp_path):
    with pytest.raises(UsageError, match=f"cannot read {tmp_path}/nope: No such file or directory"):
        Secrets().resolve(f"file:{tmp_path}/nope", "CHAP")
    p = tmp_path / "bin"
    p.write_bytes(b"\xff\xfe\x00")
    p.chmod(0o600)
    with pytest.raises(UsageError, match="is not UTF-8 text"):
        read_secret_file(p, "CHAP")


def test_secrets_file_needs_the_same_owner_and_mode(tmp_path, monkeypatch):
    p = _secret_file(tmp_path, 0o600, "dr: drsecret12345\n", name="secrets.yaml")
    assert Secrets.load(p).resolve("secrets:dr", "CHAP") == "drsecret12345"
    p.chmod(0o640)
    with pytest.raises(UsageError, match="mode 0640"):
        Secrets.load(p)
    p.chmod(0o600)
    monkeypatch.setattr(os, "geteuid", lambda: os.stat(p).st_uid + 1)
    with pytest.raises(UsageError, match="who runs esxdr"):
        Secrets.load(p)


def test_cli_refuses_an_open_file_secret_with_exit_2_and_no_traceback(tmp_path, capsys):
    from esxdr.cli.main import run

    p = _secret_file(tmp_path, 0o644)
    # --secrets makes convert resolve the references (without it, they stay <file:…> placeholders)
    table = _secret_file(tmp_path, 0o600, "other: unused-secret\n", name="secrets.yaml")
    argv = ["target", "convert", "--from", "tgt", str(CORPUS / "tgt/targets.conf"), "--to", "tgt",
            "--secrets", str(table), "--chap-user", "dr", "--chap-secret-ref", f"file:{p}"]
    rc = run(argv)
    err = capsys.readouterr().err
    assert rc == 2
    assert str(p) in err and f"chmod 600 {p}" in err and "Traceback" not in err
    p.chmod(0o600)
    assert run(argv) == 0
    assert "incominguser dr chap-secret-0001" in capsys.readouterr().out


# --------------------------------------------------------------------------- mask()
@pytest.fixture
def registry(monkeypatch):
    """A registry of its own for each test (the real one is process-wide)."""
    fresh: set[str] = set()
    monkeypatch.setattr(base, "_secrets", fresh)
    return fresh


# Secrets a person (or a generator) may well choose, each hard to find once quoted somewhere.
AWKWARD = [
    "it's-a-secret",          # a single quote: shlex.quote writes '"'"'
    'say "when" 42',          # double quotes: repr, JSON and authorized_keys escape them
    "both'and\"quote",        # both: repr escapes the single one
    "back\\slash\\n",         # backslashes: doubled by repr and JSON
    "dollar$HOME`id`",        # what a double-quoted shell string escapes
    "new\nline\ttab",         # control characters: \n, \t in repr and JSON
    "ünïcødé-sécret",         # JSON escapes it as \u00fc… by default
    "'",                      # too short to register: see the test below
]


def _renderings(secret: str) -> dict[str, str]:
    """The secret inside everything esxdr writes a command or a value into."""
    argv = ["tgtadm", "--lld", "iscsi", "--op", "new", "--mode", "account", "--user", "dr", "--password", secret]
    argv_eq = ["targetcli", f"set auth password={secret}"]
    return {
        "shell_join": base.shell_join(argv),
        "shell_join, inside a word": base.shell_join(argv_eq),
        "shlex.join": shlex.join(argv),
        "repr of argv": repr(argv),
        "repr of the value": f"value {secret!r}",
        "json": json.dumps({"argv": argv}),
        "json, unicode kept": json.dumps({"argv": argv}, ensure_ascii=False),
        "double-quoted shell": 'sh -c "tgtadm --password ' + secret.replace("\\", "\\\\").replace('"', '\\"')
                               .replace("$", "\\$").replace("`", "\\`") + '"',
        "authorized_keys style": 'command="x ' + secret.replace('"', '\\"') + '"',
        "raw": f"stderr: bad password {secret}",
    }


@pytest.mark.parametrize("secret", [s for s in AWKWARD if len(s) >= 4])
def test_mask_hides_a_secret_however_it_was_quoted(registry, secret):
    register_secret(secret)
    for how, text in _renderings(secret).items():
        masked = mask(text)
        assert "******" in masked, how
        # nothing of the secret is left: no piece of it between its quote characters either
        for piece in secret.replace("'", " ").replace('"', " ").replace("\\", " ").replace("\n", " ").split():
            if len(piece) >= 4:
                assert piece not in masked, (how, piece, masked)


def test_display_and_command_failures_mask_a_quoted_secret(registry):
    secret = "p'w\"x$9"
    register_secret(secret)
    argv = ["tgtadm", "--password", secret]
    assert "p'" not in display(argv) and "******" in display(argv)
    with pytest.raises(CommandFailed) as e:
        finish("dr", base.Stats(), argv, 1, "", f"tgtadm: bad password {secret}\n", 0.0, check=True)
    assert "******" in e.value.message and "w\"x" not in e.value.message and "x$9" not in e.value.message
    assert e.value.stderr is not None and "x$9" not in e.value.stderr


def test_the_longer_of_two_overlapping_secrets_is_masked_whole(registry):
    register_secret("abcd")
    register_secret("abcd'efgh")
    assert mask(shlex.join(["--password", "abcd'efgh"])) == "--password '******'"


def test_text_without_secrets_is_unchanged(registry):
    register_secret("it's-a-secret")
    text = "zfs receive -u 'rp1/iscsi/lun0' \"quoted\" it's"
    assert mask(text) == text


def test_short_values_are_not_registered(registry):
    register_secret("'")
    register_secret("ab'")
    register_secret(None)
    register_secret("")
    assert registry == set()
    assert mask("it's") == "it's"


# --------------------------------------------------------------------------- CHAP secrets off argv (LIO)
def _lio_manifest_with_chap():
    from esxdr.targets import read_native

    m = read_native("lio", sorted(str(p) for p in (CORPUS / "lio").iterdir()))
    t = m.targets[0]
    # the corpus's esx02 ACL has CHAP already; give esx01 the same account, so both are set
    for g in m.initiator_groups:
        g.chap_user, g.secret_ref = "esx", "secrets:esx"
    members = [iqn for g in m.initiator_groups if g.name in t.acl for iqn in g.members]
    assert len(members) == 2
    return m, t, members


def test_lio_chap_secret_goes_to_configfs_on_stdin_never_on_argv(registry):
    from esxdr.targets import lio

    m, t, members = _lio_manifest_with_chap()
    secret = "lio-chap-s3cret'x"
    cmds = lio.commands(m, Secrets({"esx": secret}))
    assert not [c.argv for c in cmds if any(secret in a for a in c.argv)]
    fed = [c for c in cmds if c.input is not None]
    tag = t.tpgs[0].tag if t.tpgs else 1
    assert [(c.argv, c.input) for c in fed] == [
        (["sh", "-c", 'cat > "$1"', "sh", f"/sys/kernel/config/target/iscsi/{t.iqn}/tpgt_{tag}/acls/{iqn}/auth/password"],
         secret) for iqn in members]
    # the user id still goes through targetcli, before its secret
    for iqn in members:
        user = next(i for i, c in enumerate(cmds) if c.argv == ["targetcli", f"/iscsi/{t.iqn}/tpg{tag}/acls/{iqn} "
                                                                   "set auth userid=esx"])
        assert cmds[user + 1].input == secret
    # what a dry run prints masks it
    assert all(secret not in c.display() and "lio-chap" not in c.display() for c in cmds)


def test_lio_apply_hands_the_secret_to_the_transport_as_input(registry):
    from esxdr.targets import lio

    m, _, members = _lio_manifest_with_chap()
    secret = "lio-chap-s3cret-2"
    seen: list[tuple[list[str], str | None]] = []

    class Recorder:
        name = "dr"

        def run(self, argv, *, input=None, check=True, timeout=300):
            seen.append((argv, input))
            return base.CommandResult(argv, 0, "", "", 0.0)

    lio.apply(Recorder(), m, secrets=Secrets({"esx": secret}), check_backing=False, company_id_settable=True)
    assert not [a for a, _ in seen if any(secret in x for x in a)]
    assert [i for _, i in seen if i is not None] == [secret] * len(members)


def test_lio_script_feeds_the_secret_through_the_shell_builtin(registry):
    from esxdr.targets import lio

    m, _, members = _lio_manifest_with_chap()
    text = lio.script(m, Secrets({"esx": "lio chap 's3cret'"}))
    fed = [x for x in text.splitlines() if x.startswith("printf %s ")]
    assert len(fed) == len(members)
    assert all(x.startswith("printf %s 'lio chap '\"'\"'s3cret'\"'\"'' | sh -c ") for x in fed)
    assert not [x for x in text.splitlines() if x.startswith("targetcli") and "password" in x]

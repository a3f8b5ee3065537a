"""The replication stream's ssh cipher choice (site key stream_ciphers)."""

import shutil

import pytest

from esxdr.transport import ssh


@pytest.fixture
def client(monkeypatch):
    def set_(aes: bool, known: set[str]):
        monkeypatch.setattr(ssh, "_cpu_has_aes", lambda: aes)
        monkeypatch.setattr(ssh, "_client_ciphers", lambda binary: frozenset(known))
    return set_


ALL = {"chacha20-poly1305@openssh.com", "aes128-ctr", "aes192-ctr", "aes256-ctr",
       "aes128-gcm@openssh.com", "aes256-gcm@openssh.com"}


def test_auto_puts_gcm_first_on_an_aes_cpu(client):
    client(True, ALL)
    assert ssh.stream_cipher_option("ssh", "auto") == [
        "-c", "aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com,"
              "aes128-ctr,aes192-ctr,aes256-ctr"]


def test_auto_keeps_openssh_order_without_aes_instructions(client):
    client(False, ALL)
    assert ssh.stream_cipher_option("ssh", "auto") == []


def test_auto_keeps_openssh_order_when_the_client_has_no_gcm(client):
    client(True, ALL - {"aes128-gcm@openssh.com", "aes256-gcm@openssh.com"})
    assert ssh.stream_cipher_option("ssh", "auto") == []


def test_auto_offers_only_what_the_client_knows(client):
    client(True, {"aes256-gcm@openssh.com", "aes128-ctr"})
    assert ssh.stream_cipher_option("ssh", "auto") == ["-c", "aes256-gcm@openssh.com,aes128-ctr"]


def test_default_and_explicit_lists(client):
    client(True, ALL)
    assert ssh.stream_cipher_option("ssh", "default") == []
    assert ssh.stream_cipher_option("ssh", "aes256-ctr") == ["-c", "aes256-ctr"]


@pytest.mark.skipif(not shutil.which("ssh"), reason="no OpenSSH client on this machine")
def test_the_local_client_lists_its_ciphers():
    ssh._client_ciphers.cache_clear()
    known = ssh._client_ciphers(shutil.which("ssh"))
    assert "aes128-ctr" in known and "chacha20-poly1305@openssh.com" in known


def test_stream_command_carries_the_choice(client, tmp_path):
    client(True, ALL)
    t = ssh.SshTransport("dr", "127.0.0.1", user="esxdr", key_file=str(tmp_path / "k"),
                         host_key="SHA256:" + "A" * 43, ssh_client="/usr/bin/ssh", stream_ciphers="aes256-ctr")
    t._kh_dir = str(tmp_path)  # the known_hosts file normally comes from the verified key
    (tmp_path / "known_hosts").write_text("")
    argv = t.stream_command(["zfs", "receive", "rp1/x"])
    assert argv[argv.index("-c") + 1] == "aes256-ctr"
    assert argv.index("-c") < argv.index("--")


# -- the remembered host key (state_dir/hosts/NAME.hostkey) ---------------------------------
def _fingerprint(b64: str) -> str:
    import base64
    import hashlib

    return "SHA256:" + base64.b64encode(hashlib.sha256(base64.b64decode(b64)).digest()).decode().rstrip("=")


KEY = "AAAAC3NzaC1lZDI1NTE5AAAAIMfwxHvQ8d1M1RnNx4NJeppHyR/NRDriQLgaKjpdLl9q"
OTHER = "AAAAC3NzaC1lZDI1NTE5AAAAIHYfOdYYK61d+0O8KfPYpweuLx8FB4tWQiemG1Yi2yOw"


def _transport(tmp_path, pin: str) -> ssh.SshTransport:
    return ssh.SshTransport("dr", "127.0.0.1", port=2222, user="esxdr", key_file=str(tmp_path / "k"),
                            host_key=pin, ssh_client="/usr/bin/ssh", key_cache=str(tmp_path / "hosts" / "dr.hostkey"))


def test_a_remembered_key_is_used_only_while_the_pin_matches(tmp_path):
    (tmp_path / "hosts").mkdir()
    (tmp_path / "hosts" / "dr.hostkey").write_text(f"ssh-ed25519 {KEY}\n")
    t = _transport(tmp_path, _fingerprint(KEY))
    path = t._known_hosts_file(connect=False)
    assert path is not None
    assert open(path).read() == f"[127.0.0.1]:2222 ssh-ed25519 {KEY}\n"
    t.close()
    # the site file now pins another key: the remembered one is not trusted, nothing connects
    t = _transport(tmp_path, _fingerprint(OTHER))
    assert t._known_hosts_file(connect=False) is None
    t.prewarm(connect=False)
    assert t._master is None


def test_an_unreadable_or_missing_cache_is_ignored(tmp_path):
    t = _transport(tmp_path, _fingerprint(KEY))
    assert t._known_hosts_file(connect=False) is None
    (tmp_path / "hosts").mkdir()
    (tmp_path / "hosts" / "dr.hostkey").write_text("garbage")
    assert t._known_hosts_file(connect=False) is None


def test_the_verified_key_is_remembered(tmp_path):
    class Key:
        def get_name(self):
            return "ssh-ed25519"

        def get_base64(self):
            return KEY

    t = _transport(tmp_path, _fingerprint(KEY))
    t._remember_key(Key())
    assert (tmp_path / "hosts" / "dr.hostkey").read_text() == f"ssh-ed25519 {KEY}\n"
    assert t._remembered_key() == ("ssh-ed25519", KEY)

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

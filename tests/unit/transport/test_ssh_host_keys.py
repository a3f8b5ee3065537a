"""SSH host keys: a pinned fingerprint decides over known_hosts; the OpenSSH stream reads no ssh_config.

The control connection is tested against a real paramiko server on the other end of a socketpair:
generated keys, the real key exchange and authentication, no network.
"""

from __future__ import annotations

import re
import socket
import threading

import paramiko
import pytest

from esxdr.errors import HostKeyError
from esxdr.transport import ssh


class _Server(paramiko.ServerInterface):
    def __init__(self, client_key: paramiko.PKey):
        self.client_key = client_key
        self.commands: list[str] = []
        self.authenticated = threading.Event()

    def get_allowed_auths(self, username):
        return "publickey"

    def check_auth_publickey(self, username, key):
        if username == "esxdr" and key == self.client_key:
            self.authenticated.set()
            return paramiko.AUTH_SUCCESSFUL
        return paramiko.AUTH_FAILED

    def check_channel_request(self, kind, chanid):
        return paramiko.OPEN_SUCCEEDED if kind == "session" else paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_exec_request(self, channel, command):
        self.commands.append(command.decode())

        def answer():
            try:
                while channel.recv(1024):  # like a command that reads its stdin: answer after EOF
                    pass
                channel.sendall(b"zfs-2.1.11\n")
                channel.send_exit_status(0)
                channel.close()
            except (paramiko.SSHException, EOFError, OSError):
                pass  # the client already closed the connection (the test is over)

        threading.Thread(target=answer, daemon=True).start()
        return True


@pytest.fixture(scope="module")
def keys():
    """ECDSA keys (cheap to generate): the server's real key, an impostor's, and esxdr's own."""
    return {"server": paramiko.ECDSAKey.generate(), "impostor": paramiko.ECDSAKey.generate(),
            "client": paramiko.ECDSAKey.generate()}


@pytest.fixture
def dr(keys, tmp_path, monkeypatch):
    """Make an SshTransport to "dr.example" whose connection lands on an in-process server."""
    key_file = tmp_path / "id_ecdsa"
    keys["client"].write_private_key_file(str(key_file))
    started: list[tuple[paramiko.Transport, _Server]] = []

    def make(offered: paramiko.PKey, *, host_key: str | None = None, known: list[paramiko.PKey] | None = None):
        ours, theirs = socket.socketpair()
        server = _Server(keys["client"])
        t = paramiko.Transport(theirs)
        t.add_server_key(offered)
        def serve():
            try:
                t.start_server(server=server)
            except (paramiko.SSHException, EOFError, OSError):
                pass  # the client hung up during the handshake: what a refused host key does

        threading.Thread(target=serve, daemon=True).start()
        started.append((t, server))
        # the hostname and port are esxdr's; only the socket is handed in
        monkeypatch.setattr(ssh, "_socket", lambda *a: ours)
        known_hosts = None
        if known is not None:
            known_hosts = tmp_path / "known_hosts"
            known_hosts.write_text("".join(f"dr.example {k.get_name()} {k.get_base64()}\n" for k in known))
        return ssh.SshTransport("dr", "dr.example", user="esxdr", key_file=str(key_file), host_key=host_key,
                                known_hosts=str(known_hosts) if known_hosts else None, ssh_client=None,
                                connect_timeout=5), server

    yield make
    for t, _ in started:
        t.close()


def fp(key: paramiko.PKey) -> str:
    return ssh.fingerprint_of(key)


def test_the_pinned_key_connects_and_runs(dr, keys):
    t, server = dr(keys["server"], host_key=fp(keys["server"]))
    r = t.run(["zfs", "version"])
    assert r.stdout == "zfs-2.1.11\n" and server.commands == ["zfs version"]
    t.close()


def test_a_known_hosts_match_does_not_get_past_a_different_pin(dr, keys):
    # The impostor's key is in known_hosts (an old, careless or planted entry); the site file pins
    # the real server's key. The pin wins: refused before any authentication.
    t, server = dr(keys["impostor"], host_key=fp(keys["server"]), known=[keys["impostor"]])
    with pytest.raises(HostKeyError) as e:
        t.run(["zfs", "version"])
    assert f"server offered ecdsa-sha2-nistp256 {fp(keys['impostor'])}" in e.value.message
    assert f"site file pins {fp(keys['server'])}" in e.value.message
    assert not server.authenticated.is_set() and server.commands == []


def test_a_stale_known_hosts_entry_does_not_refuse_the_pinned_key(dr, keys):
    # The server was re-installed, its new key verified and pinned; known_hosts still has the old one.
    t, server = dr(keys["server"], host_key=fp(keys["server"]), known=[keys["impostor"]])
    assert t.run(["zfs", "version"]).returncode == 0
    t.close()


def test_a_wrong_pin_is_refused_without_known_hosts(dr, keys):
    t, server = dr(keys["impostor"], host_key=fp(keys["server"]))
    with pytest.raises(HostKeyError, match="host key changed or wrong"):
        t.run(["zfs", "version"])
    assert not server.authenticated.is_set()


def test_known_hosts_alone_still_decides_when_nothing_is_pinned(dr, keys):
    t, _ = dr(keys["server"], known=[keys["server"]])
    assert t.run(["zfs", "version"]).returncode == 0
    t.close()
    t, server = dr(keys["impostor"], known=[keys["server"]])
    with pytest.raises(HostKeyError, match="CHANGED"):
        t.run(["zfs", "version"])
    assert not server.authenticated.is_set()


def test_an_unknown_key_is_never_learned(dr, keys):
    t, server = dr(keys["impostor"], known=[])
    with pytest.raises(HostKeyError, match="esxdr never trusts unknown keys"):
        t.run(["zfs", "version"])
    assert not server.authenticated.is_set()


def test_the_pin_is_checked_again_after_the_handshake(dr, keys, monkeypatch):
    # Should a later change let a key in some other way (here: a policy that accepts anything),
    # the connection still fails on the pin before a command runs.
    class AcceptAll(paramiko.MissingHostKeyPolicy):
        def missing_host_key(self, client, hostname, key):
            return

    monkeypatch.setattr(ssh, "_pinned_policy", lambda expected, label: AcceptAll())
    t, server = dr(keys["impostor"], host_key=fp(keys["server"]))
    with pytest.raises(HostKeyError, match=re.escape(f"site file pins {fp(keys['server'])}; refusing")):
        t.run(["zfs", "version"])
    assert server.commands == []


# -- the OpenSSH stream --------------------------------------------------------------------------
def test_the_stream_reads_no_ssh_config_and_names_every_option(dr, keys, tmp_path, monkeypatch):
    t, _ = dr(keys["server"], host_key=fp(keys["server"]))
    t._ssh_binary = "/usr/bin/ssh"
    t.stream_ciphers = "default"
    argv = t.stream_command(["zfs", "receive", "-u", "rp1/x"])
    # -F none first: ~/.ssh/config and /etc/ssh/ssh_config are never read
    assert argv[:3] == ["/usr/bin/ssh", "-F", "none"]
    options = [argv[i + 1] for i, a in enumerate(argv) if a == "-o"]
    kh = next(o.split("=", 1)[1] for o in options if o.startswith("UserKnownHostsFile="))
    for needed in ("BatchMode=yes", "IdentitiesOnly=yes", "StrictHostKeyChecking=yes",
                   "GlobalKnownHostsFile=/dev/null", "ControlMaster=auto"):
        assert needed in options
    assert {"-T", "-x", "-a"} <= set(argv[:argv.index("--")])
    assert argv[argv.index("-i") + 1] == t.key_file and argv[argv.index("-p") + 1] == "22"
    assert argv[-3:] == ["esxdr@dr.example", "--", "zfs receive -u rp1/x"]
    # the stream trusts exactly the key the control connection verified against the pin
    keys_line = open(kh).read().split()
    assert keys_line == ["dr.example", keys["server"].get_name(), keys["server"].get_base64()]

    ran: list[list[str]] = []
    monkeypatch.setattr(ssh.subprocess, "run", lambda argv, **kw: ran.append(argv))
    assert t._kh_dir is not None
    open(t._kh_dir + "/cm", "w").close()  # as if a master had left its control socket there
    t.close()
    assert ran and ran[0][:3] == ["/usr/bin/ssh", "-F", "none"] and "-O" in ran[0]


def test_the_control_connection_gives_up_on_a_silent_network():
    """Three keepalive periods without an acknowledgement close it (TCP_USER_TIMEOUT), so a command
    over a cut link fails as transient within a minute instead of waiting out its timeout."""
    with socket.create_server(("127.0.0.1", 0)) as srv:
        sock = ssh._socket("127.0.0.1", srv.getsockname()[1], 2, 15)
        try:
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 45_000
        finally:
            sock.close()

"""esxdr keys deploy-serve against a real sshd: serve's one file reaches the box over the pinned host
key as an admin account, answers with the version and sources sent, and the printed line's command
is the forced command that refuses what the package's serve refuses. An impostor host key gets
nothing, a dry run writes nothing. (Every other integration test runs this file too: it is what the
lab's service account runs.)"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from esxdr import __version__
from esxdr.lab import sshd as sshd_mod
from esxdr.lab.tgtd import free_port
from esxdr.serve.bundle import bundle, sources_sha256

ESXDR = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "esxdr")


@pytest.fixture(scope="module")
def box():
    # sshd's StrictModes refuses keys below /tmp's world-writable directory
    d = Path(tempfile.mkdtemp(prefix="esxdr-deploy-", dir="/var/lib"))
    os.chmod(d, 0o755)
    ak = d / "ak"
    ak.mkdir(mode=0o755)
    admin = d / "id_admin"
    (ak / "root").write_text(sshd_mod.keygen(str(admin), "esxdr-admin") + "\n")
    os.chmod(ak / "root", 0o644)
    service = d / "id_service"
    sshd_mod.keygen(str(service), "esxdr-service")
    port = free_port("127.0.0.1")
    s = sshd_mod.start(str(d), "127.0.0.1", port, str(ak), root_login=True)
    impostor = d / "impostor"
    sshd_mod.keygen(str(impostor), "impostor")
    yield {"dir": d, "port": port, "admin": str(admin), "service": str(service),
           "pin": sshd_mod.host_fingerprint(str(d)),
           "wrong_pin": subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", f"{impostor}.pub"], check=True,
                                       capture_output=True, text=True).stdout.split()[1]}
    os.kill(s.pid, signal.SIGTERM)
    shutil.rmtree(d, ignore_errors=True)


def _site(box, pin: str) -> Path:
    p = box["dir"] / f"site-{pin[-6:].replace('/', '_')}.yaml"
    p.write_text(f"""version: 1
name: deploy
state_dir: {box['dir']}/state
storage:
  ss1: {{role: production, local: true}}
  ss2: {{role: dr, address: 127.0.0.1, port: {box['port']}, user: esxdr-svc, key: {box['service']},
        host_key: "{pin}", serve_prefix: rp1/iscsi}}
protection_groups:
  core:
    source: ss1
    destination: ss2
    source_root: sp1/iscsi
    dr_root: rp1/iscsi
    datasets: [lun0]
    rpo: 1h
    retention: {{source: "48h", destination: "48h"}}
""")
    return p


def _esxdr(site: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([ESXDR, "--site", str(site), *args], capture_output=True, text=True, timeout=120)


def test_deploy_serve_copies_the_file_and_prints_the_line_that_runs_it(box, tmp_path):
    path = str(box["dir"] / "libexec" / "esxdr-serve")
    r = _esxdr(_site(box, box["pin"]), "keys", "deploy-serve", "--admin-key", box["admin"], "--path", path,
               "--from", "127.0.0.1", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert Path(path).read_text() == bundle(__version__) and os.stat(path).st_mode & 0o777 == 0o755
    assert out["deployed"]["sources_sha256"] == sources_sha256() and tuple(map(int, out["deployed"]["python_version"].split("."))) >= (3, 6)
    python = out["deployed"]["python"]
    command = f'{python} -I {path} serve --no-drills --allow-prefix rp1/iscsi --log syslog'
    assert f'command="{command}"' in out["line"] and out["line"].startswith('restrict,from="127.0.0.1"')
    # The line's command as sshd runs it (through a shell), with what production could send.
    log = tmp_path / "serve.log"
    cmd = shlex.split(command)[:-1] + [str(log)]
    env = {"PATH": os.environ["PATH"]}
    refused = subprocess.run(cmd, env={**env, "SSH_ORIGINAL_COMMAND": "zfs destroy -r rp1/iscsi/lun0"},
                             capture_output=True, text=True)
    assert refused.returncode == 126 and "refused" in refused.stderr
    caps = subprocess.run(cmd, env={**env, "SSH_ORIGINAL_COMMAND": "esxdr-capabilities"}, capture_output=True,
                          text=True)
    assert caps.returncode == 0 and "openzfs" in json.loads(caps.stdout)
    assert "REFUSED 'zfs destroy -r rp1/iscsi/lun0'" in log.read_text()


def test_an_impostor_host_key_gets_nothing(box):
    path = box["dir"] / "impostor" / "esxdr-serve"
    r = _esxdr(_site(box, box["wrong_pin"]), "keys", "deploy-serve", "--admin-key", box["admin"], "--path", str(path),
               "--from", "127.0.0.1")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "host key" in r.stderr.lower()
    assert not path.exists()


def test_a_dry_run_checks_python_and_writes_nothing(box):
    path = box["dir"] / "dry" / "esxdr-serve"
    r = _esxdr(_site(box, box["pin"]), "keys", "deploy-serve", "--admin-key", box["admin"], "--path", str(path),
               "--from", "127.0.0.1", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "dry run: nothing written" in r.stdout and f"{path} serve --no-drills" in r.stdout
    assert "is Python 3." in r.stderr and not path.exists()


def test_no_usable_python_is_a_clear_refusal(box):
    r = _esxdr(_site(box, box["pin"]), "keys", "deploy-serve", "--admin-key", box["admin"], "--path",
               str(box["dir"] / "x" / "esxdr-serve"), "--from", "127.0.0.1", "--python", "/nonexistent/python3")
    assert r.returncode == 2 and "no Python 3.6 or newer on the box at /nonexistent/python3" in r.stderr
    assert "Traceback" not in r.stderr

"""What esxdr remembers of the CHAP secrets it set on each host.

ESXi reports whether CHAP is on and under which name, never the secret. To notice that
the secret in the site file's file or variable changed since the last `esxdr host apply`,
esxdr keeps a keyed fingerprint (HMAC-SHA256, the key made once per state dir, 0600) of
the secret it set, per endpoint and host. The fingerprint reveals nothing without the key,
and the key sits beside the state the operator already protects.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path
from typing import Any

from esxdr.errors import EsxdrError
from esxdr.util import atomic_write
from esxdr.vsphere.host import read_chap_secret

UNRECORDED = "unrecorded"  # a secret exists but no key yet: nothing can have been recorded


class ChapRecords:
    def __init__(self, state_dir: str, endpoint: str):
        self.dir = Path(state_dir) / "vsphere" / "chap"
        self.endpoint = endpoint

    def _key(self, create: bool) -> bytes | None:
        path = self.dir / "key"
        try:
            return path.read_bytes()
        except FileNotFoundError:
            if not create:
                return None
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = secrets.token_bytes(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key)
        return key

    def _path(self, host: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{self.endpoint}--{host}")
        return self.dir / f"{safe}.json"

    @staticmethod
    def _params(spec: Any) -> dict[str, Any]:
        return {"secret_file": spec.secret_file, "secret_env": spec.secret_env}

    def _fingerprint(self, key: bytes, host: str, spec: Any) -> str:
        secret = read_chap_secret(self._params(spec))
        msg = f"{self.endpoint}\0{host}\0{spec.name}\0{secret}".encode()
        return hmac.new(key, msg, hashlib.sha256).hexdigest()

    def state(self, host: str, spec: Any) -> tuple[str | None, str | None]:
        """(recorded, current) fingerprints for the planner; current None when the secret is unreadable."""
        if spec is None:
            return None, None
        try:
            recorded = json.loads(self._path(host).read_text()).get("fingerprint")
        except (OSError, ValueError):
            recorded = None
        key = self._key(create=False)
        try:
            current = self._fingerprint(key, host, spec) if key else UNRECORDED
        except (OSError, EsxdrError):  # an unreadable secret is reported by apply, where it is needed
            current = None
        return recorded, current

    def record(self, host: str, spec: Any) -> None:
        key = self._key(create=True)
        assert key is not None
        atomic_write(self._path(host), json.dumps({"endpoint": self.endpoint, "host": host, "name": spec.name,
                                                   "fingerprint": self._fingerprint(key, host, spec)}), mode=0o600)

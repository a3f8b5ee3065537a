"""Where every command esxdr runs passes: local or over SSH.

``Transport`` is the one choke point for side effects on storage hosts: it logs
each command with secrets masked, times it, counts it (benchmarks read the
counts) and turns failures into :class:`esxdr.errors.CommandFailed`. Callers
that understand the command's stderr (the zfs adapter) refine those further.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from esxdr.errors import UsageError
from esxdr.transport.base import CommandResult, Stats, Transport, mask, register_secret
from esxdr.transport.local import LocalTransport
from esxdr.transport.ssh import SshTransport, fingerprint_of

if TYPE_CHECKING:
    from esxdr.site.model import StorageServer

__all__ = [
    "CommandResult",
    "LocalTransport",
    "SshTransport",
    "for_server",
    "Stats",
    "Transport",
    "fingerprint_of",
    "mask",
    "register_secret",
]


def for_server(server: StorageServer, state_dir: str | None = None) -> Transport:
    """The transport for a storage server of the site file (state_dir: where verified host keys are kept)."""
    if server.local:
        return LocalTransport(server.name)
    # ESXDR_STREAM_CLIENT=paramiko forces the bulk stream through paramiko even where the
    # OpenSSH client exists (for a client that misbehaves; it is slower, see DESIGN.md).
    client = "auto" if os.environ.get("ESXDR_STREAM_CLIENT", "openssh") != "paramiko" else None
    if not (server.address and server.user and server.key):
        # the site check asks these of every remote server esxdr connects to

        raise UsageError(f"storage.{server.name}: esxdr reaches it over SSH, and the site file lacks its "
                         + ", ".join(k for k in ("address", "user", "key") if not getattr(server, k)))
    return SshTransport(
        server.name, server.address, port=server.port, user=server.user, key_file=server.key,
        host_key=server.host_key, known_hosts=server.known_hosts, ssh_client=client,
        stream_ciphers=server.stream_ciphers,
        key_cache=os.path.join(state_dir, "hosts", f"{server.name}.hostkey") if state_dir else None,
    )

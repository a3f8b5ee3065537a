"""Shared pieces of the transports: the protocol, results, counting and masking."""

from __future__ import annotations

import logging
import shlex
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

from esxdr.errors import CommandFailed

log = logging.getLogger("esxdr.transport")

_secrets: set[str] = set()
_secrets_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Remember a secret so that it never appears in logs or reports."""
    if value and len(value) >= 4:
        with _secrets_lock:
            _secrets.add(value)


def mask(text: str) -> str:
    with _secrets_lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for s in secrets:
        text = text.replace(s, "******")
    return text


def stages(argv: list[str]) -> list[list[str]]:
    """Split an argv on literal '|' elements into pipeline stages."""
    out: list[list[str]] = [[]]
    for a in argv:
        if a == "|":
            out.append([])
        else:
            out[-1].append(a)
    return out


def shell_join(argv: list[str]) -> str:
    """A command line for a POSIX shell (or `esxdr serve`), with '|' elements left as pipes."""
    return " | ".join(shlex.join(s) for s in stages(argv))


def display(argv: list[str]) -> str:
    return mask(shell_join(argv))


@dataclass
class CommandResult:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float


@dataclass
class Stats:
    """What a transport did, for benchmarks and run summaries."""

    commands: int = 0
    seconds: float = 0.0
    by_program: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, argv: list[str], seconds: float) -> None:
        prog = argv[0].rsplit("/", 1)[-1] if argv else "?"
        with self._lock:
            self.commands += 1
            self.seconds += seconds
            self.by_program[prog] = self.by_program.get(prog, 0) + 1


class Transport(Protocol):
    """Runs commands on one host. Implementations: LocalTransport, SshTransport."""

    name: str
    stats: Stats

    def run(self, argv: list[str], *, input: str | None = None, timeout: float | None = 300,
            check: bool = True) -> CommandResult: ...

    def stream_command(self, argv: list[str]) -> list[str]:
        """The local argv whose stdin/stdout are those of ``argv`` running on this host."""
        ...

    def spawn_stream(self, argv: list[str], *, stdin: int | None, stdout: int | None) -> subprocess.Popen:
        """Start ``argv`` on this host for a bulk data stream (never through Python memory)."""
        ...

    def close(self) -> None: ...


def finish(name: str, stats: Stats, argv: list[str], rc: int, out: str, err: str, started: float,
           check: bool) -> CommandResult:
    """Common bookkeeping after a command ran: count, log, and raise on failure."""
    seconds = time.monotonic() - started
    stats.record(argv, seconds)
    log.debug("[%s] %s -> rc=%s in %.3fs", name, display(argv), rc, seconds)
    result = CommandResult(argv=argv, returncode=rc, stdout=out, stderr=err, seconds=seconds)
    if check and rc != 0:
        first = mask(err.strip().splitlines()[0]) if err.strip() else f"exit status {rc}"
        raise CommandFailed(
            f"{name}: `{display(argv)}` failed: {first}",
            argv=argv, returncode=rc, stderr=mask(err), host=name,
        )
    return result

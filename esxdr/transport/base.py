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


def _spellings(secret: str) -> set[str]:
    """Every way ``secret`` can appear in text esxdr writes, so that mask() finds each of them.

    A secret with a quote, a backslash or a control character is not written as itself once it
    is quoted: inside a POSIX shell word (shlex.quote and shell_join turn a single quote into
    four characters), a Python repr (either quote; backslash escapes), JSON (backslash and
    unicode escapes), or a double-quoted shell or authorized_keys string (backslash before the
    double quote, the dollar and the backquote). Each spelling is the secret's own inner part,
    so it is also found inside a longer quoted word (``'--password=…'``).
    """
    import json

    out = {secret, secret.replace("'", "'\"'\"'")}
    for q in ("'", '"'):
        # repr picks its quote by content: a quote appended forces each choice in turn; the
        # appended one is then cut again (escaped, two characters, when it is the delimiter)
        r = repr(secret + q)
        out.add(r[1:-3] if r[0] == q else r[1:-2])
    out.add(json.dumps(secret)[1:-1])
    out.add(json.dumps(secret, ensure_ascii=False)[1:-1])
    dq = secret
    for ch in ("\\", '"', "$", "`"):
        dq = dq.replace(ch, "\\" + ch)
    out.add(dq)
    out.add(secret.replace('"', '\\"'))
    return {s for s in out if s}


def mask(text: str) -> str:
    """``text`` with every registered secret, in any of its quoted spellings, replaced by ******."""
    with _secrets_lock:
        secrets = list(_secrets)
    # longest first: a secret that contains another is replaced whole, not around the shorter one
    for s in sorted({sp for secret in secrets for sp in _spellings(secret)}, key=len, reverse=True):
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

"""Commands on this host, for the side of a site that esxdr runs on."""

from __future__ import annotations

import subprocess
import time

from esxdr.errors import CommandFailed, TransientError
from esxdr.transport.base import CommandResult, Stats, display, finish, shell_join


class LocalTransport:
    def __init__(self, name: str = "localhost"):
        self.name = name
        self.stats = Stats()

    def run(self, argv: list[str], *, input: str | None = None, timeout: float | None = 300,
            check: bool = True) -> CommandResult:
        started = time.monotonic()
        try:
            proc = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout)
        except FileNotFoundError as e:
            raise CommandFailed(f"{self.name}: `{argv[0]}` is not installed", argv=argv,
                                hint=f"install {argv[0]} on {self.name}") from e
        except subprocess.TimeoutExpired as e:
            raise TransientError(f"{self.name}: `{display(argv)}` timed out after {timeout}s") from e
        return finish(self.name, self.stats, argv, proc.returncode, proc.stdout, proc.stderr, started, check)

    def stream_command(self, argv: list[str]) -> list[str]:
        return list(argv)

    def spawn_stream(self, argv: list[str], *, stdin: int | None, stdout: int | None) -> subprocess.Popen:
        self.stats.record(argv, 0.0)
        if "|" in argv:
            argv = ["sh", "-c", shell_join(argv)]
        return subprocess.Popen(argv, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE)

    def close(self) -> None:
        pass

"""The esxdr error hierarchy.

Every error a user can meet is an ``EsxdrError``. The CLI's single handler
(:func:`esxdr.cli.main.run`) prints ``message`` and ``hint`` and exits with
``exit_code``; only ``--debug`` shows a traceback. Foreign exceptions
(paramiko, pyVmomi, OSError) are translated where they enter esxdr, never
in the middle of the logic.

::

    EsxdrError (exit 1)
    ├── UsageError                 exit 2   bad input: arguments, files, values
    │   ├── SiteError              exit 2   site file problems (carries all of them, file:line each)
    │   └── ManifestError          exit 2   target manifest or native target config unreadable/invalid
    ├── ConflictError              exit 3   a decision is needed before anything can proceed
    │   ├── ReplicationConflict    exit 3   typed: modified / diverged / no common / unrelated
    │   ├── LockHeld               exit 3   another run holds the group lock
    │   └── IdentityConflict       exit 3   a target stack cannot reproduce an NAA, split brain guard
    ├── RemoteError                exit 4   a remote command or service failed
    │   ├── TransientError         exit 4   worth retrying: connection reset, stream cut, timeouts
    │   ├── HostKeyError           exit 4   unknown or changed SSH host key (permanent)
    │   ├── CommandFailed          exit 4   a command exited non-zero (permanent unless classified)
    │   └── VsphereError           exit 4   a vSphere fault translated at the adapter boundary
    └── StaleStateError            exit 5   RPO exceeded and similar health checks
"""

from __future__ import annotations


class EsxdrError(Exception):
    exit_code = 1
    transient = False

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def to_dict(self) -> dict[str, object]:
        return {
            "error": type(self).__name__,
            "message": self.message,
            "hint": self.hint,
            "exit_code": self.exit_code,
        }


class UsageError(EsxdrError):
    exit_code = 2


class Problem:
    """One located problem in an input file (site file, manifest)."""

    __slots__ = ("file", "line", "column", "path", "message", "hint")

    def __init__(self, file: str, line: int, column: int, path: str, message: str, hint: str | None = None):
        self.file = file
        self.line = line
        self.column = column
        self.path = path
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        text = f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"
        if self.hint:
            text += f" — {self.hint}"
        return text

    def to_dict(self) -> dict[str, object]:
        return {
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "path": self.path,
            "message": self.message,
            "hint": self.hint,
        }


class SiteError(UsageError):
    """All problems found in a site file, reported together."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        n = len(problems)
        lines = [str(p) for p in problems] + [f"{n} problem{'s' if n != 1 else ''}"]
        super().__init__("\n".join(lines))

    def to_dict(self) -> dict[str, object]:
        d = super().to_dict()
        d["problems"] = [p.to_dict() for p in self.problems]
        return d


class ManifestError(UsageError):
    pass


class ConflictError(EsxdrError):
    exit_code = 3


class ReplicationConflict(ConflictError):
    """A typed replication conflict with its evidence.

    ``kind`` is one of ``modified``, ``diverged``, ``no-common``, ``unrelated``.
    """

    def __init__(self, kind: str, message: str, hint: str | None = None, evidence: dict | None = None):
        super().__init__(message, hint)
        self.kind = kind
        self.evidence = evidence or {}

    def to_dict(self) -> dict[str, object]:
        d = super().to_dict()
        d["kind"] = self.kind
        d["evidence"] = self.evidence
        return d


class LockHeld(ConflictError):
    def __init__(self, message: str, pid: int | None, hint: str | None = None):
        super().__init__(message, hint)
        self.pid = pid


class IdentityConflict(ConflictError):
    pass


class RemoteError(EsxdrError):
    exit_code = 4


class TransientError(RemoteError):
    transient = True


class HostKeyError(RemoteError):
    pass


class CommandFailed(RemoteError):
    def __init__(self, message: str, *, argv: list[str] | None = None, returncode: int | None = None,
                 stderr: str = "", host: str = "", hint: str | None = None, transient: bool = False):
        super().__init__(message, hint)
        self.argv = argv or []
        self.returncode = returncode
        self.stderr = stderr
        self.host = host
        self.transient = transient


class VsphereError(RemoteError):
    pass


class StaleStateError(EsxdrError):
    exit_code = 5

"""What every target backend shares: the command type, the backend protocol, secrets, checks.

A backend turns a :class:`~esxdr.model.manifest.Manifest` into native
configuration (``render``), native configuration back into a manifest
(``parse``), and, through a transport, reads (``observe``) and changes
(``apply``) a live target. ``apply`` first builds the full command list (the
plan) and only then runs it, so ``--dry-run`` shows exactly what would run, and
every check that can refuse (identity, backing stores) happens before the
first command.
"""

from __future__ import annotations

import os
import shlex
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from esxdr.errors import IdentityConflict, ManifestError, UsageError
from esxdr.model.manifest import LogicalUnit, Manifest
from esxdr.transport.base import mask, register_secret

if TYPE_CHECKING:
    from esxdr.transport.base import Transport


@dataclass
class Command:
    """One command of an apply plan, with the reason it is needed."""

    argv: list[str]
    reason: str
    input: str | None = None

    def display(self) -> str:
        text = mask(shlex.join(self.argv))
        if self.input is not None:
            text += f"   # stdin: {mask(self.input.strip())[:60]!r}"
        return text

    def to_dict(self) -> dict:
        return {"command": mask(shlex.join(self.argv)), "reason": self.reason}


@dataclass
class ApplyResult:
    stack: str
    commands: list[Command]
    dry_run: bool
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"stack": self.stack, "dry_run": self.dry_run, "notes": self.notes,
                "commands": [c.to_dict() for c in self.commands]}

    def text(self) -> str:
        head = "would run" if self.dry_run else "ran"
        lines = [f"# {n}" for n in self.notes]
        if not self.commands:
            lines.append(f"{self.stack}: nothing to do (target configuration already matches the manifest)")
        else:
            lines.append(f"# {head} {len(self.commands)} command(s) on the {self.stack} target:")
            for c in self.commands:
                lines.append(f"{c.display()}    # {c.reason}")
        return "\n".join(lines)


class Backend(Protocol):
    STACK: str

    def parse(self, files: list[tuple[str, str]]) -> Manifest: ...

    def render(self, manifest: Manifest, secrets: Secrets | None = None) -> str: ...

    def identity_problems(self, manifest: Manifest) -> list[str]: ...


# --------------------------------------------------------------------------- secrets
def _owner(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def read_secret_file(path: str | Path, what: str) -> str:
    """The text of a file holding secrets, only if no one but the user running esxdr can read
    or replace it: a regular file, owned by that user, mode 0600 or stricter.

    The checks are made on the descriptor that is then read (fstat), so the file cannot be
    swapped between the check and the read. Group or other bits of any kind refuse: a writable
    secret can be replaced as well as read. Root is not exempt from the owner check: a file
    another account owns is that account's to change.
    """
    p = str(path)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as e:
        raise UsageError(f"{what}: cannot read {p}: {e.strerror}") from e
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise UsageError(f"{what}: {p} is not a regular file")
    with os.fdopen(fd, "rb") as f:
        me = os.geteuid()
        if st.st_uid != me:
            raise UsageError(f"{what}: {p} is owned by {_owner(st.st_uid)}, not by {_owner(me)} who runs esxdr",
                             hint=f"chown {_owner(me)} {shlex.quote(p)} && chmod 600 {shlex.quote(p)}")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise UsageError(f"{what}: {p} has mode {mode:04o}: group or others can read or change it",
                             hint=f"chmod 600 {shlex.quote(p)}")
        data = f.read()
    try:
        return data.decode()
    except UnicodeDecodeError as e:
        raise UsageError(f"{what}: {p} is not UTF-8 text") from e


class Secrets:
    """CHAP secrets, resolved from references only when a command needs them.

    ``env:NAME`` reads the environment, ``file:/path`` reads a file of the user running esxdr
    with mode 0600 (read_secret_file),
    ``secrets:KEY`` (or a bare key) looks the key up in the secrets file given
    to esxdr (YAML/JSON mapping, mode 0600).
    """

    def __init__(self, table: dict[str, str] | None = None, origin: str = "secrets file"):
        self.table = dict(table or {})
        self.origin = origin
        for v in self.table.values():
            register_secret(v)

    @classmethod
    def load(cls, path: str | Path) -> Secrets:
        p = Path(path)
        text = read_secret_file(p, "secrets file")
        import yaml

        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise UsageError(f"{p}: malformed secrets file: {e}") from e
        if not isinstance(data, dict) or not all(isinstance(v, str | int) for v in data.values()):
            raise UsageError(f"{p}: a secrets file is a mapping of key: secret")
        return cls({str(k): str(v) for k, v in data.items()}, str(p))

    def resolve(self, ref: str | None, what: str) -> str:
        if not ref:
            raise UsageError(f"{what}: no secret_ref in the manifest",
                             hint="set secret_ref (env:NAME, file:/path or secrets:KEY)")
        kind, _, name = ref.partition(":")
        if not name:
            kind, name = "secrets", ref
        if kind == "env":
            value = os.environ.get(name)
        elif kind == "file":
            value = read_secret_file(name, f"{what}: secret file").strip()
        elif kind == "secrets":
            value = self.table.get(name)
        else:
            raise UsageError(f"{what}: unknown secret reference {ref!r}",
                             hint="use env:NAME, file:/path or secrets:KEY")
        if not value:
            raise UsageError(f"{what}: secret {ref!r} is not available",
                             hint=f"add {name!r} to the {self.origin}" if kind == "secrets" else None)
        register_secret(value)
        return value


# --------------------------------------------------------------------------- shared checks
def require_valid(manifest: Manifest) -> Manifest:
    return manifest.validate()


def refuse_identity(stack: str, problems: list[str]) -> None:
    """Raise IdentityConflict listing every LU whose NAA the stack cannot reproduce."""
    if problems:
        raise IdentityConflict(
            f"the {stack} target cannot reproduce these identities; nothing was changed:\n  "
            + "\n  ".join(problems),
            hint="ESXi would see those LUNs as new disks and their datastores as snapshots; "
                 "choose a target stack that can reproduce the NAA, or accept a resignature")


def param_value(stack: str, lu: LogicalUnit, name: str, value: str | None, forbidden: str = ",") -> None:
    if value is not None and any(c in value for c in forbidden):
        raise ManifestError(f"{lu.naa.esxi_name}.{name}: {value!r} contains {forbidden!r}, which the {stack} "
                            "command syntax cannot carry")


def missing_backing(observed_paths: dict[str, int | None], manifest: Manifest, host: str) -> None:
    """Refuse when a backing store is absent or smaller than the LU on the target host."""
    problems = []
    for lu in manifest.logical_units:
        size = observed_paths.get(lu.backing.path, -1)
        if size == -1 or size is None:
            problems.append(f"{lu.naa.esxi_name}: backing store {lu.backing.path} does not exist on {host}")
        elif size and lu.size_bytes and size < lu.size_bytes:
            problems.append(f"{lu.naa.esxi_name}: backing store {lu.backing.path} on {host} has {size} bytes, "
                            f"the LU needs {lu.size_bytes}")
    if problems:
        raise UsageError("backing stores missing or too small; nothing was changed:\n  " + "\n  ".join(problems),
                         hint="has replication received these datasets? check the path rewrites "
                              "(--map-dataset, --map-path)")


def stat_paths(transport: Transport, paths: list[str]) -> dict[str, int | None]:  # Transport
    """Sizes of backing stores on the target host, with one or two commands in all.

    Files report their size from stat; block devices (zvols) report 0 there, so
    they are asked again with blockdev.
    """
    if not paths:
        return {}
    r = transport.run(["stat", "-L", "-c", "%s %F %n", "--", *paths], check=False)
    out: dict[str, int | None] = {}
    devices = []
    for line in r.stdout.splitlines():
        size, rest = line.split(" ", 1)
        for kind in ("block special file", "regular file", "regular empty file", "character special file"):
            if rest.startswith(kind + " "):
                path = rest[len(kind) + 1:]
                out[path] = int(size)
                if kind != "regular file" and kind != "regular empty file":
                    devices.append(path)
                break
    if devices:
        r2 = transport.run(["blockdev", "--getsize64", *devices], check=False)
        for path, line in zip(devices, r2.stdout.splitlines(), strict=False):
            if line.strip().isdigit():
                out[path] = int(line.strip())
    return out

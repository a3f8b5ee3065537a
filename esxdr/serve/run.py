"""Serving one request: the log line, the checks that need zfs (a new dataset's mountpoint, a
resume token's snapshot, the replica's state), the stream header read before `zfs receive`
sees a byte, and the relay. Standard library only."""

import json
import os
import subprocess
import sys
import time

from esxdr.serve.policy import DATASET_RE, Refused, capabilities, check_clone_mountpoint, parse

SYSLOG = "syslog"


def _log(logs: "list[str]", line: str, *, refused: bool = False) -> None:
    """One line per request to each log: a file (appended) or ``syslog`` (facility auth).

    The command is always written as repr(), so a newline or escape in SSH_ORIGINAL_COMMAND
    cannot forge a second log line. A log that cannot be written is skipped: the request's
    answer must not depend on it, and the client (possibly hostile) is not told.
    """
    client = os.environ.get("SSH_CLIENT", "-").split(" ")[0]
    for dest in logs:
        if dest == SYSLOG:
            import syslog

            # auth: the facility sshd logs to, so refusals sit beside the logins that made them
            syslog.openlog("esxdr-serve", syslog.LOG_PID, syslog.LOG_AUTH)
            syslog.syslog(syslog.LOG_WARNING if refused else syslog.LOG_INFO, f"from {client}: {line}")
            syslog.closelog()
            continue
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        try:
            with open(dest, "a") as f:
                f.write(f"{stamp} esxdr-serve[{os.getpid()}] from {client}: {line}\n")
        except OSError:
            pass


USAGE = """usage: esxdr serve --allow-prefix DATASET [--allow-prefix DATASET ...] [--sudo]
                   [--no-drills | --send-only] [--log FILE|syslog ...]

Forced command for the DR service account (see `esxdr keys authorized-line`), or,
with --send-only, for the account DR pulls from on production (pull mode).
Reads the requested command from SSH_ORIGINAL_COMMAND and runs it only if it is
one of the zfs operations esxdr needs on a dataset under an allowed prefix.
--no-drills also refuses what only a drill run through this key does (clone, mount,
open and destroy its clones, release its hold): drills then run on the DR box itself.
--send-only allows only what a pull needs: get, send, and replication's cursor
(hold and release of esxdr_<group>). No receive, snapshot, destroy, rollback, set,
bookmark, clone or mount.
--log (repeatable) writes every request run and every one refused (REFUSED …) to an
absolute FILE, or to syslog (facility auth) with the word syslog.
"""


def main(argv: "list[str]") -> int:
    prefixes: list[str] = []
    sudo = False
    drills = True
    send_only = False
    logs: list[str] = []
    it = iter(argv)
    for a in it:
        if a == "--allow-prefix":
            prefixes.append(next(it, "").rstrip("/"))
        elif a == "--sudo":
            sudo = True
        elif a == "--no-drills":
            drills = False
        elif a == "--send-only":
            send_only = True
        elif a == "--log":
            dest = next(it, "")
            # absolute: the forced command's working directory is the account's home, which a
            # relative name would quietly depend on
            if dest != SYSLOG and not dest.startswith("/"):
                sys.stderr.write(f"esxdr serve: --log takes an absolute file or 'syslog', not {dest!r}\n")
                return 2
            logs.append(dest)
        elif a in ("-h", "--help"):
            sys.stdout.write(USAGE)
            return 0
        else:
            sys.stderr.write(f"esxdr serve: unknown option {a}\n{USAGE}")
            return 2
    if not prefixes or any(not p or not DATASET_RE.match(p) or "@" in p for p in prefixes):
        sys.stderr.write("esxdr serve: --allow-prefix DATASET is required\n")
        return 2
    command = os.environ.get("SSH_ORIGINAL_COMMAND", "")
    zfs = ["sudo", "-n", "zfs"] if sudo else ["zfs"]
    try:
        parsed = parse(command, prefixes, drills=drills, send_only=send_only)
    except Refused as e:
        _log(logs, f"REFUSED {command!r}: {e}", refused=True)
        sys.stderr.write(f"esxdr serve: refused: {e}\n")
        return 126
    if parsed == "capabilities":
        sys.stdout.write(json.dumps(capabilities(zfs)) + "\n")
        return 0
    assert isinstance(parsed, list)
    argv = next(st for st in parsed if st[0] == "zfs")
    try:
        check_clone_mountpoint(parsed, zfs)
        if argv[1] == "send" and argv[2:3] == ["-t"]:
            _check_token_snapshot(argv[3], zfs)
        if argv[1] == "create":
            _check_create_mounts(argv, zfs, sudo)
        if argv[1] in ("receive", "recv"):
            return _receive(parsed, zfs, logs, command)
    except Refused as e:
        _log(logs, f"REFUSED {command!r}: {e}", refused=True)
        sys.stderr.write(f"esxdr serve: refused: {e}\n")
        return 126
    _log(logs, f"run {command!r}")
    argvs = [(zfs + st[1:]) if st[0] == "zfs" else st for st in parsed]
    if len(argvs) == 1:
        os.execvp(argvs[0][0], argvs[0])
    procs = _start(argvs, stdin=None)
    rcs = [p.wait() for p in procs]
    return next((rc for rc in reversed(rcs) if rc), 0)


def _start(argvs: "list[list[str]]", stdin, last_stdout=None) -> "list[subprocess.Popen]":
    """Start a pipeline, each stage's stdout the next one's stdin."""
    procs: list[subprocess.Popen] = []
    prev = stdin
    for i, stage in enumerate(argvs):
        p = subprocess.Popen(stage, stdin=prev, stdout=subprocess.PIPE if i < len(argvs) - 1 else last_stdout)
        if prev is not None and prev is not stdin:
            prev.close()
        prev = p.stdout
        procs.append(p)
    return procs


# -- what zfs would do, read before it does it ---------------------------------------------------

def _zfs_get(zfs: "list[str]", props: str, dataset: str, *, recursive: bool = False) -> "list[list[str]] | None":
    """``zfs get`` rows (name, property, value); None when the dataset does not exist."""
    out = subprocess.run([*zfs, "get", "-Hp", *(["-r"] if recursive else []), "-o", "name,property,value",
                          props, dataset], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, universal_newlines=True)
    if out.returncode != 0:
        if "does not exist" in out.stderr or "no such" in out.stderr.lower():
            return None
        raise Refused(f"cannot read {dataset!r} on DR: {out.stderr.strip()[:200]}")
    return [line.split("\t") for line in out.stdout.splitlines() if line.count("\t") == 2]


def _mountpoint_of_new(zfs: "list[str]", dataset: str) -> "tuple[str, str]":
    """(ancestor, its mountpoint): the nearest existing ancestor, whose mountpoint a new dataset inherits."""
    parts = dataset.split("/")
    for n in range(len(parts) - 1, 0, -1):
        parent = "/".join(parts[:n])
        rows = _zfs_get(zfs, "mountpoint", parent)
        if rows:
            return parent, rows[0][2]
    raise Refused(f"no ancestor of {dataset!r} exists on DR")


NO_MOUNT = ("none", "legacy")  # zfs mounts neither by itself (legacy: only an fstab or mount -t zfs)


def _check_create_mounts(argv: "list[str]", zfs: "list[str]", sudo: bool) -> None:
    """``zfs create`` mounts what it creates. Here it may only where it mounts nothing: with
    mountpoint=none or canmount=off/noauto given, or under an ancestor that mounts nowhere. Without
    --sudo zfs runs as this account, which the kernel does not let mount (docs/security.md)."""
    opts = {argv[i + 1] for i in range(len(argv) - 1) if argv[i] == "-o"}
    if not sudo or opts & {"mountpoint=none", "canmount=off", "canmount=noauto"}:
        return
    parent, mp = _mountpoint_of_new(zfs, argv[-1])
    if mp not in NO_MOUNT:
        raise Refused(f"create {argv[-1]!r} would mount it at {parent}'s mountpoint ({mp}); "
                      "only with -o mountpoint=none or canmount=noauto, or under a dataset that mounts nowhere")


def _check_token_snapshot(token: str, zfs: "list[str]") -> None:
    """The token's toname (under the prefix, checked by parse) must be the snapshot its toguid is:
    libzfs resolves the guid, possibly to a snapshot anywhere in the pool."""
    from esxdr.sendstream import decode_token

    fields = decode_token(token)
    toname, toguid = str(fields["toname"]), fields["toguid"]
    rows = _zfs_get(zfs, "guid", toname)
    if not rows or rows[0][2] != str(toguid):
        raise Refused(f"the resume token's guid {toguid} is not that of {toname!r}")


def _replica_state(zfs: "list[str]", dataset: str) -> "tuple[bool, str | None, list[tuple[int, int, str]]]":
    """(exists, its mountpoint, its snapshots as (createtxg, guid, name) oldest first)."""
    rows = _zfs_get(zfs, "guid,createtxg,mountpoint", dataset, recursive=True)
    if rows is None:
        return False, None, []
    mountpoint = next((v for n, p, v in rows if n == dataset and p == "mountpoint"), None)
    snaps: dict[str, dict[str, str]] = {}
    for name, prop, value in rows:
        if name.startswith(dataset + "@"):
            snaps.setdefault(name, {})[prop] = value
    listed = [(int(v["createtxg"]), int(v["guid"]), n) for n, v in snaps.items()
              if v.get("createtxg", "").isdigit() and v.get("guid", "").isdigit()]
    return True, mountpoint, sorted(listed)


def _read_exactly(fd: int, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            break
        buf += chunk
    return buf


def _check_stream(flags: str, dataset: str, first, begin, exists: bool, snaps: "list[tuple[int, int, str]]") -> None:
    """What a stream may do to ``dataset``: never bring properties or a tree, and with -F never
    lose a snapshot. -F rolls the dataset back to the stream's base and, for a full stream,
    replaces it whole; both are allowed only where that loses nothing: an incremental from the
    replica's newest snapshot (only unsnapshotted writes go), or a full stream into a new dataset.
    ``first`` is the stream's first BEGIN, ``begin`` its first substream's (the same record but
    for a `send -I` series)."""
    if first.compound and first.payload:
        raise Refused(f"the stream for {dataset!r} carries properties or a dataset tree (zfs send -p/-R); "
                      "esxdr sends neither")
    if "F" not in flags:
        return
    if begin.full:
        if exists:
            raise Refused(f"receive -F of a full stream would replace {dataset!r}, which exists on DR "
                          "(re-seeding is `esxdr replicate --rollback-dr` on the DR box)")
        return
    if not exists or not snaps:
        return  # zfs refuses an incremental into nothing by itself
    newest = snaps[-1]
    if newest[1] != begin.fromguid:
        base = next((n for _, g, n in snaps if g == begin.fromguid), None)
        raise Refused(f"receive -F would roll {dataset!r} back past its newest snapshot {newest[2]!r}: the stream "
                      + (f"starts at {base!r}" if base else f"starts at guid {begin.fromguid}, not a snapshot of it")
                      + " (rolling DR back is `esxdr replicate --rollback-dr` on the DR box)")


def _relay(src: int, dst: int) -> None:
    """Copy until EOF; splice(2) where the kernel can (no copy through Python), else read/write."""
    splice = getattr(os, "splice", None)  # Python 3.10 and newer, on Linux
    try:
        while splice and splice(src, dst, 1 << 20):
            pass
        if splice:
            return
    except BrokenPipeError:
        return
    except OSError as e:
        if e.errno not in (22, 38):  # EINVAL, ENOSYS: this pair of files cannot be spliced
            raise
    while True:
        chunk = os.read(src, 1 << 20)
        if not chunk:
            return
        try:
            _write_all(dst, chunk)
        except BrokenPipeError:
            return


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _receive(stages: "list[list[str]]", zfs: "list[str]", logs: "list[str]", command: str) -> int:
    """A receive runs only after serve has read the stream's first record and checked it against
    the replica: serve sits between the last stage before zfs (or its own stdin) and zfs."""
    from esxdr.sendstream import BadStream, read_head

    argv = stages[-1]
    dataset = argv[-1]
    flags = "".join(a[1:] for a in argv[2:-1])
    exists, mountpoint, snaps = _replica_state(zfs, dataset)
    if "u" not in flags:
        # Without -u (pool v23 has none) zfs mounts what it receives where it inherits: only
        # under a DR root that mounts nowhere (mountpoint=none) does it mount nothing.
        where, mp = (dataset, mountpoint or "") if exists else _mountpoint_of_new(zfs, dataset)
        if mp not in NO_MOUNT:
            raise Refused(f"receive into {dataset!r} would mount it at {mp} ({where}'s mountpoint); "
                          "set mountpoint=none on the DR root, or receive with -u")
    before = _start([*stages[:-1]], stdin=None, last_stdout=subprocess.PIPE) if len(stages) > 1 else []
    src = before[-1].stdout.fileno() if before and before[-1].stdout else sys.stdin.fileno()
    try:
        try:
            head, first, begin = read_head(lambda n: _read_exactly(src, n))
        except BadStream as e:
            raise Refused(f"the stream for {dataset!r}: {e}") from e
        _check_stream(flags, dataset, first, begin, exists, snaps)
    except Refused:
        for p in before:
            p.kill()
            p.wait()
        raise
    _log(logs, f"run {command!r}")
    zfs_proc = subprocess.Popen(zfs + argv[1:], stdin=subprocess.PIPE)
    assert zfs_proc.stdin is not None
    try:
        _write_all(zfs_proc.stdin.fileno(), head)
        _relay(src, zfs_proc.stdin.fileno())
    except BrokenPipeError:
        pass  # zfs stopped reading: its exit status says why
    finally:
        zfs_proc.stdin.close()
    rc = zfs_proc.wait()
    if rc:
        for p in before:
            p.kill()
    rcs = [p.wait() for p in before]
    if rc < 0:
        # zfs was killed: die of the same signal, as an exec'd zfs would have, so that ssh on the
        # other end reports a cut stream (255), which esxdr retries, not an ordinary failure.
        import signal

        if -rc != signal.SIGKILL:
            signal.signal(-rc, signal.SIG_DFL)
        os.kill(os.getpid(), -rc)
    return rc or next((r for r in reversed(rcs) if r), 0)

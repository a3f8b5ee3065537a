"""``esxdr serve``: the forced command of the DR service account.

The account's authorized_keys line pins ``command="esxdr serve --allow-prefix P"``,
so every SSH request arrives here with the requested command in
SSH_ORIGINAL_COMMAND. Only the zfs operations esxdr needs, on datasets under
the allowed prefix(es), are run — without a shell, argv by argv. Everything else
is refused with exit 126, a reason on stderr, and a line in each --log (a file or syslog).

Standard library only: this runs for every remote zfs call and must start fast.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time

DATASET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-/]*(@[A-Za-z0-9_.:\-]+)?$")
BOOKMARK_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-/]*#[A-Za-z0-9_.:\-]+$")
PROP_ASSIGN_RE = re.compile(r"^(readonly=(on|off)|canmount=(on|off|noauto)|mountpoint=none|"
                            r"esxdr:[a-z0-9_.:\-]+=[A-Za-z0-9_.:,=+/\-]*)$")
# A drill clone's mountpoint: an absolute path, checked by main() against the one ZFS would give it
# by inheritance from its pool (the DR root itself has mountpoint=none, so receives never mount).
CLONE_MOUNTPOINT_RE = re.compile(r"^mountpoint=(/[A-Za-z0-9_.:\-/]*)$")
PROP_LIST_RE = re.compile(r"^[a-z0-9_:,@.\-]+$")
HOLD_TAG_RE = re.compile(r"^esxdr[A-Za-z0-9_.\-]*$")
REPLICATION_TAG_RE = re.compile(r"^esxdr_[A-Za-z0-9_.\-]+$")


class Refused(Exception):
    pass


def _under(name: str, prefixes: list[str]) -> bool:
    ds = name.split("@", 1)[0]
    if not DATASET_RE.match(name) or ".." in ds.split("/"):
        return False
    return any(ds == p or ds.startswith(p + "/") for p in prefixes)


def _need_bookmark(arg: str, prefixes: list[str]) -> None:
    """``ds#name`` under a prefix; only esxdr's own bookmarks (named like its snapshots, esxdr_…)."""
    ds, _, mark = arg.partition("#")
    if not BOOKMARK_RE.match(arg) or not _under(ds, prefixes):
        raise Refused(f"bookmark {arg!r} is not under the allowed prefix {', '.join(prefixes)}")
    if not mark.startswith("esxdr"):
        raise Refused(f"bookmark {arg!r} is not esxdr's (its name must start with esxdr)")


def _is_test_clone(name: str) -> bool:
    """Drill clones live under a dataset named esxdr-test…; only those may be created or destroyed whole."""
    return any(part.startswith("esxdr-test") for part in name.split("/")[1:-1] + name.split("/")[-1:]) \
        and "@" not in name


def _need_dataset(arg: str, prefixes: list[str], *, snapshot: bool | None = None) -> None:
    if not _under(arg, prefixes):
        raise Refused(f"dataset {arg!r} is not under the allowed prefix {', '.join(prefixes)}")
    if snapshot is True and "@" not in arg:
        raise Refused(f"{arg!r} is not a snapshot")
    if snapshot is False and "@" in arg:
        raise Refused(f"{arg!r} must not be a snapshot")


def _flags_and_options(args: list[str], allowed: str) -> list[str]:
    """Strip leading flags and `-o prop=value` pairs (only the properties esxdr sets)."""
    rest = list(args)
    while rest and rest[0].startswith("-"):
        if rest[0] == "-o":
            if len(rest) < 2 or not PROP_ASSIGN_RE.match(rest[1]):
                raise Refused("-o takes only readonly, canmount or esxdr: properties")
            rest = rest[2:]
        else:
            _flags(rest[:1], allowed)  # refuses flags outside `allowed`
            rest = rest[1:]
    return rest


def _flags(args: list[str], allowed: str) -> list[str]:
    """Split leading single-letter flags (possibly bundled, e.g. -rHp); refuse unknown ones."""
    rest = list(args)
    while rest and rest[0].startswith("-") and rest[0] != "-":
        flag = rest.pop(0)
        for ch in flag[1:]:
            if ch not in allowed:
                raise Refused(f"flag -{ch} is not allowed here")
    return rest


def _check_token(token: str, prefixes: list[str]) -> None:
    """``send -t``: libzfs finds the snapshot to send by the token's toguid, so a token is only as
    good as what it names. Its toname must be a snapshot under the prefix; main() then checks that
    this snapshot exists and carries the token's toguid."""
    from esxdr.sendstream import BadStream, decode_token

    try:
        fields = decode_token(token)
    except BadStream as e:
        raise Refused(str(e)) from e
    toname, toguid = fields.get("toname"), fields.get("toguid")
    if not isinstance(toname, str) or not isinstance(toguid, int):
        raise Refused("the resume token names no snapshot (toname, toguid)")
    _need_dataset(toname, prefixes, snapshot=True)


NO_DRILLS = "drills run on the DR box itself here (esxdr serve --no-drills)"


SEND_ONLY = "this key only reads and sends (esxdr serve --send-only: production's side of pull mode)"
# What DR's pull needs from production: read, send, and keep its replication cursor (a hold with
# esxdr's replication tag on the snapshot DR pulled last, so that production's own retention keeps
# the base of the next incremental). Nothing that writes data, removes a snapshot or rewinds.
SEND_ONLY_VERBS = ("version", "get", "send", "hold", "release")


def check_zfs(args: list[str], prefixes: list[str], *, drills: bool = True, send_only: bool = False) -> None:
    """Refuse any zfs invocation esxdr does not make. Without ``drills``, also what only a drill
    run through this key makes: clones, their mounts and their clean-up. With ``send_only``
    (production's forced command in pull mode), only what DR's pull needs."""
    if not args:
        raise Refused("empty zfs command")
    verb, rest = args[0], args[1:]
    if send_only:
        if verb not in SEND_ONLY_VERBS:
            raise Refused(f"zfs {verb}: {SEND_ONLY}")
        if verb in ("hold", "release") and not REPLICATION_TAG_RE.match(next((a for a in rest if a[:1] != "-"), "")):
            # Only replication's cursor (esxdr_<group>); never a drill's hold, never another tag.
            raise Refused(f"zfs {verb}: only esxdr's replication tag (esxdr_<group>) and snapshots; {SEND_ONLY}")
    if not drills and not send_only and verb in ("clone", "mount", "release"):
        raise Refused(f"zfs {verb}: {NO_DRILLS}")
    if verb == "version" and not rest:
        return
    if verb == "get":
        # get -rHp -o name,property,value <props> <datasets...>
        i = 0
        while i < len(rest) and rest[i].startswith("-"):
            if rest[i] == "-o":
                if i + 1 >= len(rest) or rest[i + 1] not in ("name,property,value", "value", "name,value"):
                    raise Refused("get -o takes only name,property,value or value")
                i += 2
                continue
            if rest[i] == "-d":
                i += 2
                continue
            for ch in rest[i][1:]:
                if ch not in "rHp":
                    raise Refused(f"flag -{ch} is not allowed for get")
            i += 1
        rest = rest[i:]
        if rest[:1] == ["mountpoint"] and len(rest) == 2 and any(rest[1] == p.split("/", 1)[0] for p in prefixes):
            return  # where the pool mounts: drills place their clones' mountpoints under it
        if len(rest) < 2 or not PROP_LIST_RE.match(rest[0]):
            raise Refused("get needs a property list and datasets")
        for ds in rest[1:]:
            _need_dataset(ds, prefixes)
        return
    if verb in ("receive", "recv"):
        # No -A: aborting a resumable receive deletes its partial state, and esxdr never asks
        # for it (a stale token is resumed or superseded by a new stream, never thrown away).
        # -F is checked by main() against the stream's first record and the replica's snapshots.
        rest = _flags(rest, "uFsv")
        if len(rest) != 1:
            raise Refused("receive takes exactly one dataset")
        _need_dataset(rest[0], prefixes, snapshot=False)
        return
    if verb == "send":
        if rest[:1] == ["-t"]:
            if len(rest) != 2:
                raise Refused("send -t takes one resume token")
            _check_token(rest[1], prefixes)
            return
        i = 0
        while i < len(rest) and rest[i].startswith("-"):
            if rest[i] in ("-i", "-I"):
                if i + 1 >= len(rest):
                    raise Refused("-i/-I needs a snapshot")
                base = rest[i + 1]
                if "#" in base and not base.startswith("#"):
                    if not (BOOKMARK_RE.match(base) and _under(base.split("#", 1)[0], prefixes)):
                        raise Refused(f"bookmark {base!r} is not under the allowed prefix {', '.join(prefixes)}")
                elif not (base.startswith("@") or base.startswith("#")):
                    _need_dataset(base, prefixes)
                i += 2
                continue
            for ch in rest[i][1:]:
                if ch not in "wLecpnvP":
                    raise Refused(f"flag -{ch} is not allowed for send")
            i += 1
        if len(rest) - i != 1:
            raise Refused("send takes exactly one snapshot")
        _need_dataset(rest[i], prefixes, snapshot=True)
        return
    if verb == "snapshot":
        # esxdr snapshots where the data is written (production; DR itself when it hands back), never
        # through this key. A snapshot added here on a replica would only make the next stream find
        # DR "diverged" and stop replication: a denial of service with nothing for esxdr to gain.
        raise Refused("zfs snapshot is not allowed through this key: DR's snapshots arrive by receive; "
                      "the box that writes the data takes them")
    if verb == "destroy":
        rest = _flags(rest, "")
        if len(rest) != 1:
            raise Refused("destroy takes exactly one drill clone or bookmark")
        if "#" in rest[0]:
            _need_bookmark(rest[0], prefixes)  # destroys only the bookmark, never data
            return
        if "@" not in rest[0] and _is_test_clone(rest[0]):
            if not drills:
                raise Refused(f"zfs destroy of {rest[0]!r}: {NO_DRILLS}")
            _need_dataset(rest[0], prefixes, snapshot=False)
            return
        # No snapshot, ever: the DR retention window is kept by the DR box itself
        # (`esxdr prune --side dr` there), so this key cannot shorten it.
        raise Refused(f"zfs destroy of {rest[0]!r} is not allowed: only drill clones (esxdr-test…) and "
                      "esxdr's bookmarks; DR snapshots are pruned on the DR box")
    if verb == "clone":
        i = 0
        while i < len(rest) and rest[i] == "-o":
            if i + 1 >= len(rest) or not (PROP_ASSIGN_RE.match(rest[i + 1]) or CLONE_MOUNTPOINT_RE.match(rest[i + 1])):
                raise Refused("clone -o takes only readonly, canmount, mountpoint or esxdr: properties")
            m = CLONE_MOUNTPOINT_RE.match(rest[i + 1])
            if m and ("/../" in m.group(1) + "/" or "/./" in m.group(1) + "/" or "//" in m.group(1)):
                raise Refused(f"mountpoint {m.group(1)!r} is not a plain path")
            i += 2
        rest = rest[i:]
        if len(rest) != 2:
            raise Refused("clone takes a snapshot and a dataset")
        _need_dataset(rest[0], prefixes, snapshot=True)
        if not _is_test_clone(rest[1]):
            raise Refused(f"clones must be made under an esxdr-test dataset, not {rest[1]!r}")
        _need_dataset(rest[1], prefixes, snapshot=False)
        for a in args:
            m = CLONE_MOUNTPOINT_RE.match(a)
            # the pool's part of the path is checked by main() against the pool's own mountpoint
            if m and not m.group(1).endswith("/" + rest[1].split("/", 1)[1]):
                raise Refused(f"mountpoint {m.group(1)!r} is not where ZFS would mount {rest[1]!r}")
        return
    if verb in ("hold", "release"):
        rest = _flags(rest, "")
        if len(rest) < 2 or not HOLD_TAG_RE.match(rest[0]):
            raise Refused(f"{verb} takes an esxdr tag and snapshots")
        # A released hold is the first half of a destroy. Only a drill's own hold (esxdr-test-…)
        # is released through this key; replication's (esxdr_…) is released by the DR box when
        # it prunes, and no snapshot is destroyed through this key anyway.
        if verb == "release" and not rest[0].startswith("esxdr-test") and not send_only:
            raise Refused(f"release of {rest[0]!r} is not allowed: only a drill's hold (esxdr-test-…); "
                          "the DR box releases replication's holds when it prunes")
        for snap in rest[1:]:
            _need_dataset(snap, prefixes, snapshot=True)
        return
    if verb == "bookmark":
        # bookmark ds@snap ds#name: the same dataset, esxdr's name (a failback source keeps its base)
        rest = _flags(rest, "")
        if len(rest) != 2:
            raise Refused("bookmark takes a snapshot and a bookmark")
        _need_dataset(rest[0], prefixes, snapshot=True)
        _need_bookmark(rest[1], prefixes)
        if rest[0].split("@", 1)[0] != rest[1].split("#", 1)[0]:
            raise Refused("a bookmark must be made in its snapshot's dataset")
        return
    if verb == "rollback":
        raise Refused("zfs rollback is not allowed: `esxdr replicate --rollback-dr` runs on the DR box")
    if verb == "set":
        # set prop=value [prop=value ...] dataset [dataset ...]
        props = [a for a in rest if "=" in a and "@" not in a.split("=", 1)[0]]
        targets = rest[len(props):]
        if not props or not targets:
            raise Refused("set needs property=value and a dataset")
        for a in props:
            if not PROP_ASSIGN_RE.match(a):
                raise Refused(f"setting {a!r} is not allowed")
        opens = [a for a in props if a in ("readonly=off", "canmount=on")]
        for ds in targets:
            if "=" in ds:
                raise Refused(f"setting {ds!r} is not allowed here")
            _need_dataset(ds, prefixes)
            # A replica is made writable only by failover, with the DR box's own privileges: the
            # key that replicates into DR must not be able to take its copies live.
            if opens and not _is_test_clone(ds):
                raise Refused(f"{' '.join(opens)} only on drill clones (esxdr-test…), not on {ds!r}")
            if opens and not drills:
                raise Refused(f"{' '.join(opens)}: {NO_DRILLS}")
        return
    if verb in ("mount", "unmount"):
        flags = rest
        rest = _flags(rest, "f" if verb == "unmount" else "")
        forced = "f" in "".join(flags[:len(flags) - len(rest)])
        if len(rest) != 1:
            raise Refused(f"{verb} takes one dataset")
        _need_dataset(rest[0], prefixes, snapshot=False)
        if verb == "mount" and not _is_test_clone(rest[0]):
            raise Refused(f"only drill clones (esxdr-test…) are mounted, not {rest[0]!r}")
        # A plain unmount of a busy replica fails harmlessly; -f pulls it out from under whatever
        # uses it (tgtd serving a failed-over LUN). Only a drill's own clean-up forces, on its clones.
        if forced and not _is_test_clone(rest[0]):
            raise Refused(f"unmount -f only on drill clones (esxdr-test…), not on {rest[0]!r}")
        if forced and not drills:
            raise Refused(f"unmount -f: {NO_DRILLS}")
        return
    if verb == "create":
        rest = _flags_and_options(rest, "p")
        if len(rest) != 1:
            raise Refused("create takes one dataset")
        _need_dataset(rest[0], prefixes, snapshot=False)
        return
    raise Refused(f"zfs {verb} is not allowed")


STAGE_ALLOWED = {
    "zstd": {"-dc", "-c", "-d", "-q", "-1", "-3", "-T0"},
    "lz4": {"-dc", "-c", "-d", "-q", "-1"},
}

# mbuffer's memory is the DR box's, taken for as long as the request runs, once per request:
# esxdr asks for 128M (zfs/stream.py). Anything up to MBUFFER_MAX_MEMORY is accepted, more is
# refused, and so are sizes mbuffer would read as a share of RAM (`-m 90%`).
MBUFFER_MAX_MEMORY = 256 << 20
MBUFFER_MAX_BLOCK = 1 << 20
_SIZE_RE = re.compile(r"^([1-9][0-9]{0,9})([kMGT]?)$")


def _size(value: str, what: str, bound: int) -> int:
    m = _SIZE_RE.match(value)
    if not m:
        raise Refused(f"mbuffer {what} {value!r} is not a size (bytes, k, M or G)")
    n = int(m.group(1)) << {"": 0, "k": 10, "M": 20, "G": 30, "T": 40}[m.group(2)]
    if n > bound:
        raise Refused(f"mbuffer {what} {value} is over the {bound >> 20}M this account may use")
    return n


def _check_mbuffer(args: list[str]) -> None:
    """``mbuffer [-q] [-s SIZE] [-m SIZE]``, each at most once, within the bounds above."""
    seen: set[str] = set()
    it = iter(args)
    for a in it:
        if a in seen:
            raise Refused(f"argument {a!r} is given twice to mbuffer")
        seen.add(a)
        if a == "-q":
            continue
        if a in ("-m", "-s"):
            value = next(it, None)
            if value is None:
                raise Refused(f"mbuffer {a} needs a size")
            _size(value, "memory" if a == "-m" else "block size",
                  MBUFFER_MAX_MEMORY if a == "-m" else MBUFFER_MAX_BLOCK)
            continue
        raise Refused(f"argument {a!r} is not allowed for mbuffer")


def check_stage(argv: list[str]) -> None:
    prog = argv[0]
    if prog == "mbuffer":
        _check_mbuffer(argv[1:])
        return
    if prog not in STAGE_ALLOWED:
        raise Refused(f"program {prog!r} is not allowed")
    for a in argv[1:]:
        if a not in STAGE_ALLOWED[prog]:
            raise Refused(f"argument {a!r} is not allowed for {prog}")


def parse(command: str, prefixes: list[str], *, drills: bool = True, send_only: bool = False) -> list[list[str]] | str:
    """Validate a requested command; returns pipeline stages or the name of a built-in."""
    if not command.strip():
        raise Refused("no command (interactive logins are not allowed)")
    if any(c in command for c in "`$;&><\n\\(){}*?[]~!"):
        raise Refused("shell metacharacters are not allowed")
    try:
        tokens = shlex.split(command)
    except ValueError as e:
        raise Refused(f"unparsable command: {e}") from e
    if tokens == ["esxdr-capabilities"]:
        return "capabilities"
    stages: list[list[str]] = [[]]
    for t in tokens:
        if t == "|":
            stages.append([])
        else:
            stages[-1].append(t)
    if any(not s for s in stages) or len(stages) > 3:
        raise Refused("malformed pipeline")
    zfs_stages = [s for s in stages if s[0] == "zfs"]
    if len(zfs_stages) != 1:
        raise Refused("exactly one zfs command is allowed")
    # One stage per program: two decompressors only break the stream, but two mbuffers double
    # the memory bound above.
    programs = [s[0] for s in stages]
    if len(set(programs)) != len(programs):
        raise Refused("each program may appear once in a pipeline")
    for s in stages:
        if s[0] == "zfs":
            check_zfs(s[1:], prefixes, drills=drills, send_only=send_only)
        else:
            check_stage(s)
    zfs_at = stages.index(zfs_stages[0])
    verb = zfs_stages[0][1]
    # Pipelines only feed a receive or drain a send; never anything else.
    if len(stages) > 1 and not ((verb in ("receive", "recv") and zfs_at == len(stages) - 1)
                                or (verb == "send" and zfs_at == 0)):
        raise Refused("pipelines are only allowed into zfs receive or out of zfs send")
    return stages


def natural_mountpoint(dataset: str, pool_mountpoint: str) -> str:
    """Where ``dataset`` mounts by inheritance from its pool (esxdr.zfs.Zfs.natural_mountpoint)."""
    pool, _, rest = dataset.partition("/")
    base = pool_mountpoint.rstrip("/") if pool_mountpoint.startswith("/") else "/" + pool
    return f"{base}/{rest}" if rest else base


def _check_clone_mountpoint(stages: list[list[str]], zfs: list[str]) -> None:
    """A clone may name a mountpoint only where ZFS itself would have put it: the path is decided
    on DR (from the pool's own mountpoint), never by whoever holds the replication key."""
    argv = next(s for s in stages if s[0] == "zfs")
    if argv[1] != "clone":
        return
    wanted = [m.group(1) for a in argv if (m := CLONE_MOUNTPOINT_RE.match(a))]
    if not wanted:
        return
    dataset = argv[-1]
    pool = dataset.split("/", 1)[0]
    out = subprocess.run([*zfs, "get", "-H", "-o", "value", "mountpoint", pool], capture_output=True, text=True)
    natural = natural_mountpoint(dataset, out.stdout.strip())
    if out.returncode != 0 or wanted != [natural]:
        raise Refused(f"mountpoint {wanted[0]!r} for {dataset!r}: only {natural!r}, where ZFS would mount it")


def capabilities(zfs: list[str]) -> dict:
    version = subprocess.run([*zfs, "version"], capture_output=True, text=True)
    return {
        "openzfs": version.returncode == 0 and "zfs-" in version.stdout,
        "zfs_version": version.stdout.strip().splitlines()[0] if version.returncode == 0 and version.stdout else None,
        "compressors": [c for c in ("zstd", "lz4") if shutil.which(c)],
        "mbuffer": bool(shutil.which("mbuffer")),
    }


SYSLOG = "syslog"


def _log(logs: list[str], line: str, *, refused: bool = False) -> None:
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


def main(argv: list[str]) -> int:
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
        _check_clone_mountpoint(parsed, zfs)
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


def _start(argvs: list[list[str]], stdin, last_stdout=None) -> list[subprocess.Popen]:
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

def _zfs_get(zfs: list[str], props: str, dataset: str, *, recursive: bool = False) -> list[list[str]] | None:
    """``zfs get`` rows (name, property, value); None when the dataset does not exist."""
    out = subprocess.run([*zfs, "get", "-Hp", *(["-r"] if recursive else []), "-o", "name,property,value",
                          props, dataset], capture_output=True, text=True)
    if out.returncode != 0:
        if "does not exist" in out.stderr or "no such" in out.stderr.lower():
            return None
        raise Refused(f"cannot read {dataset!r} on DR: {out.stderr.strip()[:200]}")
    return [line.split("\t") for line in out.stdout.splitlines() if line.count("\t") == 2]


def _mountpoint_of_new(zfs: list[str], dataset: str) -> tuple[str, str]:
    """(ancestor, its mountpoint): the nearest existing ancestor, whose mountpoint a new dataset inherits."""
    parts = dataset.split("/")
    for n in range(len(parts) - 1, 0, -1):
        parent = "/".join(parts[:n])
        rows = _zfs_get(zfs, "mountpoint", parent)
        if rows:
            return parent, rows[0][2]
    raise Refused(f"no ancestor of {dataset!r} exists on DR")


NO_MOUNT = ("none", "legacy")  # zfs mounts neither by itself (legacy: only an fstab or mount -t zfs)


def _check_create_mounts(argv: list[str], zfs: list[str], sudo: bool) -> None:
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


def _check_token_snapshot(token: str, zfs: list[str]) -> None:
    """The token's toname (under the prefix, checked by parse) must be the snapshot its toguid is:
    libzfs resolves the guid, possibly to a snapshot anywhere in the pool."""
    from esxdr.sendstream import decode_token

    fields = decode_token(token)
    toname, toguid = str(fields["toname"]), fields["toguid"]
    rows = _zfs_get(zfs, "guid", toname)
    if not rows or rows[0][2] != str(toguid):
        raise Refused(f"the resume token's guid {toguid} is not that of {toname!r}")


def _replica_state(zfs: list[str], dataset: str) -> tuple[bool, str | None, list[tuple[int, int, str]]]:
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


def _check_stream(flags: str, dataset: str, first, begin, exists: bool, snaps: list[tuple[int, int, str]]) -> None:
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
    try:
        while os.splice(src, dst, 1 << 20):
            pass
        return
    except BrokenPipeError:
        return
    except OSError as e:
        if e.errno not in (22, 38):  # EINVAL, ENOSYS: this pair of files cannot be spliced
            raise
    while chunk := os.read(src, 1 << 20):
        try:
            _write_all(dst, chunk)
        except BrokenPipeError:
            return


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _receive(stages: list[list[str]], zfs: list[str], logs: list[str], command: str) -> int:
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

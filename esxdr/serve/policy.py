"""What the DR account may ask: each request parsed into argv stages and checked against the
allowed prefixes, verbs, flags, properties, hold tags and resume tokens; a refusal says which rule.
Standard library only (the package's docstring says why)."""

import re
import shlex
import shutil
import subprocess

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


def _under(name: str, prefixes: "list[str]") -> bool:
    ds = name.split("@", 1)[0]
    if not DATASET_RE.match(name) or ".." in ds.split("/"):
        return False
    return any(ds == p or ds.startswith(p + "/") for p in prefixes)


def _need_bookmark(arg: str, prefixes: "list[str]") -> None:
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


def _need_dataset(arg: str, prefixes: "list[str]", *, snapshot: "bool | None" = None) -> None:
    if not _under(arg, prefixes):
        raise Refused(f"dataset {arg!r} is not under the allowed prefix {', '.join(prefixes)}")
    if snapshot is True and "@" not in arg:
        raise Refused(f"{arg!r} is not a snapshot")
    if snapshot is False and "@" in arg:
        raise Refused(f"{arg!r} must not be a snapshot")


def _flags_and_options(args: "list[str]", allowed: str) -> "list[str]":
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


def _flags(args: "list[str]", allowed: str) -> "list[str]":
    """Split leading single-letter flags (possibly bundled, e.g. -rHp); refuse unknown ones."""
    rest = list(args)
    while rest and rest[0].startswith("-") and rest[0] != "-":
        flag = rest.pop(0)
        for ch in flag[1:]:
            if ch not in allowed:
                raise Refused(f"flag -{ch} is not allowed here")
    return rest


def _check_token(token: str, prefixes: "list[str]") -> None:
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


def check_zfs(args: "list[str]", prefixes: "list[str]", *, drills: bool = True, send_only: bool = False) -> None:
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


def _check_mbuffer(args: "list[str]") -> None:
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


def check_stage(argv: "list[str]") -> None:
    prog = argv[0]
    if prog == "mbuffer":
        _check_mbuffer(argv[1:])
        return
    if prog not in STAGE_ALLOWED:
        raise Refused(f"program {prog!r} is not allowed")
    for a in argv[1:]:
        if a not in STAGE_ALLOWED[prog]:
            raise Refused(f"argument {a!r} is not allowed for {prog}")


def parse(command: str, prefixes: "list[str]", *, drills: bool = True, send_only: bool = False) -> "list[list[str]] | str":
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


def check_clone_mountpoint(stages: "list[list[str]]", zfs: "list[str]") -> None:
    """A clone may name a mountpoint only where ZFS itself would have put it: the path is decided
    on DR (from the pool's own mountpoint), never by whoever holds the replication key."""
    argv = next(s for s in stages if s[0] == "zfs")
    if argv[1] != "clone":
        return
    wanted = [m.group(1) for m in map(CLONE_MOUNTPOINT_RE.match, argv) if m]
    if not wanted:
        return
    dataset = argv[-1]
    pool = dataset.split("/", 1)[0]
    out = subprocess.run([*zfs, "get", "-H", "-o", "value", "mountpoint", pool], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, universal_newlines=True)
    natural = natural_mountpoint(dataset, out.stdout.strip())
    if out.returncode != 0 or wanted != [natural]:
        raise Refused(f"mountpoint {wanted[0]!r} for {dataset!r}: only {natural!r}, where ZFS would mount it")


def capabilities(zfs: "list[str]") -> dict:
    version = subprocess.run([*zfs, "version"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, universal_newlines=True)
    return {
        "openzfs": version.returncode == 0 and "zfs-" in version.stdout,
        "zfs_version": version.stdout.strip().splitlines()[0] if version.returncode == 0 and version.stdout else None,
        # the kernel module's line: properties such as snapshots_changed come from the module
        "zfs_kmod_version": next((ln for ln in version.stdout.splitlines() if ln.startswith("zfs-kmod-")), None)
        if version.returncode == 0 else None,
        "compressors": [c for c in ("zstd", "lz4") if shutil.which(c)],
        "mbuffer": bool(shutil.which("mbuffer")),
    }

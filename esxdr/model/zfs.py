"""Pure value types shared by planners, adapters and reports (no I/O here)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Snapshot:
    dataset: str
    name: str  # the part after '@'
    guid: int
    createtxg: int
    creation: int  # seconds since the epoch
    used: int | None = None
    referenced: int | None = None
    written: int | None = None  # OpenZFS only
    userrefs: int | None = None  # holds count (None where unknown)
    props: tuple[tuple[str, str], ...] = ()

    @property
    def full_name(self) -> str:
        return f"{self.dataset}@{self.name}"

    def prop(self, key: str) -> str | None:
        for k, v in self.props:
            if k == key:
                return v
        return None

    @property
    def held(self) -> bool:
        return bool(self.userrefs)


@dataclass(frozen=True)
class Bookmark(Snapshot):
    """A bookmark (OpenZFS): a snapshot's guid and createtxg without its data, usable as `send -i` base."""

    @property
    def full_name(self) -> str:
        return f"{self.dataset}#{self.name}"


@dataclass
class Dataset:
    name: str
    type: str  # filesystem | volume
    guid: int
    createtxg: int = 0
    used: int | None = None
    referenced: int | None = None
    written: int | None = None  # bytes written since the newest snapshot (OpenZFS)
    # When a snapshot of it was last created or destroyed, epoch seconds (OpenZFS >= 2.2; None before)
    snapshots_changed: int | None = None
    resume_token: str | None = None
    origin: str | None = None
    mountpoint: str | None = None
    readonly: bool | None = None
    snapshots: list[Snapshot] = field(default_factory=list)  # oldest first (createtxg)
    props: dict[str, str] = field(default_factory=dict)
    bookmarks: list[Bookmark] = field(default_factory=list)  # oldest first (OpenZFS; empty on pool v23)

    @property
    def newest(self) -> Snapshot | None:
        return self.snapshots[-1] if self.snapshots else None

    def by_guid(self) -> dict[int, Snapshot]:
        return {s.guid: s for s in self.snapshots}

    def snapshot(self, name: str) -> Snapshot | None:
        for s in self.snapshots:
            if s.name == name:
                return s
        return None


@dataclass(frozen=True)
class Capabilities:
    """What a host's zfs can do; detected once and cached per host."""

    flavour: str  # "openzfs" | "legacy"
    parsable: bool  # -p on list/get
    written: bool
    resume: bool  # recv -s / send -t
    bookmarks: bool
    holds: bool
    send_estimate: bool  # send -nvP
    multi_snapshot: bool  # several snapshots atomically in one `zfs snapshot`
    compressors: tuple[str, ...] = ()  # zstd, lz4 present on the host
    mbuffer: bool = False
    snapshots_changed: bool = False  # the dataset property (OpenZFS >= 2.2): a no-op can skip the listing

    def to_dict(self) -> dict[str, object]:
        return {
            "flavour": self.flavour, "parsable": self.parsable, "written": self.written,
            "resume": self.resume, "bookmarks": self.bookmarks, "holds": self.holds,
            "send_estimate": self.send_estimate, "multi_snapshot": self.multi_snapshot,
            "compressors": list(self.compressors), "mbuffer": self.mbuffer,
            "snapshots_changed": self.snapshots_changed,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Capabilities:
        return cls(
            flavour=str(d["flavour"]), parsable=bool(d["parsable"]), written=bool(d["written"]),
            resume=bool(d["resume"]), bookmarks=bool(d["bookmarks"]), holds=bool(d["holds"]),
            send_estimate=bool(d["send_estimate"]), multi_snapshot=bool(d["multi_snapshot"]),
            compressors=tuple(d.get("compressors", ())), mbuffer=bool(d.get("mbuffer", False)),
            snapshots_changed=bool(d.get("snapshots_changed", False)),
        )


LEGACY = Capabilities(flavour="legacy", parsable=False, written=False, resume=False, bookmarks=False,
                      holds=True, send_estimate=False, multi_snapshot=False)
OPENZFS = Capabilities(flavour="openzfs", parsable=True, written=True, resume=True, bookmarks=True,
                       holds=True, send_estimate=True, multi_snapshot=True)

"""zfs stderr turned into typed esxdr errors.

The texts are those of zfs-fuse (pool v23), Solaris-era ZFS and OpenZFS 2.x;
several span two lines ("destination X has been modified\\nsince most recent
snapshot"), so matching is done on the whole stderr with newlines folded.
"""

from __future__ import annotations

import re

from esxdr.errors import CommandFailed, EsxdrError, ReplicationConflict, TransientError


class DatasetMissing(CommandFailed):
    pass


class AlreadyExists(CommandFailed):
    pass


class NotMounted(CommandFailed):
    """`zfs unmount` of a filesystem that is not mounted."""


_FOLD = re.compile(r"\s*\n\s*")

TRANSIENT_PATTERNS = [
    "dataset is busy",
    "failed to read from stream",
    "connection reset",
    "connection closed",
    "broken pipe",
    "invalid backup stream",
    "checksum mismatch",
    "ssh_exchange_identification",
    "connection timed out",
    "connection refused",
    "kex_exchange_identification",
    "premature eof",
    "stream was interrupted",
    "unexpected end of stream",
]


def translate(err: CommandFailed, *, dataset: str | None = None) -> EsxdrError:
    """Map a failed zfs command to the most precise error we know."""
    text = _FOLD.sub(" ", err.stderr or "").strip()
    low = text.lower()
    m = re.search(r"destination (\S+) has been modified since most recent snapshot", text)
    if m:
        dest = m.group(1).strip("'")
        return ReplicationConflict(
            "modified",
            f"DR dataset {dest} has been modified since its most recent snapshot; receiving would lose those changes",
            hint="find out who wrote to it (a DR test that was not cleaned up?); to discard the DR-side changes "
                 "run again with --rollback-dr",
            evidence={"dataset": dest, "zfs": text},
        )
    m = re.search(r"most recent snapshot of (\S+) does not match incremental source", text)
    if m:
        dest = m.group(1).strip("'")
        return ReplicationConflict(
            "diverged",
            f"DR dataset {dest}: its most recent snapshot does not match the incremental source",
            hint="run `esxdr snapshots` to compare both sides; --rollback-dr discards the DR-only snapshots",
            evidence={"dataset": dest, "zfs": text},
        )
    m = re.search(r"destination '?(\S+?)'? exists must specify -F to overwrite it", text)
    if m:
        dest = m.group(1)
        return ReplicationConflict(
            "unrelated",
            f"DR dataset {dest} exists but shares no snapshot with the source",
            hint="rename or destroy it on DR, or run again with --rollback-dr to overwrite it (destroys its data)",
            evidence={"dataset": dest, "zfs": text},
        )
    if "dataset does not exist" in low:
        return DatasetMissing(err.message, argv=err.argv, returncode=err.returncode, stderr=err.stderr,
                              host=err.host, hint=f"check the dataset name{f' {dataset}' if dataset else ''}")
    if "dataset already exists" in low:
        return AlreadyExists(err.message, argv=err.argv, returncode=err.returncode, stderr=err.stderr, host=err.host)
    if "not currently mounted" in low:
        return NotMounted(err.message, argv=err.argv, returncode=err.returncode, stderr=err.stderr, host=err.host)
    # A stream format the receiver cannot read (OpenZFS → pool v23) is permanent, though its
    # text can look like a cut stream's; it must not be retried as one.
    from esxdr.zfs.compat import receive_refusal

    refusal = receive_refusal(err, text, dataset)
    if refusal is not None:
        return refusal
    if any(p in low for p in TRANSIENT_PATTERNS):
        return TransientError(err.message, hint="transient; esxdr retries these automatically")
    return err

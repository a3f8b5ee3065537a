"""``esxdr serve``: the forced command of the DR service account.

The account's authorized_keys line pins ``command="esxdr serve --allow-prefix P"``,
so every SSH request arrives here with the requested command in
SSH_ORIGINAL_COMMAND. Only the zfs operations esxdr needs, on datasets under
the allowed prefix(es), are run — without a shell, argv by argv. Everything else
is refused with exit 126, a reason on stderr, and a line in each --log (a file or syslog).

Standard library only: this runs for every remote zfs call and must start fast.

``policy`` checks a request, ``run`` serves it; this module re-exports both.
"""

from esxdr.serve.policy import (  # noqa: F401
    BOOKMARK_RE,
    CLONE_MOUNTPOINT_RE,
    DATASET_RE,
    HOLD_TAG_RE,
    MBUFFER_MAX_BLOCK,
    MBUFFER_MAX_MEMORY,
    NO_DRILLS,
    PROP_ASSIGN_RE,
    PROP_LIST_RE,
    REPLICATION_TAG_RE,
    SEND_ONLY,
    SEND_ONLY_VERBS,
    STAGE_ALLOWED,
    Refused,
    capabilities,
    check_clone_mountpoint,
    check_stage,
    check_zfs,
    natural_mountpoint,
    parse,
)
from esxdr.serve.run import (  # noqa: F401
    NO_MOUNT,
    SYSLOG,
    USAGE,
    main,
)

"""esxdr serve: documented here for --help; the real entry is the fast path in esxdr/__main__.py."""

from __future__ import annotations

import click


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True}, epilog="""\b
Example authorized_keys line on the DR box (print yours with `esxdr keys authorized-line`):
  restrict,from="192.0.2.10",command="esxdr serve --allow-prefix rp1/iscsi --log syslog" ssh-ed25519 AAAA... esxdr@ss1
Pull mode, on production (`esxdr keys authorized-line --pull`):
  restrict,from="198.51.100.20",command="esxdr serve --send-only --allow-prefix sp1/iscsi --log syslog" ssh-ed25519 AAAA...
""")
@click.pass_context
def serve(ctx: click.Context) -> None:
    """Forced command of the DR service account (or, --send-only, of production's pull account):
    allow only esxdr's zfs operations under a prefix."""
    from esxdr.serve import main

    raise SystemExit(main(ctx.args))

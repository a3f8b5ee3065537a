"""Console entry point.

``esxdr serve`` runs as the DR service account's forced command for every
remote zfs call, so it takes a fast path that imports nothing but the
standard library and esxdr.serve (no click, paramiko or pyVmomi).
"""

import sys


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        from esxdr.serve import main as serve_main

        sys.exit(serve_main(sys.argv[2:]))
    from esxdr.cli.main import run

    sys.exit(run())


if __name__ == "__main__":
    main()

"""The example's main job: ``python -m example_project``.

With no ``FIDES__DATABASE__SERVER`` in the environment it starts a throwaway
primary + streaming replica + PgBouncer (the test topology) and points the
read-only alias at PgBouncer with the guide's recommended settings. Then it
migrates, seeds, runs ``check_readonly_pool``, and serves the project with
uvicorn (ASGI lifespan: the pool is prewarmed before the first request).
Ctrl-C stops the server and everything this command started.

With ``FIDES__DATABASE__*`` set, it uses those servers instead.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

RECOMMENDED = {
    "FIDES__DATABASE__ASYNC_READONLY_DATABASE_PREWARM": "true",
    "FIDES__DATABASE__ASYNC_READONLY_DATABASE_POOL_SIZE": "20",
    "FIDES__DATABASE__ASYNC_READONLY_DATABASE_MAX_OVERFLOW": "10",
    "FIDES__DATABASE__ASYNC_READONLY_DATABASE_POOL_SKIP_ROLLBACK": "true",
    "FIDES__DATABASE__ASYNC_READONLY_DATABASE_AUTOCOMMIT": "true",
    "FIDES__DATABASE__ASYNC_READONLY_DATABASE_PRE_PING": "true",
}


def _free_port(host: str, wanted: int) -> int:
    with socket.socket() as sock:
        try:
            sock.bind((host, wanted))
        except OSError:
            sock.bind((host, 0))
        return int(sock.getsockname()[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m example_project", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="8000, or a free port if it is taken")
    parser.add_argument("--no-serve", action="store_true", help="set up and check, then stop")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")
    topology = None
    if not os.environ.get("FIDES__DATABASE__SERVER"):
        from django_readonly_pool.testing.topology import Topology, find_pgbouncer

        print("FIDES__DATABASE__SERVER is not set: starting a throwaway primary + replica"
              + (" + PgBouncer" if find_pgbouncer() else "") + " ...", flush=True)
        topology = Topology(pgbouncer=find_pgbouncer() is not None)
        topology.start()
        os.environ.update(topology.environ(through_pgbouncer=topology.bouncer is not None))
        for key, value in RECOMMENDED.items():
            os.environ.setdefault(key, value)
        assert topology.primary is not None and topology.replica is not None
        print(f"  primary  127.0.0.1:{topology.primary.port}\n  replica  127.0.0.1:{topology.replica.port}"
              + (f"\n  pgbouncer 127.0.0.1:{topology.bouncer.port} (transaction mode, in front of the replica)"
                 if topology.bouncer else ""), flush=True)
    try:
        import django
        from django.core.management import call_command

        django.setup()
        call_command("migrate", interactive=False, verbosity=0)
        call_command("seed_library")
        if topology is not None:
            topology.wait_for_replay()
        from django.db import connections

        connections.close_all()
        try:
            call_command("check_readonly_pool")
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        if code == 2 or args.no_serve:
            return code
        import uvicorn

        port = _free_port(args.host, args.port)
        print(f"\nServing the example on http://{args.host}:{port}/  (Ctrl-C stops everything)", flush=True)
        uvicorn.run("example_project.asgi:application", host=args.host, port=port, lifespan="on",
                    log_level="info", workers=1)
        return 0
    finally:
        if topology is not None:
            topology.stop()
            print("Stopped the throwaway servers.", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())

"""``python -m django_readonly_pool.testing up|env|status|down``: throwaway servers for development.

``up`` starts a primary, a streaming replica and PgBouncer (the test topology)
in the background and prints the ``FIDES__DATABASE__*`` exports that point
``databases_from_env()`` at them; ``env`` prints them again (``--pgbouncer``:
the replica through PgBouncer); ``status`` says whether they run; ``down``
stops them and removes everything. Typical use::

    eval "$(python -m django_readonly_pool.testing up)"
    python manage.py migrate && python manage.py runserver
    python -m django_readonly_pool.testing down

The state (ports, the generated password) lives in ``./.topology`` (or
``--dir``, or ``READONLY_POOL_TOPOLOGY_DIR``), private to your account. If the
background process is killed, its watchdog stops the servers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .topology import Topology

STATE = "state.json"


def _dir(args: argparse.Namespace) -> Path:
    return Path(args.dir or os.environ.get("READONLY_POOL_TOPOLOGY_DIR") or ".topology").resolve()


def _state(directory: Path) -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads((directory / STATE).read_text())
    except (OSError, ValueError):
        return None
    try:
        os.kill(int(state["pid"]), 0)
    except (OSError, KeyError, ValueError):
        return None  # left behind by a process that is gone
    return state


def _exports(state: dict[str, Any], pgbouncer: bool) -> str:
    environ = state["environ_pgbouncer" if pgbouncer and state.get("environ_pgbouncer") else "environ"]
    return "".join(f"export {key}={shlex.quote(value)}\n" for key, value in environ.items())


def up(args: argparse.Namespace) -> int:
    directory = _dir(args)
    state = _state(directory)
    if state is None:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        directory.chmod(0o700)
        (directory / STATE).unlink(missing_ok=True)
        command = [sys.executable, "-m", "django_readonly_pool.testing", "_serve", "--dir", str(directory)]
        if args.no_pgbouncer:
            command.append("--no-pgbouncer")
        with open(directory / "serve.log", "w") as log:
            child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + 180
        while (state := _state(directory)) is None:
            if child.poll() is not None or time.monotonic() > deadline:
                print((directory / "serve.log").read_text()[-3000:], file=sys.stderr)
                print("the servers did not start", file=sys.stderr)
                return 1
            time.sleep(0.1)
        print(f"# servers up (pid {state['pid']}; stop them with: python -m django_readonly_pool.testing down)",
              file=sys.stderr)
    sys.stdout.write(_exports(state, args.pgbouncer))
    return 0


def env(args: argparse.Namespace) -> int:
    state = _state(_dir(args))
    if state is None:
        print("no servers running here: python -m django_readonly_pool.testing up", file=sys.stderr)
        return 1
    sys.stdout.write(_exports(state, args.pgbouncer))
    return 0


def status(args: argparse.Namespace) -> int:
    state = _state(_dir(args))
    if state is None:
        print("stopped")
        return 1
    ports = state["ports"]
    print(f"running (pid {state['pid']}): primary 127.0.0.1:{ports['primary']}, replica 127.0.0.1:"
          f"{ports['replica']}" + (f", pgbouncer 127.0.0.1:{ports['pgbouncer']}" if ports["pgbouncer"] else ""))
    return 0


def down(args: argparse.Namespace) -> int:
    directory = _dir(args)
    state = _state(directory)
    if state is None:
        print("stopped")
        return 0
    pid = int(state["pid"])
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:
            print("stopped")
            return 0
        time.sleep(0.1)
    print(f"the servers' process {pid} did not stop", file=sys.stderr)
    return 1


def serve(args: argparse.Namespace) -> int:
    """The background owner of the servers: starts them, then waits for SIGTERM."""
    directory = _dir(args)
    topology = Topology(pgbouncer=not args.no_pgbouncer)
    stopping = False

    def stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    topology.start()
    try:
        assert topology.primary is not None and topology.replica is not None
        state = {
            "pid": os.getpid(),
            "ports": {"primary": topology.primary.port, "replica": topology.replica.port,
                      "pgbouncer": topology.bouncer.port if topology.bouncer else None},
            "environ": topology.environ(),
            "environ_pgbouncer": topology.environ(through_pgbouncer=True) if topology.bouncer else None,
        }
        path = directory / (STATE + ".tmp")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(state, f)
        path.replace(directory / STATE)
        print(f"servers up: {state['ports']}", flush=True)
        while not stopping:
            signal.pause()
    finally:
        with contextlib.suppress(OSError):
            (directory / STATE).unlink()
        topology.stop()
        print("servers stopped", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m django_readonly_pool.testing", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, fn in (("up", up), ("env", env), ("status", status), ("down", down), ("_serve", serve)):
        command = sub.add_parser(name)
        command.add_argument("--dir", help="state directory (default ./.topology)")
        if name in ("up", "env"):
            command.add_argument("--pgbouncer", action="store_true",
                                 help="point the read-only alias at PgBouncer in front of the replica")
        if name in ("up", "_serve"):
            command.add_argument("--no-pgbouncer", action="store_true", help="do not start PgBouncer")
        command.set_defaults(fn=fn)
    args = parser.parse_args(argv)
    return int(args.fn(args))


if __name__ == "__main__":
    raise SystemExit(main())

"""Throwaway PostgreSQL topology for tests: primary, streaming replica, PgBouncer.

Everything runs on loopback on free ports, in one temporary directory:

* a **primary** (``initdb``, SCRAM password authentication, ``wal_level=replica``);
* a **hot-standby replica** made with ``pg_basebackup -R`` that streams from it;
* **PgBouncer** in transaction mode in front of the replica, configured to fail
  fast when the replica is down (see :data:`PGBOUNCER_FAIL_FAST`).

Nobody else on the machine gets in: the directory and the sockets are private
(0700) to the account that runs the servers, every login (socket or TCP) needs
the password (SCRAM), and password files are written 0600. PostgreSQL refuses
to run as root: as root the servers run as a dedicated unprivileged account
created for the purpose (``readonly-pool-test``, never the distribution's
``postgres``); as an ordinary user they run as that user. A watchdog process
stops the servers and removes the directory if the owning process dies without
cleaning up.

Binaries are found through, in order: the ``bindir`` argument or
``READONLY_POOL_PG_BINDIR``, ``pg_config --bindir``, the usual install folders,
and last the PostgreSQL that the optional ``pgserver`` wheel bundles
(``pip install django-readonly-pool[pgserver]``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import psycopg

from .pgbouncer import PGBOUNCER_FAIL_FAST, PgBouncer
from .postgres import PostgresServer
from .system import (
    DBNAME,
    SERVER_ACCOUNT,
    SUPERUSER,
    ServerUser,
    TopologyError,
    find_pg_bindir,
    find_pgbouncer,
    free_port,
    new_password,
)

__all__ = [
    "DBNAME",
    "PGBOUNCER_FAIL_FAST",
    "SERVER_ACCOUNT",
    "STATE_ENV",
    "SUPERUSER",
    "AttachedTopology",
    "PgBouncer",
    "PostgresServer",
    "ServerUser",
    "Topology",
    "TopologyError",
    "find_pg_bindir",
    "find_pgbouncer",
    "free_port",
    "sweep_stale_directories",
]

STATE_ENV: Final = "READONLY_POOL_TEST_TOPOLOGY"
PGBOUNCER_PORT_ENV: Final = "READONLY_POOL_TEST_PGBOUNCER_PORT"
_DIR_PREFIX: Final = "drp-topology-"


class Topology:
    """Primary + streaming replica (+ PgBouncer), started and stopped together.

    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    :meth:`environ` gives the ``FIDES__DATABASE__*`` variables that point
    ``databases_from_env()`` at it.
    """

    def __init__(
        self,
        *,
        bindir: str | os.PathLike[str] | None = None,
        pgbouncer: bool = True,
        base_dir: str | os.PathLike[str] | None = None,
        password: str | None = None,
        primary_settings: Mapping[str, str] | None = None,
        replica_settings: Mapping[str, str] | None = None,
    ) -> None:
        self.bindir = find_pg_bindir(bindir)
        self.pgbouncer_binary = find_pgbouncer() if pgbouncer else None
        if pgbouncer and self.pgbouncer_binary is None:
            raise TopologyError(
                "pgbouncer not found: install it (Debian: apt-get install pgbouncer), set "
                "READONLY_POOL_PGBOUNCER, or start the topology with pgbouncer=False"
            )
        self.os_user = ServerUser.resolve()
        self.password = password or new_password()
        self._base_parent = Path(base_dir) if base_dir else None
        self._primary_settings = dict(primary_settings or {})
        self._replica_settings = dict(replica_settings or {})
        self.base: Path | None = None
        self.primary: PostgresServer | None = None
        self.replica: PostgresServer | None = None
        self.bouncer: PgBouncer | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None

    # -- lifecycle ---------------------------------------------------------- #

    def __enter__(self) -> Topology:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> Topology:
        if self.base is not None:
            return self  # already running
        sweep_stale_directories(self._base_parent)
        self.base = Path(tempfile.mkdtemp(prefix=_DIR_PREFIX, dir=self._base_parent))  # 0700
        self.os_user.private_dir(self.base)
        self._start_watchdog()
        try:
            self._start_servers()
        except BaseException:
            self.stop()
            raise
        self._write_state()
        return self

    def _start_servers(self) -> None:
        assert self.base is not None
        sock = self.base / "sock"
        self.os_user.private_dir(sock)
        self.primary = PostgresServer(
            "primary", self.bindir, self.base / "primary", free_port(), self.os_user,
            self.password, sock, dict(self._primary_settings),
        )
        self.primary.initdb()
        self.primary.start()
        self.primary.sql(f"CREATE DATABASE {DBNAME}", dbname="postgres")
        with contextlib.suppress(psycopg.Error):
            self.primary.sql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        self.replica = self.make_standby("replica", settings=self._replica_settings)
        if self.pgbouncer_binary is not None:
            self.bouncer = PgBouncer(
                self.pgbouncer_binary, self.base / "pgbouncer", free_port(),
                self.replica.port, self.os_user, self.password,
            )
            self.bouncer.start()

    def make_standby(self, name: str, settings: Mapping[str, str] | None = None) -> PostgresServer:
        """Clone the primary into a new streaming hot standby and start it."""
        assert self.base is not None and self.primary is not None
        standby = PostgresServer(
            name, self.bindir, self.base / name, free_port(), self.os_user, self.password,
            self.primary.socket_dir, dict(settings or {}),
        )
        self.primary._run(
            str(self.bindir / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(self.primary.port),
            "-U", SUPERUSER, "-D", str(standby.datadir), "-R", "-X", "stream", "-c", "fast",
            "--no-sync", env={"PGPASSWORD": self.password},
        )
        standby.write_config()
        standby.start()
        self.wait_for_replay(standby)
        return standby

    def stop(self) -> None:
        """Stop every server and remove the directory. Safe to call twice."""
        errors: list[str] = []
        if self.bouncer is not None:
            with contextlib.suppress(Exception):
                self.bouncer.stop()
        for server in (self.replica, self.primary):
            if server is not None:
                try:
                    server.stop("immediate")
                except Exception as exc:  # noqa: BLE001 - keep cleaning up
                    errors.append(str(exc))
        for extra in self._extra_standbys():
            with contextlib.suppress(Exception):
                extra.stop("immediate")
        if self.base is not None and self.base.exists():
            shutil.rmtree(self.base, ignore_errors=True)
        if self._watchdog is not None:
            with contextlib.suppress(Exception):
                assert self._watchdog.stdin is not None
                self._watchdog.stdin.close()
                self._watchdog.wait(15)
            self._watchdog = None
        self.base = None
        if errors:
            raise TopologyError("; ".join(errors))

    def _extra_standbys(self) -> list[PostgresServer]:
        if self.base is None or self.primary is None:
            return []
        known = {"primary", "replica", "pgbouncer", "sock"}
        found = []
        for child in self.base.iterdir() if self.base.exists() else []:
            if child.is_dir() and child.name not in known and (child / "PG_VERSION").exists():
                found.append(PostgresServer(
                    child.name, self.bindir, child, 0, self.os_user, self.password,
                    self.primary.socket_dir,
                ))
        return found

    def _start_watchdog(self) -> None:
        assert self.base is not None
        self._watchdog = subprocess.Popen(
            [sys.executable, "-m", "django_readonly_pool.testing._watchdog", str(self.base),
             str(self.bindir)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def _write_state(self) -> None:
        assert self.base is not None
        # Read by the owner's child processes (pytest runs of the sample project), not the servers.
        path = self.base / "state.json"
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(self.state(), f)

    # -- information -------------------------------------------------------- #

    def state(self) -> dict[str, Any]:
        assert self.primary is not None and self.replica is not None
        return {
            "base": str(self.base),
            "bindir": str(self.bindir),
            "password": self.password,
            "primary_port": self.primary.port,
            "replica_port": self.replica.port,
            "pgbouncer_port": self.bouncer.port if self.bouncer else None,
        }

    def environ(self, *, through_pgbouncer: bool = False) -> dict[str, str]:
        """``FIDES__DATABASE__*`` variables for ``databases_from_env()``."""
        assert self.primary is not None and self.replica is not None
        replica_port = self.replica.port
        if through_pgbouncer:
            if self.bouncer is None:
                raise TopologyError("this topology has no PgBouncer")
            replica_port = self.bouncer.port
        env = {
            "FIDES__DATABASE__SERVER": "127.0.0.1",
            "FIDES__DATABASE__PORT": str(self.primary.port),
            "FIDES__DATABASE__USER": SUPERUSER,
            "FIDES__DATABASE__PASSWORD": self.password,
            "FIDES__DATABASE__DB": DBNAME,
            "FIDES__DATABASE__READONLY_SERVER": "127.0.0.1",
            "FIDES__DATABASE__READONLY_PORT": str(replica_port),
        }
        if self.bouncer is not None:
            env[PGBOUNCER_PORT_ENV] = str(self.bouncer.port)
        if self.base is not None:
            env[STATE_ENV] = str(self.base / "state.json")
        return env

    # -- replication helpers ------------------------------------------------ #

    def wait_for_replay(self, standby: PostgresServer | None = None, timeout: float = 30) -> None:
        """Block until *standby* (default: the replica) replayed the primary's WAL."""
        assert self.primary is not None
        standby = standby or self.replica
        assert standby is not None
        lsn = self.primary.sql("SELECT pg_current_wal_lsn()::text", dbname="postgres")[0][0]
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            try:
                rows = standby.sql(
                    "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", [lsn], dbname="postgres"
                )
                if rows and rows[0][0]:
                    return
            except psycopg.Error as exc:
                last_error = exc
            time.sleep(0.02)
        raise TopologyError(
            f"{standby.name} did not replay up to {lsn} within {timeout:.0f} s ({last_error})"
        )


class AttachedTopology(Topology):
    """A topology started by another process, found through its state file.

    The owner stops it; this object only describes it (and reaches its servers).
    """

    def __init__(self, state_file: str | os.PathLike[str] | None = None) -> None:
        path = Path(state_file or os.environ[STATE_ENV])
        state = json.loads(path.read_text())
        base = Path(state["base"])
        super().__init__(bindir=state["bindir"], pgbouncer=False, base_dir=base.parent, password=state["password"])
        self.base = base
        sock = base / "sock"
        self.primary = PostgresServer("primary", self.bindir, base / "primary", state["primary_port"],
                                      self.os_user, self.password, sock)
        self.replica = PostgresServer("replica", self.bindir, base / "replica", state["replica_port"],
                                      self.os_user, self.password, sock)
        bouncer_port = state.get("pgbouncer_port")
        if bouncer_port:
            self.pgbouncer_binary = find_pgbouncer()
            self.bouncer = PgBouncer(self.pgbouncer_binary or Path("pgbouncer"), base / "pgbouncer", bouncer_port,
                                     self.replica.port, self.os_user, self.password)

    def start(self) -> Topology:  # the owner started it
        return self

    def stop(self) -> None:  # the owner stops it
        return


def sweep_stale_directories(parent: Path | None = None) -> None:
    """Remove topology directories whose watchdog and servers are gone."""
    root = parent or Path(tempfile.gettempdir())
    with contextlib.suppress(OSError):
        for child in root.glob(_DIR_PREFIX + "*"):
            lock = child / "watchdog.pid"
            with contextlib.suppress(OSError, ValueError):
                pid = int(lock.read_text())
                os.kill(pid, 0)
                continue  # its watchdog still runs: not stale
            if any((child / d / "postmaster.pid").exists() for d in ("primary", "replica")):
                continue  # a server may still run; its watchdog will clean up
            shutil.rmtree(child, ignore_errors=True)

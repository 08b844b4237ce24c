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
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Final

import psycopg

__all__ = [
    "PGBOUNCER_FAIL_FAST",
    "PgBouncer",
    "PostgresServer",
    "ServerUser",
    "Topology",
    "TopologyError",
    "find_pg_bindir",
    "find_pgbouncer",
]

SUPERUSER: Final = "postgres"  # the database role, not an OS account
DBNAME: Final = "app"
SERVER_ACCOUNT: Final = "readonly-pool-test"  # the OS account, as root
STATE_ENV: Final = "READONLY_POOL_TEST_TOPOLOGY"
PGBOUNCER_PORT_ENV: Final = "READONLY_POOL_TEST_PGBOUNCER_PORT"
_DIR_PREFIX: Final = "drp-topology-"

# PgBouncer's defaults make a query wait 120 s (query_wait_timeout) for a dead
# server and retry a failed login only every 15 s. These fail fast instead; the
# README's PgBouncer section recommends the same values.
PGBOUNCER_FAIL_FAST: Final[Mapping[str, str]] = {
    "query_wait_timeout": "5",
    "server_connect_timeout": "3",
    "server_login_retry": "1",
}


class TopologyError(RuntimeError):
    """The test servers could not be found, started or stopped."""


# --------------------------------------------------------------------------- #
# Finding binaries and users
# --------------------------------------------------------------------------- #


def _has_server(bindir: Path) -> bool:
    return all((bindir / b).is_file() for b in ("initdb", "pg_ctl", "postgres", "pg_basebackup"))


def find_pg_bindir(bindir: str | os.PathLike[str] | None = None) -> Path:
    """The directory holding ``initdb``, ``pg_ctl``, ``postgres``, ``pg_basebackup``."""
    tried: list[str] = []
    explicit = bindir or os.environ.get("READONLY_POOL_PG_BINDIR")
    if explicit:
        path = Path(explicit)
        if _has_server(path):
            return path
        raise TopologyError(f"no PostgreSQL server binaries in {path} (READONLY_POOL_PG_BINDIR)")
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True, timeout=10
            ).stdout.strip()
            tried.append(out)
            if out and _has_server(Path(out)):
                return Path(out)
    candidates: list[Path] = []
    for pattern in ("/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin", "/opt/homebrew/opt/postgresql@*/bin",
                    "/usr/local/opt/postgresql@*/bin"):
        base, _, rest = pattern.partition("*")
        parent = Path(base).parent
        if parent.is_dir():
            for child in parent.iterdir():
                if child.name.startswith(Path(base).name):
                    candidates.append(child / rest.lstrip("/"))
    candidates.sort(key=lambda p: [int(n) for n in re.findall(r"\d+", str(p))] or [0], reverse=True)
    candidates += [Path("/usr/local/pgsql/bin"), Path("/usr/bin")]
    for path in candidates:
        tried.append(str(path))
        if _has_server(path):
            return path
    spec = find_spec("pgserver")
    if spec is not None and spec.origin:
        path = Path(spec.origin).parent / "pginstall" / "bin"
        tried.append(str(path))
        if _has_server(path):
            return path
    raise TopologyError(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres, pg_basebackup) not found; "
        f"looked in: {', '.join(tried) or '(nothing)'}. Install PostgreSQL, set "
        "READONLY_POOL_PG_BINDIR, or `pip install django-readonly-pool[pgserver]`."
    )


def find_pgbouncer() -> Path | None:
    explicit = os.environ.get("READONLY_POOL_PGBOUNCER")
    if explicit:
        return Path(explicit)
    found = shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/local/bin/pgbouncer") if Path(p).is_file()), None
    )
    return Path(found) if found else None


@dataclass(frozen=True)
class ServerUser:
    """The OS account the servers run as."""

    name: str
    uid: int
    gid: int

    @property
    def is_current(self) -> bool:
        return self.uid == os.geteuid()

    @classmethod
    def resolve(cls) -> ServerUser:
        """The current account; as root, a dedicated one (created when missing).

        ``READONLY_POOL_TEST_OS_USER`` names another dedicated account, never
        ``root`` nor the distribution's ``postgres`` (whose real clusters the
        test servers' files must not mix with).
        """
        if os.geteuid() != 0:
            entry = pwd.getpwuid(os.geteuid())
            return cls(entry.pw_name, entry.pw_uid, entry.pw_gid)
        name = os.environ.get("READONLY_POOL_TEST_OS_USER") or SERVER_ACCOUNT
        if name in ("root", "postgres"):
            raise TopologyError(
                f"READONLY_POOL_TEST_OS_USER={name!r}: the test servers run as a dedicated "
                f"unprivileged account (default {SERVER_ACCOUNT!r}), never root or postgres"
            )
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            subprocess.run(
                ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                 "--user-group", name],
                check=True, capture_output=True,
            )
            entry = pwd.getpwnam(name)
        if entry.pw_uid == 0:
            raise TopologyError(f"the account {name!r} is root: choose an unprivileged one")
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid)

    def popen_kwargs(self) -> dict[str, Any]:
        if self.is_current:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def chown(self, path: Path) -> None:
        if not self.is_current:
            os.chown(path, self.uid, self.gid)

    def private_dir(self, path: Path) -> None:
        """Create *path* (or tighten it) as a directory only this account may enter."""
        path.mkdir(mode=0o700, exist_ok=True)
        path.chmod(0o700)
        self.chown(path)

    def private_file(self, path: Path, text: str) -> None:
        """Write *text* to *path*, readable by this account only (never world-readable, not even briefly)."""
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        self.chown(path)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise TopologyError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


# --------------------------------------------------------------------------- #
# PostgreSQL
# --------------------------------------------------------------------------- #


@dataclass
class PostgresServer:
    """One PostgreSQL cluster owned by the test topology."""

    name: str
    bindir: Path
    datadir: Path
    port: int
    os_user: ServerUser
    password: str
    socket_dir: Path
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def logfile(self) -> Path:
        return self.datadir.parent / f"{self.name}.log"

    # -- process control -------------------------------------------------- #

    def _run(self, *args: str, check: bool = True, timeout: float = 120,
             env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        full_env = {**os.environ, "LC_ALL": "C", "LANG": "C", **(env or {})}
        result = subprocess.run(
            list(args), capture_output=True, text=True, env=full_env, timeout=timeout,
            cwd=str(self.datadir.parent), check=False, **self.os_user.popen_kwargs(),
        )
        if check and result.returncode != 0:
            raise TopologyError(
                f"{Path(args[0]).name} failed for {self.name} (exit {result.returncode}):\n"
                f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
            )
        return result

    def initdb(self) -> None:
        pwfile = self.datadir.parent / f".{self.name}.pw"
        self.os_user.private_file(pwfile, self.password + "\n")
        try:
            self._run(
                str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", SUPERUSER,
                f"--pwfile={pwfile}", "--auth-local=scram-sha-256", "--auth-host=scram-sha-256",
                "--encoding=UTF8", "--locale=C", "--no-sync",
            )
        finally:
            pwfile.unlink(missing_ok=True)
        self.write_config()

    def write_config(self) -> None:
        """Write postgresql.conf and pg_hba.conf (replaces a copied configuration)."""
        base = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.socket_dir}'",
            "unix_socket_permissions": "0700",
            "max_connections": "500",
            "superuser_reserved_connections": "3",
            "shared_buffers": "32MB",
            "fsync": "off",
            "full_page_writes": "off",
            "wal_level": "replica",
            "max_wal_senders": "10",
            "max_replication_slots": "10",
            "wal_keep_size": "256MB",
            "hot_standby": "on",
            "hot_standby_feedback": "on",
            "wal_receiver_status_interval": "1s",
            "password_encryption": "'scram-sha-256'",
            "logging_collector": "off",
            "log_line_prefix": "'%m [%p] %q%u@%d app=%a '",
            "log_min_messages": "warning",
            "shared_preload_libraries": "'pg_stat_statements'",
            "pg_stat_statements.track_utility": "on",
            "datestyle": "'iso, mdy'",
            "timezone": "'UTC'",
            "lc_messages": "'C'",
        }
        if not _has_contrib(self.bindir):
            base.pop("shared_preload_libraries")
            base.pop("pg_stat_statements.track_utility")
        base.update(self.settings)
        lines = [f"{k} = {v}" for k, v in base.items()]
        lines.append("include_if_exists = 'override.conf'")
        (self.datadir / "postgresql.conf").write_text("\n".join(lines) + "\n")
        # Every login needs the password, over the socket as over TCP.
        self.os_user.private_file(self.datadir / "pg_hba.conf", (
            "local all all scram-sha-256\n"
            "local replication all scram-sha-256\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
            "host replication all 127.0.0.1/32 scram-sha-256\n"
        ))
        self.os_user.chown(self.datadir / "postgresql.conf")

    def set_override(self, **values: str) -> None:
        """Set parameters in ``override.conf`` (apply with :meth:`reload` or a restart)."""
        path = self.datadir / "override.conf"
        current: dict[str, str] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                key, _, value = line.partition(" = ")
                if key:
                    current[key] = value
        current.update(values)
        current = {k: v for k, v in current.items() if v is not None and v != ""}
        path.write_text("".join(f"{k} = {v}\n" for k, v in current.items()))
        self.os_user.chown(path)

    def start(self, timeout: float = 60) -> None:
        self._run(
            str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-l", str(self.logfile),
            "-w", "-t", str(int(timeout)), "start", timeout=timeout + 10,
        )
        _wait_port(self.port, timeout)

    def stop(self, mode: str = "fast", timeout: float = 60) -> None:
        """Stop the server (``mode``: smart, fast or immediate). Quiet if stopped."""
        if not self.is_running():
            return
        self._run(
            str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w",
            "-t", str(int(timeout)), "stop", check=False, timeout=timeout + 10,
        )

    def kill(self) -> None:
        """``pg_ctl stop -m immediate``: no clean shutdown, like a crash."""
        self.stop("immediate")

    def restart(self, timeout: float = 60) -> None:
        self.stop()
        self.start(timeout)

    def reload(self) -> None:
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "reload")

    def pid(self) -> int | None:
        pidfile = self.datadir / "postmaster.pid"
        try:
            return int(pidfile.read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def is_running(self) -> bool:
        pid = self.pid()
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    # -- SQL ---------------------------------------------------------------- #

    def conninfo(self, dbname: str = DBNAME, **extra: Any) -> dict[str, Any]:
        return {
            "host": "127.0.0.1", "port": self.port, "user": SUPERUSER,
            "password": self.password, "dbname": dbname, "connect_timeout": 5, **extra,
        }

    def connect(self, dbname: str = DBNAME, **extra: Any) -> psycopg.Connection[Any]:
        return psycopg.connect(**self.conninfo(dbname, **extra), autocommit=True)

    def sql(self, query: str, params: Any = None, dbname: str = DBNAME) -> list[tuple[Any, ...]]:
        """Run one statement as superuser; return its rows (empty if none)."""
        with self.connect(dbname) as conn, psycopg.ClientCursor(conn) as cur:
            # Client-side binding: parameters work in utility statements too.
            cur.execute(query, params)
            return list(cur.fetchall()) if cur.description else []


def _has_contrib(bindir: Path) -> bool:
    """True when the pg_stat_statements extension is installed for these binaries."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        sharedir = subprocess.run(
            [str(bindir / "pg_config"), "--sharedir"], capture_output=True, text=True, timeout=10, check=False
        ).stdout.strip()
        return Path(sharedir, "extension", "pg_stat_statements.control").exists()
    return False


# --------------------------------------------------------------------------- #
# PgBouncer
# --------------------------------------------------------------------------- #


@dataclass
class PgBouncer:
    """PgBouncer in transaction mode in front of one server."""

    binary: Path
    workdir: Path
    port: int
    target_port: int
    os_user: ServerUser
    password: str
    settings: dict[str, str] = field(default_factory=dict)
    _process: subprocess.Popen[bytes] | None = None

    @property
    def pidfile(self) -> Path:
        return self.workdir / "pgbouncer.pid"

    @property
    def logfile(self) -> Path:
        return self.workdir / "pgbouncer.log"

    def write_config(self) -> None:
        self.os_user.private_dir(self.workdir)
        quoted = self.password.replace('"', '""')
        self.os_user.private_file(self.workdir / "userlist.txt", f'"{SUPERUSER}" "{quoted}"\n')
        config = {
            "listen_addr": "127.0.0.1",
            "listen_port": str(self.port),
            "unix_socket_dir": "",
            "auth_type": "scram-sha-256",
            "auth_file": str(self.workdir / "userlist.txt"),
            "pool_mode": "transaction",
            "max_client_conn": "2000",
            "default_pool_size": "120",
            "max_db_connections": "0",
            "ignore_startup_parameters": "extra_float_digits",
            "admin_users": SUPERUSER,
            "logfile": str(self.logfile),
            "pidfile": str(self.pidfile),
            "log_connections": "0",
            "log_disconnections": "0",
            **PGBOUNCER_FAIL_FAST,
            **self.settings,
        }
        text = (
            "[databases]\n"
            f"* = host=127.0.0.1 port={self.target_port}\n\n"
            "[pgbouncer]\n" + "".join(f"{k} = {v}\n" for k, v in config.items())
        )
        self.os_user.private_file(self.workdir / "pgbouncer.ini", text)

    def start(self, timeout: float = 30) -> None:
        self.write_config()
        self._process = subprocess.Popen(
            [str(self.binary), str(self.workdir / "pgbouncer.ini")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=str(self.workdir),
            start_new_session=True, **self.os_user.popen_kwargs(),
        )
        try:
            _wait_port(self.port, timeout)
        except TopologyError:
            self.stop()
            log = self.logfile.read_text()[-2000:] if self.logfile.exists() else ""
            raise TopologyError(f"PgBouncer did not start:\n{log}") from None

    def pid(self) -> int | None:
        if self._process is not None and self._process.poll() is None:
            return self._process.pid
        with contextlib.suppress(OSError, ValueError):
            return int(self.pidfile.read_text().strip())
        return None

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self, sig: int = signal.SIGINT) -> None:
        """Stop PgBouncer (SIGINT: safe shutdown; SIGKILL: crash)."""
        if self._process is None:
            return
        if self._process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.send_signal(sig)
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(10)
        self._process = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()


# --------------------------------------------------------------------------- #
# The topology
# --------------------------------------------------------------------------- #


def _test_password() -> str:
    # Every character class that URL-building code gets wrong.
    return "p@ss:w/o%rd 'q\"\\é-" + secrets.token_hex(4)


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
        self.password = password or _test_password()
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
    """A topology started by another process, found through its state file."""

    def __init__(self, state_file: str | os.PathLike[str] | None = None) -> None:
        path = Path(state_file or os.environ[STATE_ENV])
        state = json.loads(path.read_text())
        self.bindir = Path(state["bindir"])
        self.os_user = ServerUser.resolve()
        self.password = state["password"]
        self.base = Path(state["base"])
        self._base_parent = self.base.parent
        self._watchdog = None
        sock = self.base / "sock"
        self.primary = PostgresServer("primary", self.bindir, self.base / "primary",
                                      state["primary_port"], self.os_user, self.password, sock)
        self.replica = PostgresServer("replica", self.bindir, self.base / "replica",
                                      state["replica_port"], self.os_user, self.password, sock)
        self.bouncer = None
        self.pgbouncer_binary = None

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


@contextlib.contextmanager
def running_topology(**kwargs: Any) -> Iterator[Topology]:
    """``with running_topology() as topo:`` — a started :class:`Topology`."""
    topo = Topology(**kwargs)
    topo.start()
    try:
        yield topo
    finally:
        topo.stop()


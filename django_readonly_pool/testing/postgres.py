"""One PostgreSQL cluster of the test topology: initdb, configuration, start/stop/kill, SQL.

Every login needs the password (SCRAM), over the socket as over TCP; the socket
is private (0700) to the account that runs the server.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from .system import DBNAME, SUPERUSER, ServerUser, TopologyError, wait_port

__all__ = ["PostgresServer"]


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
        wait_port(self.port, timeout)

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

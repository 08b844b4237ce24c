"""PgBouncer in transaction mode in front of one server (the replica), for the tests.

SCRAM logins with a 0600 auth file, loopback only, no Unix socket.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from .system import SUPERUSER, ServerUser, TopologyError, wait_port

__all__ = ["PGBOUNCER_FAIL_FAST", "PgBouncer"]

# PgBouncer's defaults make a query wait 120 s (query_wait_timeout) for a dead
# server and retry a failed login only every 15 s. These fail fast instead; the
# README's PgBouncer section recommends the same values.
PGBOUNCER_FAIL_FAST: Final[Mapping[str, str]] = {
    "query_wait_timeout": "5",
    "server_connect_timeout": "3",
    "server_login_retry": "1",
}


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
            wait_port(self.port, timeout)
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

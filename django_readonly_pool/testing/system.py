"""The machine the test servers run on: binaries, ports, and the OS account.

* :func:`find_pg_bindir`, :func:`find_pgbouncer`: where the server binaries are;
* :class:`ServerUser`: the account the servers run as, and its private files
  and directories (0700/0600: nobody else on the machine gets in);
* :func:`free_port`, :func:`wait_port`: loopback ports.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Final

__all__ = [
    "DBNAME",
    "SERVER_ACCOUNT",
    "SUPERUSER",
    "ServerUser",
    "TopologyError",
    "find_pg_bindir",
    "find_pgbouncer",
    "free_port",
    "new_password",
    "wait_port",
]

SUPERUSER: Final = "postgres"  # the database role, not an OS account
DBNAME: Final = "app"
SERVER_ACCOUNT: Final = "readonly-pool-test"  # the OS account, as root


class TopologyError(RuntimeError):
    """The test servers could not be found, started or stopped."""


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


def wait_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise TopologyError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")




def new_password() -> str:
    """A fresh password with every character class that URL-building code gets wrong."""
    return "p@ss:w/o%rd 'q\"\\é-" + secrets.token_hex(4)

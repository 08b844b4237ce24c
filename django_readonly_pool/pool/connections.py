"""What a new pool connection goes through before its first borrower.

* :func:`connection_class`: psycopg's ``AsyncConnection`` with a ``connect()``
  that tells its pool's :class:`ConnectLog` about every attempt (failures wake
  the health monitor and end a prewarm at once; successes are timed for
  ``check_readonly_pool``).
* :class:`Configure`: psycopg's ``configure`` callback. It makes the session
  match Django's own (time zone, role, isolation level), read-only on the server
  when direct, registers django.contrib.postgres' types (hstore, citext[]) and
  prepares the one-statement reset of ``POOL_SKIP_ROLLBACK`` false.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable
from time import monotonic
from typing import Any

from psycopg import AsyncConnection
from psycopg.pq import TransactionStatus
from psycopg.types import TypeInfo
from psycopg.types.hstore import register_hstore

from django_readonly_pool.conf import ConnectionTarget
from django_readonly_pool.events import notify_connection_failed

from .policy import mark_used
from .session import SessionSetup

__all__ = ["Configure", "ConnectLog", "PoolConnection", "connection_class", "reset_session"]

logger = logging.getLogger("django_readonly_pool")


class PoolConnection(AsyncConnection[Any]):
    """psycopg's connection, with what its pool keeps on it."""

    _rop_used_at: float = 0.0  # last used or verified (monotonic): the PRE_PING window
    _rop_pinged: bool = False  # pinged at its last checkout
    _rop_aborted: bool = False  # its statement was ended because the replica went down
    _rop_reset_sql: Any = None  # POOL_SKIP_ROLLBACK false: the statement that resets the session


class ConnectLog:
    """What a pool knows of its connects: the connections it made, the last failure.

    The first failure of an outage is logged once, with its cause (secrets
    masked), and so is the return; every failure wakes the health monitor; during
    a prewarm the first failure ends it (:attr:`prewarm_failure`).
    """

    def __init__(self, alias: str, target: ConnectionTarget, scrub: Callable[[str], str]) -> None:
        self.alias = alias
        self.target = target
        self.scrub = scrub
        self.connections: weakref.WeakSet[PoolConnection] = weakref.WeakSet()
        self.last_error: tuple[float, str] | None = None  # (monotonic time, message)
        self.prewarm_failure: asyncio.Future[str] | None = None
        self.listener: Callable[[float], None] | None = None  # each connect's milliseconds (diagnose)

    def connect_failed(self, exc: BaseException) -> None:
        message = self.scrub(str(exc).strip()) or type(exc).__name__
        notify_connection_failed(self.alias)
        failure = self.prewarm_failure
        if failure is not None:
            if not failure.done():
                failure.set_result(message)  # a failed prewarm reports its cause itself
        elif self.last_error is None:
            logger.warning("readonly pool %r cannot connect to %s: %s", self.alias, self.target.describe(), message)
        self.last_error = (monotonic(), message)

    def connected(self, conn: PoolConnection, seconds: float) -> None:
        """A login succeeded; the outage is over only once the connection is configured
        (:meth:`verified`): PgBouncer accepts a login it then cannot serve."""
        self.connections.add(conn)
        if self.listener is not None:
            self.listener(seconds * 1000)

    def verified(self) -> None:
        """A new connection answered its configuring round trip: connects work again."""
        if self.last_error is not None:
            logger.info("readonly pool %r connects to %s again", self.alias, self.target.describe())
            self.last_error = None


def connection_class(log: ConnectLog) -> type[PoolConnection]:
    """A connection class whose ``connect()`` reports to *log* (held weakly)."""
    ref = weakref.ref(log)

    class ReadPoolConnection(PoolConnection):
        @classmethod
        async def connect(cls, conninfo: str = "", **kwargs: Any) -> ReadPoolConnection:
            started = monotonic()
            try:
                conn = await super().connect(conninfo, **kwargs)
            except Exception as exc:
                owner = ref()
                if owner is not None:
                    owner.connect_failed(exc)
                raise
            owner = ref()
            if owner is not None:
                owner.connected(conn, monotonic() - started)
            return conn

    return ReadPoolConnection


class Configure:
    """psycopg's ``configure`` callback of one pool."""

    def __init__(self, session: SessionSetup, *, reset_sessions: bool, postgres_types: bool,
                 on_failure: Callable[[BaseException], None], on_verified: Callable[[], None] = lambda: None,
                 on_server_version: Callable[[int], None] | None = None) -> None:
        self.session = session
        self.server_version: int | None = None
        self._reset_sessions = reset_sessions
        self._postgres_types = postgres_types
        self._on_failure = on_failure
        self._on_verified = on_verified
        self._on_server_version = on_server_version
        self._type_infos: tuple[TypeInfo, ...] | None = None
        self._types_lock = asyncio.Lock()

    async def __call__(self, conn: PoolConnection) -> None:
        try:
            await self._configure(conn)
        except Exception as exc:
            self._on_failure(exc)  # a connection that cannot be configured is a failed connect
            raise
        self._on_verified()

    async def _configure(self, conn: PoolConnection) -> None:
        if self.server_version is None:
            self.server_version = conn.info.server_version
            if self._on_server_version is not None:
                self._on_server_version(self.server_version)
        tz = conn.info.parameter_status("TimeZone")
        await conn.execute(self.session.configure_sql(tz, conn.info.backend_pid))  # the verifying round trip
        if self.session.isolation_level is not None:
            await conn.set_isolation_level(self.session.isolation_level)  # type: ignore[arg-type]
        if self._postgres_types:
            infos = self._type_infos
            if infos is None:
                infos = await self._fetch_type_infos(conn)
            for info in infos:
                if info.name == "hstore":
                    register_hstore(info, conn)
                else:
                    info.register(conn)
        if conn.info.transaction_status != TransactionStatus.IDLE:
            await conn.commit()
        if self._reset_sessions:
            conn._rop_reset_sql = self.session.reset_sql(tz, conn.info.backend_pid)
        conn._rop_pinged = False
        mark_used(conn)  # verified by configuring

    async def _fetch_type_infos(self, conn: AsyncConnection[Any]) -> tuple[TypeInfo, ...]:
        """The hstore and citext types of the database, as django.contrib.postgres
        looks them up (every schema; citext needs only its array loader)."""
        async with self._types_lock:
            if self._type_infos is None:
                cursor = await conn.execute(
                    "SELECT typname, oid, typarray FROM pg_catalog.pg_type"
                    " WHERE typname IN ('hstore', 'citext')"
                )
                self._type_infos = tuple(
                    TypeInfo(name, oid if name == "hstore" else 0, array_oid)
                    for name, oid, array_oid in await cursor.fetchall()
                )
            return self._type_infos


async def reset_session(conn: PoolConnection) -> None:
    """POOL_SKIP_ROLLBACK false: one round trip back to a clean, configured session
    (role, settings, locks, prepared statements, listeners, temp objects, cursors)."""
    statement = conn._rop_reset_sql
    if conn.autocommit:
        await conn.execute(statement)
    else:
        await conn.set_autocommit(True)  # client-side only while IDLE
        try:
            await conn.execute(statement)
        finally:
            await conn.set_autocommit(False)

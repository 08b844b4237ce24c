"""The read pool: a psycopg ``AsyncConnectionPool`` with the guide's semantics.

:class:`ReadPool` subclasses psycopg_pool's ``AsyncConnectionPool`` (3.3) and
keeps its machinery (background connects, max lifetime, stats), changing what
the reference's variables need:

* **PREWARM** opens all ``POOL_SIZE`` connections *in parallel* and verifies
  each with a round trip to the server, within ``PREWARM_TIMEOUT``; on failure
  it raises :class:`~django_readonly_pool.errors.PrewarmFailed` naming the
  server and the cause.
* **POOL_SKIP_ROLLBACK** true: nothing is sent on return (the guard refuses the
  statements that would leave session state). False: one round trip clears the
  session completely (what ``DISCARD ALL`` does) and configures it again. An
  open transaction (``AUTOCOMMIT`` false) is always rolled back, so no
  borrower ever inherits one.
* Every connection is configured like Django's (time zone, role) and, when it
  is direct (not through a pooler), made read-only on the server
  (``default_transaction_read_only``).
* **PRE_PING** checks a connection before handing it out unless it was used
  less than ``PRE_PING_INTERVAL`` ago; each check is bounded by
  ``CHECK_TIMEOUT``; the first dead connection found triggers a background
  check of all idle ones, and the checkout moves on without psycopg's back-off
  sleep. A read whose unpinged connection turns out dead is retried once.
* **MAX_OVERFLOW** connections are closed once idle for
  ``OVERFLOW_IDLE_TIMEOUT`` (all of them, not one per ``max_idle``).
* Checkout and putback take a lock-free fast path when a connection is ready
  and nobody waits (asyncio code between two awaits cannot interleave). It
  hands out the most recently returned connection (LIFO, SQLAlchemy's
  ``pool_use_lifo``): with FIFO a pool larger than the traffic of one
  ``PRE_PING_INTERVAL`` would ping on every checkout.

:data:`registry` keeps one pool per event loop and alias: a pool belongs to the
loop it was opened on. Pools of a loop are closed when the loop shuts its tasks
down (``asyncio.run``, ``async_to_sync``) or through :func:`close_pools`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from time import monotonic
from typing import Any, Final

import psycopg
from psycopg import AsyncConnection, sql
from psycopg.pq import ConnStatus, ExecStatus, TransactionStatus
from psycopg.types import TypeInfo
from psycopg.types.hstore import register_hstore
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolClosed, PoolTimeout
from psycopg_pool.base import AttemptWithBackoff
from psycopg_pool.pool_async import StopWorker

from . import health as _health
from .conf import ConnectionTarget, PoolSettings, app_settings
from .errors import PoolExhausted, PrewarmFailed, QueryTimeout, ReplicaUnavailable
from .health import breaker_open, report_failure
from .interrupt import interrupt_after, shutdown_socket

__all__ = ["ReadPool", "SessionSetup", "SyncReadPool", "close_pools", "open_pools", "registry"]

logger = logging.getLogger("django_readonly_pool")

_IDLE: Final = TransactionStatus.IDLE
_INTRANS: Final = TransactionStatus.INTRANS
_INERROR: Final = TransactionStatus.INERROR
_BAD: Final = ConnStatus.BAD
_TUPLES_OK: Final = ExecStatus.TUPLES_OK
_RECONNECT_DELAY_CAP: Final = 2.0  # seconds between reconnect attempts, at most
_RECENT_ERROR_WINDOW: Final = 60.0
_WATCH_SLICE: Final = 0.5  # a sync checkout looks at the replica's health this often while it waits
# A statement failed this way on a connection that died while idle (a server
# restart): no answer at all, or the server ending the session. Anything else
# (PgBouncer's query_wait_timeout ...) is the server's answer: not retried.
_LOST_WHILE_IDLE: Final = frozenset({None, "57P01", "57P02", "57P03"})


# Everything a borrower can leave in a session (DISCARD ALL, as statements that
# may run in one round trip: DISCARD ALL itself refuses a multi-statement string).
CLEAR_SESSION: Final = sql.SQL(
    "CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; DEALLOCATE ALL; UNLISTEN *; "
    "SELECT pg_catalog.pg_advisory_unlock_all(); DISCARD PLANS; DISCARD TEMP; DISCARD SEQUENCES"
)
# Read-only sessions wherever the server allows it: only on a direct connection,
# known by the server's backend PID being the one libpq received at login (a
# pooler such as PgBouncer hands out its own); through a pooler the setting
# would stay on a server connection that other clients share.
_READ_ONLY_IF_DIRECT: Final = sql.SQL(
    "SELECT CASE WHEN pg_catalog.pg_backend_pid() = {} THEN "
    "pg_catalog.set_config('default_transaction_read_only', 'on', false) END"
)


class _QuietForOurPools(logging.Filter):
    """psycopg_pool logs a WARNING for every failed connection attempt (every 2 s per
    pool while a replica is down, from both pools: hundreds in an outage), for every
    connect cancelled when an event loop ends (with an empty reason) and for every
    broken connection it discards. For this package's pools the package reports an
    outage itself, once: the first failure with its cause, the return, and the health
    monitor's replica down/up. Other pools' records pass untouched."""

    _QUIETED = ("error connecting in ", "reconnection attempt in pool ", "discarding broken connection",
                "discarding closed connection")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.WARNING or not isinstance(record.msg, str):
            return True
        if not record.msg.startswith(self._QUIETED) or not isinstance(record.args, tuple) or not record.args:
            return True
        subject = record.args[0]
        ours = (isinstance(subject, str) and subject.startswith(("readonly-pool[", "readonly-pool-sync[")))
        return not (ours or hasattr(subject, "_rop_used_at"))


logging.getLogger("psycopg.pool").addFilter(_QuietForOurPools())


@dataclass(frozen=True, slots=True)
class SessionSetup:
    """What a new connection needs to match Django's own (see the backend)."""

    timezone_name: str | None
    assume_role: str | None
    isolation_level: int | None
    secrets: tuple[str, ...] = field(default=(), repr=False)  # masked in messages, never shown

    def configure_sql(self, connect_timezone: str | None, backend_pid: int) -> sql.Composed:
        """Django's session settings (time zone, role) and read-only, in one statement string.

        *connect_timezone* is the server's time zone at connect time: after a
        reset the session is back to it.
        """
        parts: list[sql.Composable] = [_READ_ONLY_IF_DIRECT.format(sql.Literal(backend_pid))]
        if self.timezone_name and connect_timezone != self.timezone_name:
            parts.append(
                sql.SQL("SELECT pg_catalog.set_config('TimeZone', {}, false)").format(
                    sql.Literal(self.timezone_name)
                )
            )
        if self.assume_role:
            parts.append(sql.SQL("SET ROLE {}").format(sql.Literal(self.assume_role)))
        return sql.SQL("; ").join(parts)

    def reset_sql(self, connect_timezone: str | None, backend_pid: int) -> sql.Composed:
        """POOL_SKIP_ROLLBACK false: clear everything, then configure again."""
        return sql.SQL("; ").join([CLEAR_SESSION, self.configure_sql(connect_timezone, backend_pid)])

    def scrub(self, text: str) -> str:
        """*text* with every secret replaced by the mask."""
        for secret in self.secrets:
            if secret:
                text = text.replace(secret, "********")
        return text


class _CappedBackoff(AttemptWithBackoff):
    """psycopg's reconnect back-off, capped so a returning server is used at once."""

    def update_delay(self, now: float) -> None:
        super().update_delay(now)
        self.delay = min(self.delay, _RECONNECT_DELAY_CAP)


class ReadPool(AsyncConnectionPool[AsyncConnection[Any]]):
    """The async read pool of one alias on one event loop."""

    def __init__(
        self,
        alias: str,
        settings: PoolSettings,
        target: ConnectionTarget,
        connect_kwargs: dict[str, Any],
        session: SessionSetup,
        *,
        on_server_version: Callable[[int], None] | None = None,
        postgres_types: bool = False,
    ) -> None:
        self.alias = alias
        self.settings = settings
        self.target = target
        self.session = session
        self._on_server_version = on_server_version
        self._ping_interval = settings.pre_ping_interval
        self._check_timeout = settings.check_timeout
        self._query_timeout = settings.query_timeout
        self._flushing: asyncio.Task[None] | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._skip_initial_fill = False
        self._last_connect_error: tuple[float, str] | None = None
        self._prewarming = False
        self._reset_sessions = not settings.pool_skip_rollback
        self._connections: weakref.WeakSet[AsyncConnection[Any]] = weakref.WeakSet()
        # django.contrib.postgres: hstore / citext[] loaders, as Django registers
        # them on its own connections (type OIDs looked up once per pool).
        self._postgres_types = postgres_types
        self._type_infos: tuple[TypeInfo, ...] | None = None
        self._types_lock = asyncio.Lock()
        self._lent: set[AsyncConnection[Any]] = set()  # connections held by clients right now
        self.prewarmed = False
        self.prewarm_seconds: float | None = None
        self.opened_at: float | None = None
        self.server_version: int | None = None
        self.counters: dict[str, int] = dict.fromkeys(
            ("checks", "checks_skipped", "checks_failed", "flushes", "retries",
             "query_timeouts", "checkout_timeouts", "overflow_closed", "statements"),
            0,
        )
        super().__init__(
            kwargs=connect_kwargs,
            min_size=settings.pool_size,
            max_size=settings.max_size,
            open=False,
            configure=self._configure,
            check=self._check if settings.pre_ping else None,
            reset=None,  # POOL_SKIP_ROLLBACK false: putconn() resets inline (see there)
            name=f"readonly-pool[{alias}]",
            timeout=settings.checkout_timeout,
            max_lifetime=settings.max_lifetime,
            # psycopg's own shrinking (one connection per max_idle) is replaced
            # by the overflow reaper below.
            max_idle=86_400.0,
            reconnect_timeout=86_400.0,
        )

    @property
    def in_use(self) -> int:
        """Connections held by clients right now."""
        return len(self._lent)

    def __repr__(self) -> str:
        return (
            f"<ReadPool {self.alias!r} {self.target.describe()} size={self._nconns}"
            f" available={len(self._pool)} closed={self.closed}>"
        )

    # -- connections -------------------------------------------------------- #

    async def _connect(self, timeout: float | None = None) -> AsyncConnection[Any]:
        try:
            conn = await super()._connect(timeout)
        except Exception as exc:
            message = self.session.scrub(str(exc).strip())
            report_failure(self.alias, message)
            first = self._last_connect_error is None
            self._last_connect_error = (monotonic(), message)
            if first and not self._prewarming:  # a failed prewarm reports its cause itself
                logger.warning(
                    "readonly pool %r cannot connect to %s: %s",
                    self.alias, self.target.describe(), message,
                )
            raise
        if self._last_connect_error is not None:
            logger.info("readonly pool %r connects to %s again", self.alias, self.target.describe())
            self._last_connect_error = None
        self._connections.add(conn)
        return conn

    async def _configure(self, conn: AsyncConnection[Any]) -> None:
        """Make a new connection match Django's own (time zone, role, isolation)."""
        if self.server_version is None:
            self.server_version = conn.info.server_version
            if self._on_server_version is not None:
                self._on_server_version(self.server_version)
        tz = conn.info.parameter_status("TimeZone")
        await conn.execute(self.session.configure_sql(tz, conn.info.backend_pid))
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
        if conn.info.transaction_status != _IDLE:
            await conn.commit()
        if self._reset_sessions:
            conn._rop_reset_sql = self.session.reset_sql(tz, conn.info.backend_pid)  # type: ignore[attr-defined]
        conn._rop_used_at = monotonic()  # type: ignore[attr-defined]  # verified by connecting

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

    async def _reset_session(self, conn: AsyncConnection[Any]) -> None:
        """POOL_SKIP_ROLLBACK false: one round trip back to a clean, configured session
        (role, settings, locks, prepared statements, listeners, temp objects, cursors)."""
        statement = conn._rop_reset_sql  # type: ignore[attr-defined]
        if conn.autocommit:
            await conn.execute(statement)
        else:
            await conn.set_autocommit(True)  # client-side only while IDLE
            try:
                await conn.execute(statement)
            finally:
                await conn.set_autocommit(False)

    # -- checks --------------------------------------------------------------- #

    async def _check(self, conn: AsyncConnection[Any]) -> None:
        """The PRE_PING check: skipped for recently used connections."""
        if monotonic() - conn._rop_used_at < self._ping_interval:  # type: ignore[attr-defined]
            self.counters["checks_skipped"] += 1
            return
        await self.check_connection(conn)

    async def check_connection(self, conn: AsyncConnection[Any]) -> None:  # type: ignore[override]
        """One empty query, bounded by CHECK_TIMEOUT (also used by :meth:`check`)."""
        self.counters["checks"] += 1
        handle = interrupt_after(self._check_timeout, conn)
        try:
            if conn.autocommit:
                await conn.execute("")
            else:
                await conn.set_autocommit(True)
                try:
                    await conn.execute("")
                finally:
                    with contextlib.suppress(Exception):
                        await conn.set_autocommit(False)
        except Exception:
            self.counters["checks_failed"] += 1
            raise
        finally:
            handle.cancel()

    def flush_stale(self) -> None:
        """Check every idle connection in the background (once at a time)."""
        if self._flushing is None or self._flushing.done():
            self.counters["flushes"] += 1
            logger.info("readonly pool %r: dead connection found, checking idle ones", self.alias)
            self._flushing = asyncio.get_running_loop().create_task(self.check())

    async def _get_ready_connection(self, timeout: float | None) -> AsyncConnection[Any] | None:
        if len(self._pool) > 1:
            self._pool.rotate(1)  # last in, first out (psycopg takes the left end)
        return await super()._get_ready_connection(timeout)

    async def _getconn_with_check_loop(self, deadline: float) -> AsyncConnection[Any]:
        # psycopg sleeps 1, 2, 4 ... s after each failed check; here a failed
        # check flushes the idle connections and the loop goes on at once (the
        # next attempt gets a connection checked by the flush, or a new one).
        while True:
            conn = await self._getconn_unchecked(deadline - monotonic())
            try:
                await self._check_connection(conn)
            except Exception:  # noqa: BLE001 - a failed check: discard, flush, go on
                await self._putconn(conn, from_getconn=True)
                self.flush_stale()
                continue
            except BaseException:
                await self._putconn(conn, from_getconn=True)
                raise
            return conn

    # -- checkout ------------------------------------------------------------- #

    async def getconn(self, timeout: float | None = None) -> AsyncConnection[Any]:
        if breaker_open(self.alias):
            raise self._breaker_error()
        pool = self._pool
        if pool and not self._waiting and not self._closed:
            # Fast path: no await between the test and the pop, so no other
            # task can interleave; fairness holds because nobody waits.
            # Last in, first out: steady traffic keeps reusing the connections
            # it just used (inside the pre-ping window, so unpinged); the ones
            # it does not need stay idle at the other end, where the overflow
            # reaper closes them.
            conn = pool.pop()
            self._nconns_min = min(self._nconns_min, len(pool))
            self._stats["requests_num"] += 1
            conn._pool = self
            if self._check is None or monotonic() - conn._rop_used_at < self._ping_interval:  # type: ignore[attr-defined]
                if self._check is not None:
                    self.counters["checks_skipped"] += 1
                self._lent.add(conn)
                return conn
            try:
                await self.check_connection(conn)
            except Exception:  # noqa: BLE001 - a failed check: take the slow path
                await self._putconn(conn, from_getconn=True)
                self.flush_stale()
            except BaseException:
                await self._putconn(conn, from_getconn=True)
                raise
            else:
                self._lent.add(conn)
                return conn
        try:
            conn = await super().getconn(timeout)
        except PoolTimeout:
            raise self._timeout_error(timeout) from None
        self._lent.add(conn)
        return conn

    def _breaker_error(self) -> ReplicaUnavailable:
        from .health import health_report

        state = health_report().get(self.alias, {})
        status = state.get("status") or "down"
        detail = state.get("error") or {"down": "no answer", "promoted": "not a standby any more",
                                         "lagging": "beyond MAX_LAG_*"}.get(status, status)
        if app_settings().fallback == "fail":
            hint = ("FALLBACK is 'fail': failing fast while it is probed in the background. Set "
                    "READONLY_POOL['FALLBACK'] = 'primary' to read from the primary meanwhile.")
        else:
            hint = ("FALLBACK is 'primary': reads on the alias run on the primary meanwhile; this one "
                    "used the pool itself (not through the ORM or django_readonly_pool.run()).")
        return ReplicaUnavailable(
            f"read-only alias {self.alias!r}: the replica at {self.target.describe()} is {status} "
            f"({detail}); {hint}"
        )

    def _timeout_error(self, timeout: float | None) -> Exception:
        waited = self.timeout if timeout is None else timeout
        error = self._last_connect_error
        if error is not None and monotonic() - error[0] < max(_RECENT_ERROR_WINDOW, waited * 2):
            return ReplicaUnavailable(
                f"read-only alias {self.alias!r}: no connection to {self.target.describe()} "
                f"within {waited:g} s; the last attempt to connect failed: {error[1]}"
            )
        self.counters["checkout_timeouts"] += 1
        s = self.settings
        return PoolExhausted(
            f"read-only alias {self.alias!r}: connection pool exhausted, no connection became "
            f"free within {waited:g} s. All {self._nconns} of {s.max_size} connections "
            f"(POOL_SIZE={s.pool_size} + MAX_OVERFLOW={s.max_overflow}) were busy and "
            f"{len(self._waiting)} other requests were waiting. Raise "
            "FIDES__DATABASE__ASYNC_READONLY_DATABASE_POOL_SIZE or _MAX_OVERFLOW, look for "
            "slow queries, or tune _CHECKOUT_TIMEOUT (the wait)."
        )

    async def putconn(self, conn: AsyncConnection[Any]) -> None:
        self._lent.discard(conn)
        status = conn.pgconn.transaction_status
        if status in (_INTRANS, _INERROR):
            # AUTOCOMMIT false: end the read transaction here, quietly (psycopg
            # would log a warning for each one).
            try:
                await conn.rollback()
            except Exception:  # noqa: BLE001 - the pool discards it below
                pass
            status = conn.pgconn.transaction_status
        now = monotonic()
        conn._rop_used_at = now  # type: ignore[attr-defined]
        if status == _IDLE and conn._pool is self and not self._closed:
            if self._reset_sessions:
                # POOL_SKIP_ROLLBACK false: reset here, so that the connection is back
                # at once, for the next borrower (last in, first out), and a failure is
                # ours to handle, quietly: a connection not known clean is discarded.
                try:
                    await self._reset_session(conn)
                except Exception:  # noqa: BLE001
                    await conn.close()
                except BaseException:  # cancelled mid-reset
                    await conn.close()
                    await asyncio.shield(super().putconn(conn))
                    raise
            if (
                not conn.closed
                and not self._waiting
                and self._pool_full_event is None
                and conn._expire_at > now  # type: ignore[attr-defined]
                and conn._created_at > self._drained_at  # type: ignore[attr-defined]
            ):
                conn._pool = None
                if self._surplus():
                    await self._close_surplus(conn)
                    return
                self._pool.append(conn)
                return
        # Slow path (hand-over to a waiter, expiry, broken): psycopg's,
        # shielded so that a second cancellation cannot lose the connection.
        await asyncio.shield(super().putconn(conn))

    def _surplus(self) -> bool:
        """OVERFLOW_IDLE_TIMEOUT 0: a returned overflow connection is not kept
        when POOL_SIZE idle connections are already there (SQLAlchemy's rule)."""
        return (
            self.settings.overflow_idle_timeout == 0
            and self._nconns > self._min_size
            and len(self._pool) >= self._min_size
            and not self._waiting
        )

    async def _close_surplus(self, conn: AsyncConnection[Any]) -> None:
        self._nconns -= 1
        self.counters["overflow_closed"] += 1
        await self._close_connection(conn)

    async def _add_to_pool(self, conn: AsyncConnection[Any]) -> None:
        if not self._closed and self._surplus():
            conn._pool = None
            await self._close_surplus(conn)
            return
        await super()._add_to_pool(conn)

    # -- open, prewarm, close ------------------------------------------------ #

    def _start_initial_tasks(self) -> None:
        if self._skip_initial_fill:
            return  # prewarm connects them itself, in parallel
        super()._start_initial_tasks()

    async def _add_connection(self, attempt: AttemptWithBackoff | None, growing: bool = False) -> None:
        await super()._add_connection(
            attempt or _CappedBackoff(timeout=self.reconnect_timeout), growing=growing
        )
        if growing and self._nconns > self._min_size:
            logger.info("readonly pool %r: grew to %d connections (%d waiting)", self.alias,
                        self._nconns, len(self._waiting))

    async def start(self) -> None:
        """Open the pool; with PREWARM, wait until every connection is verified."""
        started = monotonic()
        if not self.settings.prewarm:
            await self.open(wait=False)
            self._after_open()
            return
        self._skip_initial_fill = True
        await self.open(wait=False)
        self._prewarming = True
        try:
            await self._prewarm(started)
        except BaseException:
            await self.close(timeout=1.0)
            raise
        finally:
            self._prewarming = False
        self._after_open()

    def _after_open(self) -> None:
        self.opened_at = time.time()
        if self.settings.overflow_idle_timeout > 0 and self.settings.max_overflow > 0:
            self._reaper = asyncio.get_running_loop().create_task(
                self._reap_overflow(), name=f"{self.name}-overflow-reaper"
            )

    async def _prewarm_one(self) -> AsyncConnection[Any]:
        # Verified by its configuration's round trip to the server (through a pooler too).
        return await self._connect()

    async def _prewarm(self, started: float) -> None:
        n = self._min_size
        logger.info("readonly pool %r: prewarming %d connections to %s", self.alias, n,
                    self.target.describe())
        tasks = [asyncio.ensure_future(self._prewarm_one()) for _ in range(n)]
        budget = max(0.05, self.settings.prewarm_timeout - (monotonic() - started))
        _, pending = await asyncio.wait(tasks, timeout=budget)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
        conns: list[AsyncConnection[Any]] = []
        errors: list[BaseException] = []
        for task in tasks:
            if task.cancelled():
                continue
            exc = task.exception()
            if exc is None:
                conns.append(task.result())
            else:
                errors.append(exc)
        elapsed = monotonic() - started
        if len(conns) == n:
            for conn in conns:
                conn._rop_used_at = monotonic()  # type: ignore[attr-defined]
                await self._add_to_pool(conn)
            self.prewarmed = True
            self.prewarm_seconds = elapsed
            logger.info("readonly pool %r: %d connections prewarmed in %.3f s", self.alias, n, elapsed)
            return
        for conn in conns:
            await conn.close()
        if errors:
            cause = self.session.scrub(str(errors[0]).strip()) or type(errors[0]).__name__
        else:
            cause = f"the server did not accept {n} connections in time"
        message = (
            f"prewarm of the read-only pool {self.alias!r} failed: {len(conns)} of {n} connections "
            f"to {self.target.describe()} ready after {elapsed:.1f} s "
            f"(FIDES__DATABASE__ASYNC_READONLY_DATABASE_PREWARM_TIMEOUT="
            f"{self.settings.prewarm_timeout:g}); cause: {cause}"
        )
        raise PrewarmFailed(message)  # reported by whoever opened the pool (logged on first use)

    async def _reap_overflow(self) -> None:
        """Close overflow connections that stayed idle for a whole period."""
        period = self.settings.overflow_idle_timeout
        while not self._closed:
            self._nconns_min = len(self._pool)
            await asyncio.sleep(period)
            surplus = min(self._nconns_min, self._nconns - self._min_size, len(self._pool))
            to_close = []
            for _ in range(max(0, surplus)):
                to_close.append(self._pool.popleft())  # the longest idle
                self._nconns -= 1
            for conn in to_close:
                self.counters["overflow_closed"] += 1
                await self._close_connection(conn)
            if to_close:
                logger.info("readonly pool %r: closed %d idle overflow connections (size %d)",
                            self.alias, len(to_close), self._nconns)

    async def close(self, timeout: float = 5.0) -> None:
        for task in (self._reaper, self._flushing):
            if task is not None and not task.done():
                task.cancel()
        if self._closed:
            return
        tasks = [*self._workers, *([self._sched_runner] if self._sched_runner else [])]
        if all(not task.done() for task in tasks):
            await super().close(timeout)
        else:
            await self.close_at_loop_end()

    async def fail_waiting(self) -> None:
        """The replica is down: fail the clients waiting for a connection now, and end
        the statements in flight (on a frozen network they would wait for ever)."""
        waiting = list(self._waiting)
        self._waiting.clear()
        for position in waiting:
            await position.fail(self._breaker_error())
        for conn in list(self._lent):
            conn._rop_aborted = True  # type: ignore[attr-defined]
            with contextlib.suppress(psycopg.Error):  # already closed: nothing in flight
                shutdown_socket(conn.pgconn.socket)

    def stop_workers(self) -> None:
        """Ask psycopg's workers to end (without waiting)."""
        for _ in self._workers:
            self.run_task(StopWorker(self))

    async def close_at_loop_end(self) -> None:
        """Close everything at once: the loop's other tasks are finished.

        psycopg's ``close()`` waits for its workers, which a loop shutting down
        (``asyncio.run``, ``async_to_sync``) has already cancelled; this closes
        every connection the pool opened, also one a worker was resetting.
        """
        self._closed = True
        for task in (self._reaper, self._flushing, self._sched_runner, *self._workers):
            if task is not None and not task.done():
                task.cancel()
        self._workers, self._sched_runner = [], None
        waiting = list(self._waiting)
        self._pool.clear()
        self._waiting.clear()
        for conn in list(self._connections):
            if not conn.closed:
                await self._close_connection(conn)
        for position in waiting:
            await position.fail(PoolClosed(f"the pool {self.name!r} is closed"))

    # -- statements --------------------------------------------------------- #

    async def execute(
        self, query: Any, params: Sequence[Any] | None
    ) -> tuple[psycopg.AsyncCursor[Any], list[Any] | None]:
        """Run one statement on a borrowed connection and return it at once.

        Returns the psycopg cursor (its result, description and status stay
        readable after the connection went back) and the rows, or None when the
        statement returned no result set.
        """
        self.counters["statements"] += 1
        retried = False
        while True:
            # A retry waits no longer than a check would: it is for a stale connection.
            conn = await self.getconn(min(self.timeout, self._check_timeout) if retried else None)
            pinged = monotonic() - conn._rop_used_at >= self._ping_interval  # type: ignore[attr-defined]
            timer = None
            try:
                cur = conn.cursor()
                if self._query_timeout:
                    timer = interrupt_after(self._query_timeout, conn)
                await cur.execute(query, params)
                res = cur.pgresult
                # What makes psycopg's cursor.description not None, without
                # building the Column objects (done on demand by the caller).
                if res is not None and (res.nfields or res.status == _TUPLES_OK):
                    return cur, await cur.fetchall()
                return cur, None
            except psycopg.OperationalError as exc:
                if getattr(conn, "_rop_aborted", False):
                    raise self._breaker_error() from None  # the replica was found down meanwhile
                if timer is not None and timer.when() <= asyncio.get_running_loop().time():
                    self.counters["query_timeouts"] += 1
                    raise QueryTimeout(
                        f"read-only alias {self.alias!r}: statement exceeded "
                        f"FIDES__DATABASE__ASYNC_READONLY_DATABASE_QUERY_TIMEOUT="
                        f"{self._query_timeout:g} s; its connection was closed"
                    ) from None
                if conn.pgconn.status == _BAD:
                    report_failure(self.alias, str(exc))
                if (conn.pgconn.status == _BAD and exc.sqlstate in _LOST_WHILE_IDLE and not retried
                        and (not pinged or self._check is None)):
                    # The connection died while idle and was not pinged (used
                    # recently): flush its peers and retry this read once.
                    retried = True
                    self.counters["retries"] += 1
                    self.flush_stale()
                    continue
                raise exc.with_traceback(None) from None
            finally:
                if timer is not None:
                    timer.cancel()
                await self.putconn(conn)

    def get_stats(self) -> dict[str, int]:
        stats = super().get_stats()
        stats.update(self.counters)
        stats["in_use"] = self.in_use
        return stats


# --------------------------------------------------------------------------- #
# The sync twin (Django's built-in pool for sync code)
# --------------------------------------------------------------------------- #


class SyncReadPool(ConnectionPool):  # type: ignore[type-arg]
    """Django's sync psycopg pool with the read pool's check semantics.

    psycopg's sync pool sleeps 1, 2, 4 ... s between failed checks, so after a
    replica restart a request gives up after a handful of dead connections.
    Here a failed check flushes the idle connections in the background and the
    checkout goes on at once; checks are skipped for connections used within
    ``PRE_PING_INTERVAL`` and bounded by ``CHECK_TIMEOUT``; reconnect attempts
    are at most 2 s apart; the most recently returned connection is handed out
    first (LIFO), as by the async pool.
    """

    def __init__(self, *args: Any, session: SessionSetup, reset_sessions: bool, pre_ping: bool = True,
                 ping_interval: float = 0.5, check_timeout: float = 5.0, alias: str | None = None,
                 fallback: Callable[[], ConnectionPool] | None = None, **kwargs: Any) -> None:
        self._ping_interval = ping_interval
        self._check_timeout = check_timeout
        self._flushing: threading.Thread | None = None
        self.session = session
        self._reset_sessions = reset_sessions
        self.alias = alias  # the replica's alias (its health decides the fallback)
        self._make_fallback = fallback
        self._fallback: ConnectionPool | None = None
        self._fallback_lock = threading.Lock()
        super().__init__(*args, check=self.check_connection if pre_ping else None,
                         configure=self._configure_session, **kwargs)

    def getconn(self, timeout: float | None = None) -> Any:
        """A connection, or, the replica being unavailable (``FALLBACK="primary"``), one of
        the primary (Django returns it to its own pool): no sync read fails because the
        replica is down. While waiting, the replica's health is watched: a ``down``
        verdict ends the wait at once."""
        if self.alias is None:
            return super().getconn(timeout)
        budget = self.timeout if timeout is None else timeout
        deadline = monotonic() + budget
        reported = False
        while True:
            if breaker_open(self.alias):
                return self._unavailable(timeout)
            try:
                return super().getconn(max(0.001, min(_WATCH_SLICE, deadline - monotonic())))
            except PoolTimeout:
                if monotonic() >= deadline:
                    raise PoolTimeout(f"couldn't get a connection after {budget:.2f} sec") from None
                if not reported:  # no connection at once: let the probe look at the replica
                    report_failure(self.alias, "waiting for a connection")
                    reported = True

    def _unavailable(self, timeout: float | None) -> Any:
        from .health import health_report

        if self._make_fallback is not None and app_settings().fallback == "primary":
            with self._fallback_lock:
                if self._fallback is None:
                    self._fallback = self._make_fallback()
                    self._fallback.open()
            return self._fallback.getconn(timeout)
        state = health_report().get(self.alias or "", {})
        raise ReplicaUnavailable(
            f"read-only alias {self.alias!r}: the replica is {state.get('status') or 'down'} "
            f"({state.get('error') or 'no answer'}); FALLBACK is 'fail': failing fast while it is probed "
            "in the background. Set READONLY_POOL['FALLBACK'] = 'primary' to read from the primary meanwhile."
        )

    def close(self, timeout: float = 5.0) -> None:
        if self._fallback is not None:
            self._fallback.close(timeout)
        super().close(timeout)

    def _configure_session(self, conn: Any) -> None:
        """Django's session settings (time zone, role), read-only when direct."""
        tz = conn.info.parameter_status("TimeZone")
        conn.execute(self.session.configure_sql(tz, conn.info.backend_pid))  # autocommit: see the backend
        conn._rop_reset_sql = self.session.reset_sql(tz, conn.info.backend_pid)
        conn._rop_used_at = monotonic()  # verified by configuring (and marks it as this package's)

    def _reset_session(self, conn: Any) -> None:
        """POOL_SKIP_ROLLBACK false: back to a clean, configured session (in the
        returning thread, so the connection is back at once, for the next
        borrower: last in, first out)."""
        if conn.pgconn.transaction_status != _IDLE:
            conn.rollback()
        if not conn.autocommit:
            conn.autocommit = True  # client-side only while IDLE; Django sets it on checkout
        conn.execute(conn._rop_reset_sql)

    def _get_ready_connection(self, timeout: float | None) -> Any:
        if len(self._pool) > 1:
            self._pool.rotate(1)  # last in, first out (psycopg takes the left end)
        return super()._get_ready_connection(timeout)

    def _getconn_with_check_loop(self, deadline: float) -> Any:
        while True:
            conn = self._getconn_unchecked(deadline - monotonic())
            if self._check is None or monotonic() - getattr(conn, "_rop_used_at", 0.0) < self._ping_interval:
                return conn
            try:
                self._check_connection(conn)
            except Exception:  # noqa: BLE001 - a dead connection: flush, go on
                self._putconn(conn, from_getconn=True)
                self.flush_stale()
                continue
            except BaseException:
                self._putconn(conn, from_getconn=True)
                raise
            return conn

    def check_connection(self, conn: Any) -> None:  # type: ignore[override]
        timer = threading.Timer(self._check_timeout, shutdown_socket, (conn.pgconn.socket,))
        timer.daemon = True
        timer.start()
        try:
            ConnectionPool.check_connection(conn)
        finally:
            timer.cancel()

    def flush_stale(self) -> None:
        if self._flushing is None or not self._flushing.is_alive():
            self._flushing = threading.Thread(target=self.check, name=f"{self.name}-flush", daemon=True)
            self._flushing.start()

    def putconn(self, conn: Any) -> None:
        if self._reset_sessions and not conn.closed and conn.pgconn.status != _BAD:
            try:
                self._reset_session(conn)
            except psycopg.Error:
                conn.close()  # not known clean: psycopg discards it and opens another
        conn._rop_used_at = monotonic()
        super().putconn(conn)

    def _add_connection(self, attempt: AttemptWithBackoff | None, growing: bool = False) -> None:
        super()._add_connection(attempt or _CappedBackoff(timeout=self.reconnect_timeout), growing=growing)


# --------------------------------------------------------------------------- #
# Registry: one pool per (event loop, alias)
# --------------------------------------------------------------------------- #

PoolFactory = Callable[[str], ReadPool]


class _LoopPools:
    __slots__ = ("loop", "opening", "pools", "sentinel")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pools: dict[str, ReadPool] = {}
        self.opening: dict[str, asyncio.Future[ReadPool]] = {}
        self.sentinel: asyncio.Task[None] | None = None


class PoolRegistry:
    """Pools by event loop and alias, opened lazily or by :func:`open_pools`."""

    def __init__(self) -> None:
        self._loops: dict[asyncio.AbstractEventLoop, _LoopPools] = {}
        self._last: _LoopPools | None = None
        self._pid = os.getpid()
        self._graveyard: list[Any] = []
        self.factory: PoolFactory | None = None

    def _for_loop(self, loop: asyncio.AbstractEventLoop) -> _LoopPools:
        last = self._last
        if last is not None and last.loop is loop:
            return last
        if self._pid != os.getpid():
            self._after_fork()
        lp = self._loops.get(loop)
        if lp is None:
            for stale in [other for other in list(self._loops) if other.is_closed()]:
                del self._loops[stale]
            lp = self._loops[loop] = _LoopPools(loop)
            lp.sentinel = loop.create_task(self._close_at_shutdown(lp), name="readonly-pool-closer")
        self._last = lp
        return lp

    def ready(self, alias: str) -> ReadPool | None:
        """The open pool of *alias* on the running loop, or None (sync, cheap)."""
        lp = self._for_loop(asyncio.get_running_loop())
        return lp.pools.get(alias)

    async def get(self, alias: str) -> ReadPool:
        """The pool of *alias* on the running loop, opening it if needed."""
        lp = self._for_loop(asyncio.get_running_loop())
        pool = lp.pools.get(alias)
        if pool is not None:
            return pool
        future = lp.opening.get(alias)
        if future is None:
            future = lp.loop.create_future()
            lp.opening[alias] = future
            try:
                assert self.factory is not None, "django_readonly_pool app not ready"
                pool = self.factory(alias)
                await pool.start()
            except BaseException as exc:
                del lp.opening[alias]
                future.set_exception(exc)
                future.exception()  # retrieved: no "never retrieved" warning
                raise
            lp.pools[alias] = pool
            del lp.opening[alias]
            future.set_result(pool)
            return pool
        return await asyncio.shield(future)

    def pools(self, loop: asyncio.AbstractEventLoop | None = None) -> dict[str, ReadPool]:
        """The open pools of *loop* (default: the running loop)."""
        loop = loop or asyncio.get_running_loop()
        lp = self._loops.get(loop)
        return dict(lp.pools) if lp else {}

    def all_pools(self) -> list[ReadPool]:
        return [p for lp in list(self._loops.values()) for p in lp.pools.values()]

    async def close(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        loop = loop or asyncio.get_running_loop()
        lp = self._loops.pop(loop, None)
        if self._last is lp:
            self._last = None
        if lp is None:
            return
        if lp.sentinel is not None and lp.sentinel is not asyncio.current_task():
            lp.sentinel.cancel()
        await _close_all(lp)

    async def _close_at_shutdown(self, lp: _LoopPools) -> None:
        """Sleeps until the loop cancels its tasks, then closes the loop's pools."""
        try:
            await asyncio.get_running_loop().create_future()
        except asyncio.CancelledError:
            if self._loops.get(lp.loop) is lp:
                del self._loops[lp.loop]
                if self._last is lp:
                    self._last = None
            # The other tasks (clients, psycopg's workers) were cancelled too:
            # let them unwind and return their connections first. A psycopg
            # worker cancelled inside a maintenance task swallows the
            # cancellation and waits for more work: tell it to stop.
            for pool in lp.pools.values():
                pool.stop_workers()
            current = asyncio.current_task()
            others = [t for t in asyncio.all_tasks() if t is not current and t.cancelling()]
            if others:
                await asyncio.wait(others, timeout=10.0)
            pools, lp.pools = list(lp.pools.values()), {}
            for pool in pools:
                with contextlib.suppress(Exception):
                    await pool.close_at_loop_end()
            raise

    def replica_down(self, alias: str, message: str) -> None:
        """Health callback (any thread): fail the waiters of *alias*'s pools."""
        for loop, lp in list(self._loops.items()):
            pool = lp.pools.get(alias)
            if pool is not None and not loop.is_closed():
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(_schedule_fail_waiting, pool)

    def _after_fork(self) -> None:
        # A forked child must not use (or finalize) its parent's sockets: keep
        # the objects alive, unused, and start afresh.
        self._graveyard.append(self._loops)
        self._loops = {}
        self._last = None
        self._pid = os.getpid()


_background: set[asyncio.Task[None]] = set()


def _schedule_fail_waiting(pool: ReadPool) -> None:
    task = asyncio.ensure_future(pool.fail_waiting())
    _background.add(task)  # keep a reference until it is done
    task.add_done_callback(_background.discard)


async def _close_all(lp: _LoopPools) -> None:
    pools, lp.pools = list(lp.pools.values()), {}
    for pool in pools:
        with contextlib.suppress(Exception):
            await pool.close(timeout=2.0)


registry: Final = PoolRegistry()
os.register_at_fork(after_in_child=registry._after_fork)
_health.on_down.append(registry.replica_down)


async def open_pools(aliases: Sequence[str] | None = None) -> dict[str, ReadPool]:
    """Open (and prewarm, as configured) the pools of *aliases* on this loop.

    Default: every alias whose ENGINE is ``django_readonly_pool.backend``.
    Raises :class:`~django_readonly_pool.errors.PrewarmFailed` when prewarm fails.
    """
    from .orm import pool_aliases

    names = list(aliases) if aliases is not None else pool_aliases()
    opened = await asyncio.gather(*(registry.get(a) for a in names))
    return dict(zip(names, opened, strict=True))


async def close_pools() -> None:
    """Close every pool of the running loop (their connections close too)."""
    await registry.close()

"""The read pool: psycopg's ``AsyncConnectionPool`` with the guide's semantics.

:class:`ReadPool` holds one psycopg pool (composition: none of its names lands
in psycopg's namespace) and drives it through psycopg's public API, plus the
few internals :mod:`._psycopg` documents:

* **PREWARM** (:mod:`.prewarm`): all ``POOL_SIZE`` connections opened in
  parallel and verified within ``PREWARM_TIMEOUT``, or
  :class:`~django_readonly_pool.errors.PrewarmFailed` naming the server and the cause.
* **POOL_SKIP_ROLLBACK** true: nothing is sent on return (the guard refuses the
  statements that would leave session state). False: one round trip clears the
  session completely and configures it again, on return, so the connection is
  back at once. An open transaction (``AUTOCOMMIT`` false) is always rolled back.
* **PRE_PING**: psycopg's ``check`` callback, skipped for connections used less
  than ``PRE_PING_INTERVAL`` ago, bounded by ``CHECK_TIMEOUT``; the first dead
  connection found flushes the idle ones (psycopg's ``check()``) in the
  background. A read whose unpinged connection turns out dead is retried once.
* **MAX_OVERFLOW** connections close once idle for ``OVERFLOW_IDLE_TIMEOUT``.
* Checkout and return take a lock-free fast path when a connection is ready and
  nobody waits, last in, first out; past saturation, first come first served (:mod:`.handoff`).

:mod:`.registry` keeps one pool per event loop and alias.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from time import monotonic
from typing import Any, Final

import psycopg
from psycopg.pq import TransactionStatus
from psycopg_pool import PoolClosed, PoolTimeout

from django_readonly_pool.conf import ConnectionTarget, PoolSettings
from django_readonly_pool.errors import PoolExhausted, ReplicaUnavailable
from django_readonly_pool.events import breaker_open, unusable
from django_readonly_pool.interrupt import shutdown_socket

from . import _psycopg, messages, statements
from .connections import Configure, ConnectLog, PoolConnection, connection_class, reset_session
from .handoff import RETRY, Waiters
from .policy import due_for_ping
from .prewarm import open_prewarmed
from .session import SessionSetup

__all__ = ["COUNTERS", "ReadPool"]

logger = logging.getLogger("django_readonly_pool")

_IDLE: Final = TransactionStatus.IDLE
_OPEN_TRANSACTION: Final = (TransactionStatus.INTRANS, TransactionStatus.INERROR)
_MAX_WORKERS: Final = 64
COUNTERS: Final = ("checks", "checks_skipped", "checks_failed", "flushes", "retries",
                   "query_timeouts", "checkout_timeouts", "overflow_closed", "statements")


class ReadPool:
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
        self.prewarmed = False
        self.prewarm_seconds: float | None = None
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self._pre_ping = settings.pre_ping
        self._ping_interval = settings.pre_ping_interval
        self._check_timeout = settings.check_timeout
        self._query_timeout = settings.query_timeout
        self._reset_sessions = not settings.pool_skip_rollback
        self._lent: set[PoolConnection] = set()  # held by clients right now
        self._waiters = Waiters()  # past saturation: a returned connection goes to the first
        self.connects = ConnectLog(alias, target, session.scrub)  # its connections, its last failure
        self._flushing: asyncio.Task[None] | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._configure = Configure(session, reset_sessions=self._reset_sessions, postgres_types=postgres_types,
                                    on_failure=self.connects.connect_failed, on_verified=self.connects.verified,
                                    on_server_version=on_server_version)
        self._pool = _psycopg.AsyncInternals(
            kwargs=connect_kwargs,
            connection_class=connection_class(self.connects),
            min_size=settings.pool_size,
            max_size=settings.max_size,
            open=False,
            configure=self._configure,
            check=self._check if settings.pre_ping else None,
            reset=None,  # POOL_SKIP_ROLLBACK false: putconn() resets inline (see there)
            name=f"readonly-pool[{alias}]",
            timeout=settings.checkout_timeout,
            max_lifetime=settings.max_lifetime,
            max_idle=86_400.0,  # psycopg's shrinking (one per max_idle) gives way to the overflow reaper
            reconnect_timeout=86_400.0,
            num_workers=max(3, min(settings.pool_size, _MAX_WORKERS)),  # prewarm connects in parallel
            failed_check=self._flush,
            check_timeout=settings.check_timeout,
            close_surplus=settings.overflow_idle_timeout == 0 and settings.max_overflow > 0,
            surplus_closed=self._count_overflow_closed,
            added=self._waiters.wake,  # a connection psycopg put in its idle list: a waiter looks again
        )

    # -- what it is ------------------------------------------------------------ #

    @property
    def name(self) -> str:
        return str(self._pool.name)

    @property
    def closed(self) -> bool:
        return self._pool.closed

    @property
    def timeout(self) -> float:
        return self._pool.timeout

    @property
    def min_size(self) -> int:
        return self._pool.min_size

    @property
    def max_size(self) -> int:
        return self._pool.max_size

    @property
    def server_version(self) -> int | None:
        return self._configure.server_version

    @property
    def in_use(self) -> int:
        """Connections held by clients right now."""
        return len(self._lent)

    def __repr__(self) -> str:
        stats = self._pool.get_stats()
        return (f"<ReadPool {self.alias!r} {self.target.describe()} size={stats.get('pool_size', 0)}"
                f" available={stats.get('pool_available', 0)} closed={self.closed}>")

    async def wait(self, timeout: float = 30.0) -> None:
        """Wait until ``POOL_SIZE`` connections are ready (psycopg's ``wait()``: past
        *timeout* it closes the pool and raises ``PoolTimeout``)."""
        await self._pool.wait(timeout)

    def get_stats(self) -> dict[str, int]:
        """psycopg's figures (the hand-over's clients counted in its keys) and ours."""
        stats = self._waiters.counted_in(self._pool.get_stats())
        stats.update(self.counters, in_use=len(self._lent))
        return stats

    def pop_stats(self) -> dict[str, int]:
        """Like psycopg's: the counters start again from 0."""
        stats = self._waiters.counted_in(self._pool.pop_stats(), reset=True)
        stats.update(self.counters, in_use=len(self._lent))
        self.counters = dict.fromkeys(COUNTERS, 0)
        return stats

    # -- checks ------------------------------------------------------------------ #

    async def _check(self, conn: PoolConnection) -> None:
        """psycopg's ``check`` callback (its slow path): the PRE_PING window, then a ping."""
        if not due_for_ping(conn, self._ping_interval):
            self.counters["checks_skipped"] += 1
            conn._rop_pinged = False
            return
        await self._ping(conn)
        conn._rop_pinged = True

    async def _ping(self, conn: PoolConnection) -> None:
        self.counters["checks"] += 1
        try:
            await self._pool.check_connection(conn)
        except Exception:
            self.counters["checks_failed"] += 1
            raise

    def _flush(self) -> None:
        """A dead connection was found: check every idle one in the background (once at a time)."""
        if self._flushing is None or self._flushing.done():
            self.counters["flushes"] += 1
            logger.info("readonly pool %r: dead connection found, checking idle ones", self.alias)
            self._flushing = asyncio.get_running_loop().create_task(self._pool.check())

    async def check(self) -> None:
        """Check every idle connection now (psycopg's ``check()``, each bounded by CHECK_TIMEOUT)."""
        await self._pool.check()

    def _count_overflow_closed(self, count: int = 1) -> None:
        self.counters["overflow_closed"] += count

    # -- checkout and return ------------------------------------------------------- #

    async def getconn(self, timeout: float | None = None) -> PoolConnection:
        if unusable and breaker_open(self.alias):
            raise self._breaker_error()
        conn: PoolConnection | None = _psycopg.take_idle(self._pool)
        if conn is not None:
            if not self._pre_ping:
                self._lent.add(conn)
                return conn
            if not due_for_ping(conn, self._ping_interval):
                self.counters["checks_skipped"] += 1
                conn._rop_pinged = False
                self._lent.add(conn)
                return conn
            try:
                await self._ping(conn)
            except Exception:  # noqa: BLE001 - a dead connection: discard it, flush, take the slow path
                await self._pool.putconn(conn)
                self._flush()
            except BaseException:
                await self._pool.putconn(conn)
                raise
            else:
                conn._rop_pinged = True
                self._lent.add(conn)
                return conn
        wait = self.timeout if timeout is None else timeout
        if self._lent and _psycopg.saturated(self._pool):  # a connection of ours will come back
            started = monotonic()
            try:
                handed = await self._waiters.wait(wait, self.putconn)
            except TimeoutError:
                raise self._timeout_error(timeout) from None
            if handed is not RETRY:  # it has just served a read: no ping due
                handed._rop_pinged = False
                self._lent.add(handed)
                return handed  # type: ignore[no-any-return]
            wait = max(0.0, wait - (monotonic() - started))
        try:
            taken: PoolConnection = await self._pool.getconn(wait)
        except PoolTimeout:
            raise self._timeout_error(timeout) from None
        self._lent.add(taken)
        return taken

    async def putconn(self, conn: PoolConnection) -> None:
        # *conn* counts as lent until it is handed on: a client arriving during the
        # rollback or the reset sees a connection of ours coming back and waits its turn
        # (an empty lent set sent it to psycopg's queue, ahead of earlier clients).
        status = conn.pgconn.transaction_status
        if status in _OPEN_TRANSACTION:
            # AUTOCOMMIT false: end the read transaction here, quietly (psycopg
            # would log a warning for each one).
            try:
                await conn.rollback()
            except Exception:  # noqa: BLE001 - the pool discards it below
                pass
            except BaseException:  # cancelled mid-rollback: psycopg takes it (and discards it)
                await self._to_psycopg(conn)
                raise
            status = conn.pgconn.transaction_status
        now = monotonic()
        conn._rop_used_at = now  # policy.mark_used(), inline: every read returns a connection
        if status == _IDLE and self._reset_sessions and not self._pool.closed:
            # POOL_SKIP_ROLLBACK false: reset here, so that the connection is back
            # at once, for the next borrower (last in, first out), and a failure is
            # ours to handle, quietly: a connection not known clean is discarded.
            try:
                await reset_session(conn)
            except Exception:  # noqa: BLE001
                await conn.close()
            except BaseException:  # cancelled mid-reset
                await conn.close()
                await self._to_psycopg(conn)
                raise
        self._lent.discard(conn)
        # IDLE: open (a failed reset closed it, then it is not IDLE any more)
        reusable = conn.pgconn.transaction_status == _IDLE and _psycopg.reusable(self._pool, conn, now)
        if reusable and not _psycopg.waiting(self._pool):  # psycopg's waiters came first: theirs
            if self._waiters and self._waiters.hand(conn):
                self._lent.add(conn)  # lent on at once: arrivals meanwhile see the pool saturated
                return
            if _psycopg.give_back(self._pool, conn, now):
                return
        # Slow path (psycopg's waiters, expiry, broken), shielded: a second cancel loses nothing.
        await asyncio.shield(self._pool.putconn(conn))

    async def _to_psycopg(self, conn: PoolConnection) -> None:
        self._lent.discard(conn)
        await asyncio.shield(self._pool.putconn(conn))

    def _breaker_error(self) -> ReplicaUnavailable:
        return messages.replica_unavailable(self.alias, self.target)

    def _timeout_error(self, timeout: float | None) -> Exception:
        stats = self.get_stats()  # the hand-over's waiting clients included
        error = messages.checkout_failed(
            self.alias, self.target, self.settings, waited=self.timeout if timeout is None else timeout,
            last_connect_error=self.connects.last_error, now=monotonic(), size=stats.get("pool_size", 0),
            waiting=stats.get("requests_waiting", 0))
        if isinstance(error, PoolExhausted):
            self.counters["checkout_timeouts"] += 1
        return error

    # -- statements (pool/statements.py) --------------------------------------------- #

    execute = statements.execute

    # -- open, prewarm, close --------------------------------------------------------- #

    async def start(self) -> None:
        """Open the pool; with PREWARM, return once every connection is verified."""
        s = self.settings
        try:
            if s.prewarm:
                self.prewarm_seconds = await open_prewarmed(self._pool, self.connects, alias=self.alias,
                                                            target=self.target, settings=s, scrub=self.session.scrub)
                self.prewarmed = True
            else:
                await self._pool.open(wait=False)
        except BaseException:
            await self.close_at_loop_end()
            raise
        if s.overflow_idle_timeout > 0 and s.max_overflow > 0:
            self._reaper = asyncio.get_running_loop().create_task(
                _psycopg.reap_overflow(self._pool, s.overflow_idle_timeout, self._reaped),
                name=f"{self.name}-overflow-reaper",
            )

    def _reaped(self, count: int) -> None:
        self.counters["overflow_closed"] += count
        logger.info("readonly pool %r: closed %d idle overflow connections (size %d)",
                    self.alias, count, self._pool.get_stats().get("pool_size", 0))

    async def close(self, timeout: float = 5.0) -> None:
        self._cancel_tasks()
        if self._pool.closed:
            return
        if _psycopg.running(self._pool):
            await self._pool.close(timeout)
        else:
            await self.close_at_loop_end()

    def _cancel_tasks(self) -> None:
        self._waiters.fail(lambda: PoolClosed(f"the pool {self.name!r} is closed"))
        for task in (self._reaper, self._flushing):
            if task is not None and not task.done():
                task.cancel()

    async def fail_waiting(self) -> None:
        """The replica is down: fail the clients waiting for a connection now, and end
        the statements in flight (on a frozen network they would wait for ever)."""
        self._waiters.fail(self._breaker_error)
        await _psycopg.fail_waiting(self._pool, self._breaker_error)
        for conn in list(self._lent):
            conn._rop_aborted = True
            with contextlib.suppress(psycopg.Error):  # already closed: nothing in flight
                shutdown_socket(conn.pgconn.socket)

    def stop_workers(self) -> None:
        """Ask psycopg's workers to end, without waiting (the loop is shutting down)."""
        _psycopg.stop_workers(self._pool)

    async def close_at_loop_end(self) -> None:
        """Close everything at once: the loop's other tasks are finished (or stuck in a
        connect that nobody waits for any more)."""
        self._cancel_tasks()
        await _psycopg.close_now(self._pool, self.connects.connections, PoolClosed(f"the pool {self.name!r} is closed"))

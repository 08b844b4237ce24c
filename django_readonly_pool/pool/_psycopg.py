"""What psycopg_pool has no public hook for: the only module that touches its private names.

Written against psycopg_pool 3.3 (``tox -e psycopg-pool-latest`` runs the suite
against the newest release, so a change upstream shows at once). Everything
else of the pools goes through psycopg_pool's public API: ``connection_class``,
``kwargs``, ``configure``, ``check``, ``num_workers``, ``open()``, ``wait()``,
``check()``, ``get_stats()``/``pop_stats()``. Each piece says why it is here;
``docs/psycopg-pool.md`` proposes the upstream hook that would remove it.

1. **Last in, first out.** psycopg hands out the connection idle longest. With
   a pool larger than one ``PRE_PING_INTERVAL``'s traffic, every checkout then
   meets a connection past the ping window and pings it (measured: a one-row
   read 1.27 ms instead of 0.51). :func:`take_idle` pops the most recently
   returned one; the slow path is rotated the same way.
2. **The hot path.** psycopg's ``getconn()`` + ``putconn()`` cost 9.7 µs a read
   here (its lock, logging and bookkeeping), the deque operations 0.1 µs.
   :func:`take_idle` and :func:`give_back` do the latter, and only when no
   client waits (asyncio code between two awaits cannot interleave), keeping
   psycopg's statistics as its own methods would.
3. **No sleep after a failed check.** psycopg sleeps 1, 2, 4 ... s after each
   failed check, so after a replica restart a request gives up after a handful
   of dead connections; here a failed check calls ``_rop_failed_check`` (a
   flush of the idle connections) and the loop goes on at once.
4. **A bounded check.** psycopg's ``check_connection()`` (used by ``check()``)
   waits for the server as long as a frozen network stays frozen; here it is
   bounded by ``CHECK_TIMEOUT``.
5. **A capped reconnect back-off**, so that a returning replica is used at once
   (psycopg's grows without bound until ``reconnect_timeout``).
6. **Failing the waiters** when the health monitor finds the replica down
   (:func:`fail_waiting`): they would wait for the whole checkout timeout.
7. **Closing at once** (:func:`stop_workers`, :func:`close_now`): psycopg's
   ``close()`` waits for its workers, which a loop shutting down
   (``asyncio.run``, ``async_to_sync``) has already cancelled, and a prewarm
   past its deadline must not wait for connects stuck on a frozen network.
8. **Hand-over past saturation** (:func:`saturated`, :func:`reusable`): when every
   connection is lent, clients wait in ``handoff.Waiters`` (a future each) rather
   than in psycopg's queue (a ``Condition``, a lock, a timer, a task per return):
   measured, psycopg's queue took W1 at 512 tasks to 0.45x its peak.
9. **Shrinking at once**: psycopg closes one idle connection per ``max_idle``;
   the guide's overflow connections go once unused (:func:`reap_overflow`, and
   ``_rop_close_surplus`` for ``OVERFLOW_IDLE_TIMEOUT`` 0).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable
from time import monotonic  # psycopg_pool's deadlines
from typing import Any

from psycopg_pool import AsyncConnectionPool, ConnectionPool
from psycopg_pool.base import AttemptWithBackoff
from psycopg_pool.pool_async import StopWorker

from django_readonly_pool.interrupt import interrupt_after, shutdown_socket

from .policy import RECONNECT_DELAY_CAP

__all__ = [
    "AsyncInternals",
    "SyncInternals",
    "close_now",
    "fail_waiting",
    "give_back",
    "reap_overflow",
    "reusable",
    "running",
    "saturated",
    "stop_workers",
    "take_idle",
    "waiting",
]


def _no_op() -> None:
    return None


class _CappedBackoff(AttemptWithBackoff):
    def update_delay(self, now: float) -> None:
        super().update_delay(now)
        self.delay = min(self.delay, RECONNECT_DELAY_CAP)


class AsyncInternals(AsyncConnectionPool[Any]):
    """psycopg's async pool with the overrides 1, 3, 4, 5 and 8 above."""

    def __init__(self, *, failed_check: Callable[[], None], check_timeout: float, close_surplus: bool = False,
                 surplus_closed: Callable[[], None] = _no_op, added: Callable[[], None] = _no_op,
                 **kwargs: Any) -> None:
        self._rop_added = added
        self._rop_failed_check = failed_check
        self._rop_check_timeout = check_timeout
        self._rop_close_surplus = close_surplus
        self._rop_surplus_closed = surplus_closed
        super().__init__(**kwargs)

    async def _get_ready_connection(self, timeout: float | None) -> Any:
        if len(self._pool) > 1:
            self._pool.rotate(1)  # last in, first out (psycopg takes the left end)
        return await super()._get_ready_connection(timeout)

    async def _getconn_with_check_loop(self, deadline: float) -> Any:
        while True:
            conn = await self._getconn_unchecked(deadline - monotonic())
            try:
                await self._check_connection(conn)
            except Exception:  # noqa: BLE001 - a dead connection: discard, flush, go on
                await self._putconn(conn, from_getconn=True)
                self._rop_failed_check()
                continue
            except BaseException:
                await self._putconn(conn, from_getconn=True)
                raise
            return conn

    async def check_connection(self, conn: Any) -> None:  # type: ignore[override]
        handle = interrupt_after(self._rop_check_timeout, conn)
        try:
            await AsyncConnectionPool.check_connection(conn)
        finally:
            handle.cancel()

    async def _add_connection(self, attempt: AttemptWithBackoff | None, growing: bool = False) -> None:
        await super()._add_connection(attempt or _CappedBackoff(timeout=self.reconnect_timeout), growing=growing)

    async def _add_to_pool(self, conn: Any) -> None:
        if self._rop_close_surplus and not self._closed and _surplus(self):
            conn._pool = None
            self._nconns -= 1
            self._rop_surplus_closed()
            await self._close_connection(conn)
            return
        await super()._add_to_pool(conn)
        if self._pool:  # it went to the idle list, not to one of psycopg's waiters: ours look again
            self._rop_added()


class SyncInternals(ConnectionPool[Any]):
    """psycopg's sync pool (Django's pool of a pool alias) with the overrides 1, 3, 4 and 5."""

    def __init__(self, *, failed_check: Callable[[], None], check_timeout: float, **kwargs: Any) -> None:
        self._rop_failed_check = failed_check
        self._rop_check_timeout = check_timeout
        super().__init__(**kwargs)

    def _get_ready_connection(self, timeout: float | None) -> Any:
        if len(self._pool) > 1:
            self._pool.rotate(1)
        return super()._get_ready_connection(timeout)

    def _getconn_with_check_loop(self, deadline: float) -> Any:
        while True:
            conn = self._getconn_unchecked(deadline - monotonic())
            try:
                self._check_connection(conn)
            except Exception:  # noqa: BLE001 - a dead connection: discard, flush, go on
                self._putconn(conn, from_getconn=True)
                self._rop_failed_check()
                continue
            except BaseException:
                self._putconn(conn, from_getconn=True)
                raise
            return conn

    def check_connection(self, conn: Any) -> None:  # type: ignore[override]
        timer = threading.Timer(self._rop_check_timeout, shutdown_socket, (conn.pgconn.socket,))
        timer.daemon = True
        timer.start()
        try:
            ConnectionPool.check_connection(conn)
        finally:
            timer.cancel()

    def _add_connection(self, attempt: AttemptWithBackoff | None, growing: bool = False) -> None:
        super()._add_connection(attempt or _CappedBackoff(timeout=self.reconnect_timeout), growing=growing)


def take_idle(pool: AsyncInternals) -> Any | None:
    """The most recently returned idle connection, when one is there and nobody waits, or None."""
    idle = pool._pool
    if not idle or pool._waiting or pool._closed:
        return None
    conn = idle.pop()
    pool._nconns_min = min(pool._nconns_min, len(idle))
    pool._stats["requests_num"] += 1
    conn._pool = pool
    return conn


def reusable(pool: AsyncInternals, conn: Any, now: float) -> bool:
    """*conn* (lent, idle) may serve another client as it is: open pool, not expired,
    not drained, not a surplus connection to close."""
    return not (
        conn._pool is not pool or pool._closed or pool._pool_full_event is not None
        or conn._expire_at <= now or conn._created_at <= pool._drained_at
        or (pool._rop_close_surplus and _surplus(pool))
    )


def give_back(pool: AsyncInternals, conn: Any, now: float) -> bool:
    """Put an idle, unexpired *conn* straight back at the pool's right end when nobody waits.

    False: psycopg's ``putconn()`` must take it (a waiter, expiry, a drain, a
    surplus connection, a broken one).
    """
    if pool._waiting or not reusable(pool, conn, now):
        return False
    conn._pool = None
    pool._pool.append(conn)
    return True


def saturated(pool: AsyncInternals) -> bool:
    """Every connection is lent and the pool cannot grow. A connection psycopg adds to its idle
    list by itself (a reconnect, a check's replacement) calls ``_rop_added`` (a waiter looks
    again); clients already in psycopg's queue are served first (``putconn()`` gives to them
    while :func:`waiting`)."""
    return not pool._pool and not pool._closed and pool._nconns >= pool.max_size


def waiting(pool: AsyncInternals) -> bool:
    """Clients wait in psycopg's own queue (they arrived while the pool could still grow)."""
    return bool(pool._waiting)


async def fail_waiting(pool: AsyncInternals, error: Callable[[], Exception]) -> None:
    """Fail every client waiting for a connection now, each with ``error()``."""
    waiting = list(pool._waiting)
    pool._waiting.clear()
    for position in waiting:
        await position.fail(error())


def stop_workers(pool: AsyncInternals) -> None:
    """Ask psycopg's workers to end (a worker cancelled inside a maintenance task
    swallows the cancellation and waits for more work)."""
    for _ in pool._workers:
        pool.run_task(StopWorker(pool))


def running(pool: AsyncInternals) -> bool:
    """True while all of psycopg's workers run (else its ``close()`` would wait for them)."""
    tasks = [*pool._workers, *([pool._sched_runner] if pool._sched_runner else [])]
    return bool(tasks) and all(not task.done() for task in tasks)


async def close_now(pool: AsyncInternals, connections: Iterable[Any], error: Exception) -> None:
    """Close the pool and every connection it opened at once, also one a worker was
    setting up, and fail whoever still waits with *error*."""
    pool._closed = True
    for task in (pool._sched_runner, *pool._workers):
        if task is not None and not task.done():
            task.cancel()
    pool._workers, pool._sched_runner = [], None
    waiting = list(pool._waiting)
    pool._pool.clear()
    pool._waiting.clear()
    for conn in list(connections):
        if not conn.closed:
            await pool._close_connection(conn)
    for position in waiting:
        await position.fail(error)


def _surplus(pool: AsyncInternals) -> bool:
    """An overflow connection is not kept when POOL_SIZE idle ones are already
    there and nobody waits (SQLAlchemy's rule, OVERFLOW_IDLE_TIMEOUT 0)."""
    return pool._nconns > pool._min_size and len(pool._pool) >= pool._min_size and not pool._waiting


async def reap_overflow(pool: AsyncInternals, period: float, closed: Callable[[int], None]) -> None:
    """Every *period*, close the overflow connections that stayed idle all of it (all of them)."""
    while not pool._closed:
        pool._nconns_min = len(pool._pool)
        await asyncio.sleep(period)
        count = min(pool._nconns_min, pool._nconns - pool._min_size, len(pool._pool))
        doomed = []
        for _ in range(max(0, count)):
            doomed.append(pool._pool.popleft())  # the longest idle
            pool._nconns -= 1
        for conn in doomed:
            await pool._close_connection(conn)
        if doomed:
            closed(len(doomed))

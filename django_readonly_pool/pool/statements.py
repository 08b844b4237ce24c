"""One statement on a borrowed connection: ``ReadPool.execute``.

The connection goes back as soon as the rows are read; ``QUERY_TIMEOUT`` cancels
the statement on the server; a statement that meets a connection which died
while idle, and was not pinged (used recently), is retried once on another one
after flushing its peers. Everything else is the server's answer, raised as is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Final, Protocol

import psycopg
from psycopg.pq import ConnStatus, ExecStatus

from django_readonly_pool.errors import ReplicaUnavailable
from django_readonly_pool.events import notify_connection_failed
from django_readonly_pool.interrupt import interrupt_after

from . import messages
from .connections import PoolConnection

__all__ = ["Borrower", "execute"]

_BAD: Final = ConnStatus.BAD
_TUPLES_OK: Final = ExecStatus.TUPLES_OK
# A statement failed this way on a connection that died while idle (a server
# restart): no answer at all, or the server ending the session. Anything else
# (PgBouncer's query_wait_timeout ...) is the server's answer: not retried.
_LOST_WHILE_IDLE: Final = frozenset({None, "57P01", "57P02", "57P03"})


class Borrower(Protocol):
    """What :func:`execute` uses of its pool (``ReadPool``)."""

    alias: str
    counters: dict[str, int]
    _check_timeout: float
    _query_timeout: float

    @property
    def timeout(self) -> float: ...

    async def getconn(self, timeout: float | None = None) -> PoolConnection: ...

    async def putconn(self, conn: PoolConnection) -> None: ...

    def _flush(self) -> None: ...

    def _breaker_error(self) -> ReplicaUnavailable: ...


async def execute(
    self: Borrower, query: Any, params: Sequence[Any] | None
) -> tuple[psycopg.AsyncCursor[Any], list[Any] | None]:
    """Run one statement on a borrowed connection and return the connection at once.

    Returns the psycopg cursor (its result, description and status stay
    readable after the connection went back) and the rows, or None when the
    statement returned no result set.
    """
    self.counters["statements"] += 1
    retried = False
    while True:
        # A retry waits no longer than a check would: it is for a stale connection.
        conn = await self.getconn(min(self.timeout, self._check_timeout) if retried else None)
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
            error = _failed(self, conn, exc, timer, retried)
            if error is None:
                retried = True
                continue
            raise error from None
        finally:
            if timer is not None:
                timer.cancel()
            await self.putconn(conn)


def _failed(self: Borrower, conn: PoolConnection, exc: psycopg.OperationalError,
            timer: asyncio.TimerHandle | None, retried: bool) -> Exception | None:
    """What a failed statement raises, or None to retry it once on another connection."""
    if conn._rop_aborted:
        return self._breaker_error()  # the replica was found down meanwhile
    if timer is not None and timer.when() <= asyncio.get_running_loop().time():
        self.counters["query_timeouts"] += 1
        return messages.query_timeout(self.alias, self._query_timeout)
    if conn.pgconn.status != _BAD:
        return exc.with_traceback(None)
    notify_connection_failed(self.alias)
    if exc.sqlstate in _LOST_WHILE_IDLE and not retried and not conn._rop_pinged:
        # The connection died while idle and was not pinged (used recently):
        # flush its peers and retry this read once.
        self.counters["retries"] += 1
        self._flush()
        return None
    return exc.with_traceback(None)

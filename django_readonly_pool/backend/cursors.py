"""Cursors of the read-only backend.

* :class:`BridgeCursor`: the DB-API cursor Django's ORM gets inside the bridge.
  ``execute()`` awaits the pool (through :func:`~django_readonly_pool.bridge.await_only`):
  it borrows a connection, runs the statement, fetches the rows and returns the
  connection at once, so no task owns a connection between statements.
* :class:`StreamingBridgeCursor`: for ``.iterator()``/``aiterator()``; holds one
  connection for the iteration and streams rows with psycopg's ``stream()``
  (one statement, rows in chunks: works through PgBouncer's transaction mode,
  unlike WITH HOLD cursors). The connection goes back when the iteration ends,
  fails, or is abandoned.
* :class:`ReadOnlyCursorWrapper` / :class:`ReadOnlyCursorDebugWrapper`: Django's
  own wrappers (``execute_wrapper()`` hooks, ``connection.queries``, error
  mapping) plus :mod:`django_readonly_pool.guard`, which refuses anything but one
  read per ``execute()`` before it reaches the server.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, Final

from django.db.backends.postgresql.base import CursorDebugWrapper
from django.db.backends.utils import CursorWrapper

from django_readonly_pool.bridge import await_only, in_bridge
from django_readonly_pool.errors import PrewarmFailed
from django_readonly_pool.guard import refusal, refuse_unless_read
from django_readonly_pool.pool import ReadPool, registry
from django_readonly_pool.pool.connections import PoolConnection

logger = logging.getLogger("django_readonly_pool")

__all__ = [
    "BridgeCursor",
    "ReadOnlyCursorDebugWrapper",
    "ReadOnlyCursorWrapper",
    "StreamingBridgeCursor",
]

STREAM_CHUNK: Final = 256  # rows per network chunk of psycopg's stream() (loaded one by one)

# --------------------------------------------------------------------------- #
# The read-only guard (django_readonly_pool.guard) on Django's cursor wrappers
# --------------------------------------------------------------------------- #


class _GuardMixin:
    db: Any
    cursor: Any

    def execute(self, sql: Any, params: Any = None) -> Any:
        refuse_unless_read(sql, params, self.db.alias, self.db.get_adapters_context)
        return super().execute(sql, params)  # type: ignore[misc]

    def executemany(self, sql: Any, param_list: Any) -> Any:
        refuse_unless_read(sql, (), self.db.alias, self.db.get_adapters_context)
        return super().executemany(sql, param_list)  # type: ignore[misc]

    def copy(self, statement: Any, params: Any = None, **kwargs: Any) -> Any:
        refuse_unless_read(statement, params, self.db.alias, self.db.get_adapters_context)
        return self.cursor.copy(statement, params, **kwargs)

    def callproc(self, procname: str, params: Any = None, kparams: Any = None) -> Any:
        raise refusal(f"callproc({procname!r})", self.db.alias, "a procedure may write")


class ReadOnlyCursorWrapper(_GuardMixin, CursorWrapper):
    pass


class ReadOnlyCursorDebugWrapper(_GuardMixin, CursorDebugWrapper):
    pass


# --------------------------------------------------------------------------- #
# Bridge cursors
# --------------------------------------------------------------------------- #


def _open_pool(alias: str) -> ReadPool:
    """The pool of *alias*, opened on first use (prewarmed as configured)."""
    try:
        return await_only(registry.get(alias))
    except PrewarmFailed as exc:  # opened on first use: nobody else reports it
        logger.error("%s", exc)
        raise


_PENDING: Any = object()  # description not built yet


class BridgeCursor:
    """A DB-API cursor whose statements await the pool (used inside the bridge)."""

    arraysize = 1

    def __init__(self, alias: str) -> None:
        self.alias = alias
        self._description: Any = None
        self._source: Any = None  # the psycopg cursor of the last statement
        self._rows: list[Any] = []
        self._pos = 0
        self.closed = False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} alias={self.alias!r}>"

    def __enter__(self) -> BridgeCursor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def description(self) -> Sequence[Any] | None:
        """psycopg's description of the last result, built when first asked for
        (most ORM reads never look at it)."""
        description = self._description
        if description is _PENDING:
            description = self._description = self._source.description
        return description  # type: ignore[no-any-return]

    @description.setter
    def description(self, value: Sequence[Any] | None) -> None:
        self._description = value

    # What the last statement's psycopg cursor says, read when asked for (most
    # ORM reads never ask).

    @property
    def rowcount(self) -> int:
        source = self._source
        return -1 if source is None else int(source.rowcount)

    @property
    def statusmessage(self) -> str | None:
        source = self._source
        return None if source is None else source.statusmessage

    @property
    def _query(self) -> Any:
        source = self._source
        return None if source is None else source._query

    def execute(self, query: Any, params: Any = None) -> BridgeCursor:
        pool = registry.ready(self.alias) or _open_pool(self.alias)
        cur, rows = await_only(pool.execute(query, params))
        self._source = cur
        self._description = _PENDING if rows is not None else None
        self._rows = rows if rows is not None else []
        self._pos = 0
        return self

    def executemany(self, query: Any, params_seq: Any) -> None:
        for params in params_seq:
            self.execute(query, params)

    def fetchone(self) -> Any:
        if self._pos < len(self._rows):
            row = self._rows[self._pos]
            self._pos += 1
            return row
        return None

    def fetchmany(self, size: int | None = None) -> list[Any]:
        end = self._pos + (size or self.arraysize)
        chunk = self._rows[self._pos:end]
        self._pos += len(chunk)
        return chunk

    def fetchall(self) -> list[Any]:
        chunk = self._rows[self._pos:] if self._pos else self._rows
        self._pos = len(self._rows)
        return chunk

    def __iter__(self) -> Iterator[Any]:
        while (row := self.fetchone()) is not None:
            yield row

    def nextset(self) -> None:
        return None

    def close(self) -> None:
        self.closed = True
        self._rows = []


async def _take(stream: AsyncIterator[Any], n: int) -> list[Any]:
    rows: list[Any] = []
    async for row in stream:
        rows.append(row)
        if len(rows) >= n:
            break
    return rows


async def _release(pool: ReadPool, conn: PoolConnection, stream: Any) -> None:
    try:
        if stream is not None:
            await stream.aclose()  # psycopg cancels an unfinished query
    finally:
        await pool.putconn(conn)


def _release_later(loop: asyncio.AbstractEventLoop, pool: ReadPool,
                   conn: PoolConnection, stream: Any) -> None:
    """Return a streaming cursor's connection from outside the bridge (GC)."""
    if loop.is_closed():
        return
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        loop.create_task(_release(pool, conn, stream))
    else:
        loop.call_soon_threadsafe(lambda: loop.create_task(_release(pool, conn, stream)))


class StreamingBridgeCursor(BridgeCursor):
    """Streams a result on one held connection (``iterator()``, ``aiterator()``)."""

    def __init__(self, alias: str) -> None:
        super().__init__(alias)
        self._held: tuple[asyncio.AbstractEventLoop, ReadPool, PoolConnection, Any] | None = None
        self._done = True
        self._finalizer: Any = None  # weakref.finalize

    def execute(self, query: Any, params: Any = None) -> StreamingBridgeCursor:
        self.close()
        pool = registry.ready(self.alias) or _open_pool(self.alias)
        conn = await_only(pool.getconn())
        stream = None
        try:
            cur = conn.cursor()
            stream = cur.stream(query, params, size=STREAM_CHUNK)
            # One row: the server's answer and the description. Rows are loaded
            # one by one as they are asked for, never further than Django asks.
            first = await_only(_take(stream, 1))
            self.description = cur.description
            self._source = cur
        except BaseException:
            await_only(_release(pool, conn, stream))
            raise
        self._rows, self._pos = first, 0
        self._done = not first
        if self._done:
            await_only(_release(pool, conn, stream))
        else:
            loop = asyncio.get_running_loop()
            self._held = (loop, pool, conn, stream)
            # Safety net: an abandoned cursor still returns its connection.
            self._finalizer = weakref.finalize(self, _release_later, loop, pool, conn, stream)
        return self

    @property
    def rowcount(self) -> int:
        return -1  # a stream's row count is known at its end only

    def _fill(self, wanted: int) -> None:
        """Buffer *wanted* rows (fewer at the end of the result), reading no more."""
        missing = wanted - (len(self._rows) - self._pos)
        if self._done or missing <= 0:
            return
        assert self._held is not None
        more = await_only(_take(self._held[3], missing))
        if self._pos:
            self._rows, self._pos = self._rows[self._pos:], 0
        self._rows.extend(more)
        if len(more) < missing:
            self._done = True
            self.close_stream()

    def fetchone(self) -> Any:
        self._fill(1)
        return super().fetchone()

    def fetchmany(self, size: int | None = None) -> list[Any]:
        self._fill(size or self.arraysize)
        return super().fetchmany(size)

    def fetchall(self) -> list[Any]:
        while not self._done:
            self._fill(len(self._rows) - self._pos + STREAM_CHUNK)
        return super().fetchall()

    def close_stream(self) -> None:
        held, self._held = self._held, None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if held is None:
            return
        loop, pool, conn, stream = held
        if in_bridge():
            await_only(_release(pool, conn, stream))
        else:
            _release_later(loop, pool, conn, stream)

    def close(self) -> None:
        self.close_stream()
        super().close()


"""PREWARM: every ``POOL_SIZE`` connection opened in parallel, verified, before the first read.

psycopg's pool does it through its public API: ``num_workers`` (one worker per
connection, up to 64, so the connects run in parallel), ``open()`` (its workers
connect and configure, the configuration being the verifying round trip) and
``wait()``. What it lacks is failing fast: :func:`prewarm` also ends at the
first failed connection (reported by the pool's connect hook) or at the
deadline, whichever comes first.
"""

from __future__ import annotations

import asyncio
from typing import Any

from psycopg_pool import AsyncConnectionPool

__all__ = ["prewarm"]


async def prewarm(pool: AsyncConnectionPool[Any], failure: asyncio.Future[str], *, wanted: int,
                  budget: float) -> str | None:
    """Wait for *wanted* connections of the opened *pool*: None once they are ready, or the
    cause of the failure (the first failed connect, or the deadline *budget* seconds away)."""
    ready = asyncio.ensure_future(pool.wait(timeout=budget + 60))
    await asyncio.wait((ready, failure), timeout=budget, return_when=asyncio.FIRST_COMPLETED)
    finished = ready.done() and not ready.cancelled()
    if finished and ready.exception() is None:
        return None
    error = ready.exception() if finished else None
    ready.cancel()
    await asyncio.wait((ready,))  # its outcome is known: the failure below
    if failure.done():
        return failure.result()
    if error is not None:
        return str(error) or type(error).__name__
    return f"the server did not accept {wanted} connections in time"

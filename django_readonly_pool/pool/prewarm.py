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
import logging
from collections.abc import Callable
from time import monotonic
from typing import Any

from psycopg_pool import AsyncConnectionPool

from django_readonly_pool.conf import ConnectionTarget, PoolSettings

from . import messages

__all__ = ["open_prewarmed", "prewarm"]

logger = logging.getLogger("django_readonly_pool")


async def open_prewarmed(pool: AsyncConnectionPool[Any], connects: Any, *, alias: str, target: ConnectionTarget,
                         settings: PoolSettings, scrub: Callable[[str], str]) -> float:
    """Open *pool* and wait for its ``POOL_SIZE`` connections: the seconds it took, or
    :class:`~django_readonly_pool.errors.PrewarmFailed` naming the server and the cause."""
    started = monotonic()
    failure = connects.prewarm_failure = asyncio.get_running_loop().create_future()
    try:
        logger.info("readonly pool %r: prewarming %d connections to %s", alias, settings.pool_size,
                    target.describe())
        await pool.open(wait=False)
        cause = await prewarm(pool, failure, wanted=settings.pool_size,
                              budget=max(0.05, settings.prewarm_timeout - (monotonic() - started)))
        elapsed = monotonic() - started
        if cause is not None:
            raise messages.prewarm_failed(  # reported by whoever opened the pool
                alias, target, ready=pool.get_stats().get("pool_available", 0), wanted=settings.pool_size,
                elapsed=elapsed, prewarm_timeout=settings.prewarm_timeout, cause=scrub(cause))
        logger.info("readonly pool %r: %d connections prewarmed in %.3f s", alias, settings.pool_size, elapsed)
        return elapsed
    finally:
        connects.prewarm_failure = None


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

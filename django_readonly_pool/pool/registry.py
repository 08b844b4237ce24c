"""One pool per event loop and alias: a pool belongs to the loop it was opened on.

Pools are opened lazily (the first read on an alias) or by :func:`open_pools`
(an ASGI lifespan, a worker's startup), and closed when their loop shuts its
tasks down (``asyncio.run``, ``async_to_sync``) or by :func:`close_pools`. The
health monitor's "replica down" reaches the pools of every loop through
:meth:`PoolRegistry.replica_down` (subscribed in ``AppConfig.ready()``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Sequence
from typing import Any, Final

from django_readonly_pool.aliases import pool_aliases

from .asyncpool import ReadPool

__all__ = ["PoolRegistry", "close_pools", "open_pools", "registry"]

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
            self.after_fork()
        lp = self._loops.get(loop)
        if lp is None:
            for stale in [other for other in list(self._loops) if other.is_closed()]:
                del self._loops[stale]
            lp = self._loops[loop] = _LoopPools(loop)
            lp.sentinel = loop.create_task(self._close_at_shutdown(lp), name="readonly-pool-closer")
        self._last = lp
        return lp

    def ready(self, alias: str) -> ReadPool | None:
        """The open pool of *alias* on the running loop, or None (sync, cheap: every statement asks)."""
        loop = asyncio.get_running_loop()
        lp = self._last
        if lp is None or lp.loop is not loop:
            lp = self._for_loop(loop)
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

    def replica_down(self, alias: str) -> None:
        """Health callback (any thread): fail the waiters of *alias*'s pools."""
        for loop, lp in list(self._loops.items()):
            pool = lp.pools.get(alias)
            if pool is not None and not loop.is_closed():
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(_schedule_fail_waiting, pool)

    def after_fork(self) -> None:
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
os.register_at_fork(after_in_child=registry.after_fork)


async def open_pools(aliases: Sequence[str] | None = None) -> dict[str, ReadPool]:
    """Open (and prewarm, as configured) the pools of *aliases* on this loop.

    Default: every alias whose ENGINE is ``django_readonly_pool.backend``.
    Raises :class:`~django_readonly_pool.errors.PrewarmFailed` when prewarm fails.
    """
    names = list(aliases) if aliases is not None else pool_aliases()
    opened = await asyncio.gather(*(registry.get(a) for a in names))
    return dict(zip(names, opened, strict=True))


async def close_pools() -> None:
    """Close every pool of the running loop (their connections close too)."""
    await registry.close()

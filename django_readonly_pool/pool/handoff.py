"""Hand-over: a connection coming back goes straight to the client that waited longest.

When every connection of a pool is lent and it cannot grow, psycopg's
``getconn()`` queues the client (a lock, a ``Condition`` per client, a timer) and
``putconn()`` wakes it through the same lock. Past saturation that costs more
CPU than the read itself. Here a waiting client is one future in a FIFO queue:
the client returning a connection it found healthy sets the first waiter's
future to it (the connection stays lent, as in psycopg's pool), and a
connection psycopg must take (expired, broken, a pool being drained) wakes the
first waiter with :data:`RETRY`, which then takes psycopg's own path (and its
replacement connection). First come, first served.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from time import monotonic
from typing import Any, Final

__all__ = ["RETRY", "Waiters"]

RETRY: Final = object()  # no connection handed over: take psycopg's path
# psycopg's request counters, for the checkouts its getconn() never sees (see counted_in())
_COUNTED: Final = ("requests_num", "requests_queued", "requests_wait_ms", "requests_errors")


class Waiters:
    """Clients waiting for a connection another client holds, first come first served."""

    __slots__ = ("_counts", "_queue")

    def __init__(self) -> None:
        self._queue: deque[asyncio.Future[Any]] = deque()
        self._counts = dict.fromkeys(_COUNTED, 0)

    def counted_in(self, stats: dict[str, int], *, reset: bool = False) -> dict[str, int]:
        """*stats* (psycopg's) with these clients counted in psycopg's own keys, the
        ``requests_waiting`` gauge included; *reset* starts the counters again."""
        for key, value in self._counts.items():
            if value:
                stats[key] = stats.get(key, 0) + value
        if self._queue:
            stats["requests_waiting"] = stats.get("requests_waiting", 0) + len(self._queue)
        if reset:
            self._counts = dict.fromkeys(_COUNTED, 0)
        return stats

    def __bool__(self) -> bool:
        return bool(self._queue)

    def __len__(self) -> int:
        return len(self._queue)

    async def wait(self, timeout: float, give_back: Callable[[Any], Awaitable[None]]) -> Any:
        """A connection handed over, or :data:`RETRY`; ``TimeoutError`` past *timeout*.

        A connection handed over as the client gives up (cancelled, timed out)
        goes back through *give_back*: it is never lost."""
        future = asyncio.get_running_loop().create_future()
        self._queue.append(future)
        started = monotonic()
        self._counts["requests_queued"] += 1
        try:
            async with asyncio.timeout(timeout):
                got = await future
        except BaseException as exc:
            if isinstance(exc, TimeoutError):
                self._counts["requests_errors"] += 1
            if future.done() and not future.cancelled() and future.exception() is None:
                got = future.result()
                if got is RETRY:
                    self.wake()  # the chance to look again passes to the next waiter
                else:
                    await asyncio.shield(give_back(got))
            else:
                future.cancel()
                with contextlib.suppress(ValueError):  # already taken off by hand()
                    self._queue.remove(future)
            raise
        finally:  # (counted_in(reset=True) may have replaced the dict meanwhile)
            self._counts["requests_wait_ms"] += int(1000.0 * (monotonic() - started))
        if got is not RETRY:
            self._counts["requests_num"] += 1
        return got

    def hand(self, item: Any) -> bool:
        """Give *item* to the first client still waiting; False when there is none."""
        queue = self._queue
        while queue:
            future = queue.popleft()
            if not future.done():
                future.set_result(item)
                return True
        return False

    def wake(self) -> None:
        """Let the first waiter take psycopg's path (a connection went to psycopg)."""
        self.hand(RETRY)

    def fail(self, error: Callable[[], BaseException]) -> None:
        """Fail every waiting client with ``error()`` (the replica is down, the pool closes)."""
        queue = self._queue
        while queue:
            future = queue.popleft()
            if not future.done():
                future.set_exception(error())

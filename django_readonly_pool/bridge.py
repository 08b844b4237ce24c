"""The greenlet bridge: Django's synchronous ORM code running on the event loop.

:func:`run` starts a function in a child greenlet of the calling coroutine, on
the event-loop thread, in the caller's :mod:`contextvars` context. When that
code reaches I/O on a pool alias, the backend's cursor calls :func:`await_only`,
which switches back to the coroutine with an awaitable; the coroutine awaits it
on the event loop and switches the result (or the exception) back in. The ORM
never knows: no thread hop, no ``sync_to_async``, and Django's guard against
sync I/O in async code stays armed for everything that does not take the bridge.

The bridge knows nothing of routing: :func:`django_readonly_pool.run` (in
:mod:`~django_readonly_pool.orm`) decides where a call reads, then enters it.

This is the technique of SQLAlchemy's asyncio extension (``greenlet_spawn`` and
``await_only``), written here for Django's needs.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from greenlet import getcurrent, greenlet

__all__ = ["BridgeError", "await_only", "call_in_bridge", "in_bridge"]

T = TypeVar("T")


class BridgeError(RuntimeError):
    """:func:`await_only` was called outside a bridge greenlet."""


class _BridgeGreenlet(greenlet):  # type: ignore[misc]
    """A greenlet running synchronous code on behalf of a coroutine."""


def in_bridge() -> bool:
    """True when the current code runs inside :func:`run` (and may await)."""
    return type(getcurrent()) is _BridgeGreenlet


def await_only(awaitable: Awaitable[T]) -> T:
    """Wait for *awaitable* from synchronous code running inside :func:`run`.

    Suspends this greenlet, lets the calling coroutine await *awaitable* on the
    event loop, and returns its result (or raises its exception) here.
    """
    current = getcurrent()
    if type(current) is not _BridgeGreenlet:
        close = getattr(awaitable, "close", None)
        if close is not None:
            close()  # avoid "coroutine was never awaited"
        raise BridgeError("await_only() called outside django_readonly_pool.run()")
    return current.parent.switch(awaitable)  # type: ignore[no-any-return]


async def call_in_bridge(fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
    """Run ``fn(*args, **kwargs)`` in a bridge greenlet (no routing decision)."""
    parent = getcurrent()
    child = _BridgeGreenlet(fn, parent)
    # Share the caller's context: context variables (router pins, request state,
    # Django's per-context connections) are the caller's, as in a plain call.
    child.gr_context = parent.gr_context
    result: Any = child.switch(*args, **kwargs)
    while not child.dead:
        try:
            value = await result
        except BaseException:  # noqa: BLE001 - incl. CancelledError: unwind the sync code
            result = child.throw(*sys.exc_info())
        else:
            result = child.switch(value)
    return result  # type: ignore[no-any-return]

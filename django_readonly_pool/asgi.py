"""ASGI integration: prewarm the pools at startup, close them at shutdown.

Wrap the Django ASGI application::

    from django.core.asgi import get_asgi_application
    from django_readonly_pool.asgi import ReadOnlyPoolLifespan

    application = ReadOnlyPoolLifespan(get_asgi_application())

On the ``lifespan`` startup event every pool alias is opened on the server's
event loop (and prewarmed when ``PREWARM`` is true); a failed prewarm fails the
startup with the clear message, so a misconfigured replica is found before the
first request. On shutdown the pools close and their connections end. Other
scopes (http, websocket) pass through untouched. Servers without lifespan
support still work: the pools then open on first use.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import django.core.handlers.asgi as asgi_module
from asgiref.sync import SyncToAsync, sync_to_async
from django.core import checks
from django.core.cache import close_caches
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.base import reset_urlconf
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished, request_started
from django.db import close_old_connections, reset_queries
from django.http import HttpRequest, HttpResponseBase

from .health import monitor
from .pool import close_pools, open_pools

__all__ = ["ReadOnlyPoolLifespan"]

logger = logging.getLogger("django_readonly_pool")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ReadOnlyPoolLifespan:
    """ASGI middleware handling the ``lifespan`` scope for the read pools."""

    def __init__(self, app: ASGIApp, *, aliases: list[str] | None = None) -> None:
        self.app = app
        self.aliases = aliases

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self._startup()
                except Exception as exc:  # noqa: BLE001 - reported by the server, which exits
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await close_pools()
                # The servers may go next (a deploy, a throwaway topology): no
                # probe should report them down as the process exits.
                await asyncio.to_thread(monitor.stop)
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _startup(self) -> None:
        errors = [m for m in checks.run_checks(tags=["readonly_pool"]) if m.is_serious()]
        if errors:
            raise RuntimeError("; ".join(f"{m.id}: {m.msg}" for m in errors))
        await open_pools(self.aliases)


# --------------------------------------------------------------------------- #
# No thread hop per request (READONLY_POOL["SKIP_REQUEST_THREAD_HOP"])
# --------------------------------------------------------------------------- #
#
# Django's ASGI handler runs each request in its own ThreadSensitiveContext and
# hops to a thread twice per request: for the sync receivers of request_started
# (close_old_connections, reset_queries) and for response.close(), which sends
# request_finished (close_old_connections, close_caches). The first hop creates
# the request's thread. An async view that reads through the pool opens no sync
# connection and uses no thread: all those receivers have nothing to do.
#
# So for ASGI handlers: request_started gets one async receiver that runs
# Django's two only when the request already has a thread (which at request
# start it never has); and response.close() runs inline when the request used
# no thread, the response holds nothing to close but the request's body, and
# request_finished has no receiver but Django's own (close_old_connections,
# close_caches, reset_urlconf: with no thread used they touch no I/O). In every other case it hops exactly as Django
# does, so sync views, streaming responses and custom receivers are unchanged.


def _request_used_a_thread() -> bool:
    try:
        context = SyncToAsync.thread_sensitive_context.get(None)
        executors = SyncToAsync.context_to_thread_executor
    except AttributeError:  # another asgiref: do as Django does
        return True
    return context is None or context in executors


async def _request_started(**kwargs: Any) -> None:
    """ASGI request_started receiver standing for Django's sync ones."""
    if _request_used_a_thread():
        def both() -> None:
            reset_queries()
            close_old_connections()

        await sync_to_async(both)()


def _django_finish_receivers() -> set[Any]:
    """Django's own request_finished receivers: no I/O when no thread was used."""
    return {close_old_connections, close_caches, reset_queries, reset_urlconf}


def _closes_a_request(closer: Any) -> bool:
    """Django adds request.close (its in-memory body) to every response."""
    return isinstance(getattr(closer, "__self__", None), HttpRequest) and closer.__name__ == "close"


def _handler_sync_to_async(func: Any, *args: Any, **kwargs: Any) -> Any:
    """Stands for sync_to_async in django.core.handlers.asgi (response.close only)."""
    response = getattr(func, "__self__", None)
    if (
        isinstance(response, HttpResponseBase)
        and getattr(func, "__func__", None) is HttpResponseBase.close
        and all(_closes_a_request(closer) for closer in response._resource_closers)  # type: ignore[attr-defined]
        and not _request_used_a_thread()
    ):
        handler_class = response._handler_class  # type: ignore[attr-defined]
        sync_receivers, async_receivers = request_finished._live_receivers(handler_class)
        if not async_receivers and set(sync_receivers) <= _django_finish_receivers():
            async def close_inline() -> None:
                func()

            return close_inline
    return sync_to_async(func, *args, **kwargs)


def _handler_classes(base: type) -> list[type]:
    found = [base]
    sub: type
    for sub in base.__subclasses__():
        if not sub.__module__.startswith("django.test"):  # the test client manages its own
            found.extend(_handler_classes(sub))
    return found


def install_request_receivers() -> None:
    """Remove Django's per-request thread hops where a request needs none."""
    replaced = [r for r in (close_old_connections, reset_queries) if request_started.disconnect(r)]
    for receiver in replaced:  # unchanged for WSGI (and any other sender but ASGI handlers)
        for handler in _handler_classes(WSGIHandler):
            request_started.connect(receiver, sender=handler, dispatch_uid=f"rop-{id(receiver)}-{id(handler)}")
    if replaced:
        for handler in _handler_classes(ASGIHandler):
            request_started.connect(_request_started, sender=handler, dispatch_uid=f"rop-started-{id(handler)}")
    if getattr(asgi_module, "sync_to_async", None) is not _handler_sync_to_async:
        asgi_module.sync_to_async = _handler_sync_to_async  # type: ignore[attr-defined]

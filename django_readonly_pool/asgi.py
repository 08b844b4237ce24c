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

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

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
                except Exception as exc:  # noqa: BLE001 - reported to the server
                    logger.error("readonly pool startup failed: %s", exc)
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await close_pools()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _startup(self) -> None:
        from django.core import checks

        errors = [m for m in checks.run_checks(tags=["readonly_pool"]) if m.is_serious()]
        if errors:
            raise RuntimeError("; ".join(f"{m.id}: {m.msg}" for m in errors))
        await open_pools(self.aliases)

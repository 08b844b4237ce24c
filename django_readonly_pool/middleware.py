"""Read-your-writes across requests: a short-lived pin cookie.

``MIDDLEWARE = [..., "django_readonly_pool.middleware.ReadOnlyPoolMiddleware"]``

Each request gets a fresh :class:`~django_readonly_pool.router.RoutingScope`.
A request carrying a valid pin cookie reads from the primary; a response to an
unsafe request (POST, PUT, PATCH, DELETE), or to any request that wrote, sets
the cookie for ``READONLY_POOL["STICKY_SECONDS"]`` (15 s by default), so the
client's next requests see its write even if the replica lags (the approach of
django-multidb-router). The cookie holds an expiry time, checked on the server:
a client cannot pin itself for longer than the window. Works for sync and async
views alike.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponseBase

from .conf import app_settings
from .router import _scope, start_scope

__all__ = ["ReadOnlyPoolMiddleware"]

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


class ReadOnlyPoolMiddleware:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self._async = iscoroutinefunction(get_response)
        if self._async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self._async:
            return self.__acall__(request)
        self._before(request)
        response = self.get_response(request)
        return self._after(request, response)

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        self._before(request)
        response = await self.get_response(request)  # type: ignore[misc]
        return self._after(request, response)

    def _before(self, request: HttpRequest) -> None:
        settings = app_settings()
        pinned = False
        if settings.sticky_seconds > 0:
            raw = request.COOKIES.get(settings.sticky_cookie)
            if raw:
                try:
                    expires = float(raw)
                except ValueError:
                    expires = 0.0
                now = time.time()
                pinned = now < expires <= now + settings.sticky_seconds + 1.0
        start_scope(pinned=pinned)

    def _after(self, request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
        settings = app_settings()
        if settings.sticky_seconds <= 0:
            return response
        scope = _scope.get()
        wrote = scope is not None and scope.wrote
        if request.method not in SAFE_METHODS or wrote:
            response.set_cookie(
                settings.sticky_cookie,
                f"{time.time() + settings.sticky_seconds:.3f}",
                max_age=math.ceil(settings.sticky_seconds),
                httponly=True,
                samesite="Lax",
                secure=request.is_secure(),
            )
        return response



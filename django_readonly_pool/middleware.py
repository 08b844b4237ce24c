"""Read-your-writes across requests: a short-lived pin cookie.

``MIDDLEWARE = [..., "django_readonly_pool.middleware.ReadOnlyPoolMiddleware"]``

Each request gets a fresh :class:`~django_readonly_pool.router.RoutingScope`.
A request carrying a valid pin cookie reads from the primary; a successful
response (status below 400) to an unsafe request (POST, PUT, PATCH, DELETE), or
to any request that wrote, sets the cookie for ``READONLY_POOL["STICKY_SECONDS"]``
(15 s by default), so the client's next requests see its write even if the
replica lags (the approach of django-multidb-router). The cookie is signed
with Django's signing (``SECRET_KEY``, a salt of its own) and its timestamp is
checked on the server: a client can neither forge one nor pin itself for
longer than the window, and a refused request (a CSRF 403, a 404) pins
nothing. Works for sync and async views alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponseBase

from .conf import app_settings
from .router import _scope, start_scope

__all__ = ["ReadOnlyPoolMiddleware"]

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
SALT = "django_readonly_pool.middleware.pin"
_PINNED = "1"


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
        response = await self.get_response(request)
        return self._after(request, response)

    def _before(self, request: HttpRequest) -> None:
        settings = app_settings()
        pinned = False
        if settings.sticky_seconds > 0 and settings.sticky_cookie in request.COOKIES:
            value = request.get_signed_cookie(settings.sticky_cookie, default=None, salt=SALT,
                                              max_age=timedelta(seconds=settings.sticky_seconds))
            pinned = value == _PINNED
        start_scope(pinned=pinned)

    def _after(self, request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
        settings = app_settings()
        if settings.sticky_seconds <= 0:
            return response
        if response.status_code >= 400:
            return response  # refused or failed: nothing to read back
        scope = _scope.get()
        wrote = scope is not None and scope.wrote
        if request.method not in SAFE_METHODS or wrote:
            response.set_signed_cookie(
                settings.sticky_cookie,
                _PINNED,
                salt=SALT,
                max_age=math.ceil(settings.sticky_seconds),
                httponly=True,
                samesite="Lax",
                secure=request.is_secure(),
            )
        return response



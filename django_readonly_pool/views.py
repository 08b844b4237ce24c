"""Operations endpoints: pool health (JSON, 503 when unhealthy) and metrics.

::

    from django_readonly_pool import views as readonly_pool_views

    urlpatterns = [
        path("health/db/", readonly_pool_views.health),
        path("metrics", readonly_pool_views.metrics),
    ]

The health view runs one round trip through each pool alias (bounded, and
failing fast while the replica is known to be down) and answers 200 or 503 with
``{"status": "healthy" | "unhealthy"}``. Only callers allowed the details
(``READONLY_POOL["HEALTH_DETAILS"]``: ``"staff"`` by default, i.e. active staff
users; ``"always"``; ``"never"``) also get, per alias: ``healthy``,
``prewarmed``, the target server, the pool's ``size``, ``available``,
``in_use``, ``waiting`` and ``utilization``, its counters (statements, errors,
lost connections, timeouts ...), the last error, and the replica's status and
lag. A pool that is not open is opened at most once per
``HEALTH_CHECK_INTERVAL`` (a failed open is reported from memory meanwhile), so
polling the view cannot hammer a replica that refuses logins. No secret is
ever shown: no password, no connection string, no SQL.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from typing import Any

from django.db import connections
from django.http import HttpRequest, HttpResponse, JsonResponse

from .aliases import pool_aliases
from .backend.base import pool_connection
from .conf import ConnectionTarget, app_settings, scrub
from .health import DOWN, PROMOTED, health_report
from .metrics import prometheus_text, snapshot
from .pool import registry

__all__ = ["health", "metrics"]

_CHECK_TIMEOUT = 5.0
# event loop -> alias -> (monotonic time, error) of the last failed attempt to open
# its pool (pools belong to their loop)
_open_failures: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, tuple[float, str]]] = (
    weakref.WeakKeyDictionary())


async def _check_alias(alias: str) -> dict[str, Any]:
    started = time.monotonic()
    wrapper = pool_connection(alias)
    settings = wrapper.readonly_pool_settings
    pool = registry.ready(alias)
    failures = _open_failures.setdefault(asyncio.get_running_loop(), {})
    if pool is None:
        failed = failures.get(alias)
        if failed is not None and started - failed[0] < app_settings().health_check_interval:
            return {"healthy": False, "error": failed[1], "check_ms": 0.0}
    try:
        async with asyncio.timeout(min(settings.checkout_timeout, _CHECK_TIMEOUT)):
            if pool is None:
                try:
                    pool = await registry.get(alias)
                except BaseException as exc:
                    failures[alias] = (time.monotonic(), _error_text(exc, wrapper.target))
                    raise
                failures.pop(alias, None)
            await pool.execute("SELECT 1", None)
    except Exception as exc:  # noqa: BLE001 - reported, never raised
        return {"healthy": False, "error": _error_text(exc, wrapper.target),
                "check_ms": round((time.monotonic() - started) * 1000, 2)}
    return {"healthy": True, "check_ms": round((time.monotonic() - started) * 1000, 2)}


def _error_text(exc: BaseException, target: ConnectionTarget) -> str:
    if isinstance(exc, TimeoutError):
        return f"TimeoutError: no answer within {_CHECK_TIMEOUT:g} s"
    return scrub(f"{type(exc).__name__}: {exc}".strip(), (target.password,))[:500]


async def _may_see_details(request: HttpRequest) -> bool:
    mode = app_settings().health_details
    if mode != "staff":
        return mode == "always"
    auser = getattr(request, "auser", None)  # django.contrib.auth's middleware
    if auser is None:
        return False
    user = await auser()
    return bool(getattr(user, "is_active", False) and getattr(user, "is_staff", False))


async def health(request: HttpRequest) -> JsonResponse:
    """Pool and replica health; HTTP 503 when any alias is unhealthy (details: see above)."""
    aliases = pool_aliases()
    checks = await asyncio.gather(*(_check_alias(alias) for alias in aliases))
    stats = snapshot()
    replicas = health_report()
    report: dict[str, Any] = {}
    healthy = True
    for alias, check in zip(aliases, checks, strict=True):
        entry = stats.get(alias, {})
        replica = replicas.get(alias)
        ok = check["healthy"] and not (replica and replica["status"] in (DOWN, PROMOTED))
        healthy = healthy and ok
        target = ConnectionTarget.from_settings(connections[alias].settings_dict)
        report[alias] = {
            "healthy": ok,
            "target": target.describe(),
            **check,
            "prewarmed": bool(entry.get("prewarmed", False)),
            **{k: v for k, v in entry.items() if k not in ("replica", "prewarmed")},
            "replica": {
                "status": replica["status"] if replica else "unknown",
                "lag_seconds": replica["lag_seconds"] if replica else None,
                "lag_bytes": replica["lag_bytes"] if replica else None,
                "error": replica["error"] if replica else None,
            },
        }
    body: dict[str, Any] = {"status": "healthy" if healthy else "unhealthy"}
    if await _may_see_details(request):
        body["aliases"] = report
    response = JsonResponse(body, status=200 if healthy else 503)
    if not healthy:
        # Django logs every 5xx at ERROR: polled every few seconds through an outage that
        # is hundreds of lines. The pools and the health monitor log the outage, once.
        # (A private attribute of Django's, checked by django.utils.log.log_response.)
        response._has_been_logged = True  # type: ignore[attr-defined]
    return response


def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus text format when prometheus_client is installed, else JSON."""
    text = prometheus_text()
    if text is not None:
        return HttpResponse(text[0], content_type=text[1])
    return JsonResponse({"metrics": snapshot(),
                         "note": "install prometheus_client for the Prometheus text format"})

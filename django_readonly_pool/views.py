"""Operations endpoints: pool health (JSON, 503 when unhealthy) and metrics.

::

    from django_readonly_pool import views as readonly_pool_views

    urlpatterns = [
        path("health/db/", readonly_pool_views.health),
        path("metrics", readonly_pool_views.metrics),
    ]

The health view runs one round trip through each pool alias (bounded, and
failing fast while the replica is known to be down) and reports, per alias:
``healthy``, ``prewarmed``, the pool's ``size``, ``available``, ``in_use``,
``waiting`` and ``utilization``, its counters (statements, errors, lost
connections, timeouts ...), and the replica's status and lag. It answers 503
when any alias is unhealthy. Both views expose no secret: no password, no
connection string, no SQL.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse

from .conf import ConnectionTarget
from .health import DOWN, PROMOTED, health_report
from .metrics import register_prometheus, snapshot
from .orm import pool_aliases
from .pool import registry

__all__ = ["health", "metrics"]

_CHECK_TIMEOUT = 5.0


async def _check_alias(alias: str) -> dict[str, Any]:
    from .backend.base import pool_connection

    started = time.monotonic()
    settings = pool_connection(alias).readonly_pool_settings
    try:
        async with asyncio.timeout(min(settings.checkout_timeout, _CHECK_TIMEOUT)):
            pool = await registry.get(alias)
            await pool.execute("SELECT 1", None)
    except Exception as exc:  # noqa: BLE001 - reported, never raised
        return {"healthy": False, "error": f"{type(exc).__name__}: {exc}"[:500],
                "check_ms": round((time.monotonic() - started) * 1000, 2)}
    return {"healthy": True, "check_ms": round((time.monotonic() - started) * 1000, 2)}


async def health(request: HttpRequest) -> JsonResponse:
    """Per-alias pool and replica health; HTTP 503 when any alias is unhealthy."""
    from django.db import connections

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
    return JsonResponse({"status": "healthy" if healthy else "unhealthy", "aliases": report},
                        status=200 if healthy else 503)


def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus text format when prometheus_client is installed, else JSON."""
    if register_prometheus():
        from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

        return HttpResponse(generate_latest(REGISTRY), content_type=CONTENT_TYPE_LATEST)
    return JsonResponse({"metrics": snapshot(),
                         "note": "install prometheus_client for the Prometheus text format"})

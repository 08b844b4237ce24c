"""Pool gauges and counters, as a dict and (when installed) in Prometheus format.

:func:`snapshot` sums the pools of every event loop of this process per alias
and adds the replica's health verdict. With ``prometheus_client`` installed
(``pip install django-readonly-pool[prometheus]``) the app registers a
collector in its default registry at startup, so an existing ``/metrics``
endpoint exports them; :func:`~django_readonly_pool.views.metrics` serves them
too. Without it, the same figures are in the health view's JSON.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .health import health_report
from .pool import registry

__all__ = ["COUNTERS", "GAUGES", "prometheus_text", "register_prometheus", "snapshot"]

# name -> (psycopg/pool stats key, help text)
GAUGES: dict[str, tuple[str, str]] = {
    "size": ("pool_size", "Connections open or opening"),
    "max_size": ("pool_max", "POOL_SIZE + MAX_OVERFLOW"),
    "available": ("pool_available", "Idle connections ready to hand out"),
    "in_use": ("in_use", "Connections held by queries right now"),
    "waiting": ("requests_waiting", "Requests waiting for a connection"),
}
COUNTERS: dict[str, tuple[str, str]] = {
    "checkouts": ("requests_num", "Connections handed out"),
    "statements": ("statements", "Statements run through the pool"),
    "wait_ms": ("requests_wait_ms", "Total time requests waited for a connection, ms"),
    "connects": ("connections_num", "Connection attempts"),
    "connect_ms": ("connections_ms", "Total time spent connecting, ms"),
    "connect_errors": ("connections_errors", "Failed connection attempts"),
    "lost": ("connections_lost", "Connections found broken and replaced"),
    "checkout_timeouts": ("checkout_timeouts", "Checkouts that gave up (pool exhausted)"),
    "checks": ("checks", "Pre-ping checks run"),
    "checks_skipped": ("checks_skipped", "Pre-ping checks skipped (used recently)"),
    "checks_failed": ("checks_failed", "Pre-ping checks that failed"),
    "flushes": ("flushes", "Background checks of idle connections after a dead one"),
    "retries": ("retries", "Reads retried once after meeting a dead connection"),
    "query_timeouts": ("query_timeouts", "Statements that exceeded QUERY_TIMEOUT"),
    "overflow_closed": ("overflow_closed", "Overflow connections closed after a burst"),
}


def snapshot() -> dict[str, dict[str, Any]]:
    """Per alias: the gauges and counters above, plus ``replica`` health."""
    result: dict[str, dict[str, Any]] = {}
    for pool in registry.all_pools():
        stats = pool.get_stats()
        entry = result.setdefault(pool.alias, {"pools": 0, "prewarmed": True, **dict.fromkeys(GAUGES, 0),
                                               **dict.fromkeys(COUNTERS, 0)})
        entry["pools"] += 1
        entry["prewarmed"] = entry["prewarmed"] and pool.prewarmed
        for name, (key, _) in {**GAUGES, **COUNTERS}.items():
            entry[name] += int(stats.get(key, 0))
    for alias, state in health_report().items():
        result.setdefault(alias, {"pools": 0, "prewarmed": False, **dict.fromkeys(GAUGES, 0),
                                  **dict.fromkeys(COUNTERS, 0)})["replica"] = state
    for entry in result.values():
        entry["utilization"] = round(entry["in_use"] / entry["max_size"], 4) if entry["max_size"] else 0.0
    return result


class _Collector:
    """prometheus_client collector: reads :func:`snapshot` at scrape time."""

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily  # noqa: PLC0415 - optional

        data = snapshot()
        for name, (_, text) in GAUGES.items():
            family = GaugeMetricFamily(f"readonly_pool_{name}", text, labels=["alias"])
            for alias, entry in data.items():
                family.add_metric([alias], entry[name])
            yield family
        utilization = GaugeMetricFamily("readonly_pool_utilization", "in_use / max_size", labels=["alias"])
        for alias, entry in data.items():
            utilization.add_metric([alias], entry["utilization"])
        yield utilization
        for name, (_, text) in COUNTERS.items():
            counter = CounterMetricFamily(f"readonly_pool_{name}", text, labels=["alias"])
            for alias, entry in data.items():
                counter.add_metric([alias], entry[name])
            yield counter
        up = GaugeMetricFamily("readonly_pool_replica_up", "1 when the replica serves reads", labels=["alias"])
        lag = GaugeMetricFamily("readonly_pool_replica_lag_seconds", "Replication lag, s", labels=["alias"])
        lag_bytes = GaugeMetricFamily("readonly_pool_replica_lag_bytes", "Replication lag, bytes",
                                      labels=["alias"])
        for alias, entry in data.items():
            state = entry.get("replica")
            if state is None:
                continue
            up.add_metric([alias], 1.0 if state["usable"] else 0.0)
            if state["lag_seconds"] is not None:
                lag.add_metric([alias], state["lag_seconds"])
            if state["lag_bytes"] is not None:
                lag_bytes.add_metric([alias], state["lag_bytes"])
        yield up
        yield lag
        yield lag_bytes


_registered = False


def register_prometheus() -> bool:
    """Register the collector in prometheus_client's default registry (once)."""
    global _registered
    if _registered:
        return True
    try:
        from prometheus_client import REGISTRY  # noqa: PLC0415 - optional
    except ImportError:
        return False
    REGISTRY.register(_Collector())
    _registered = True
    return True


def prometheus_text() -> tuple[bytes, str] | None:
    """(body, content type) of prometheus_client's default registry, or None without it."""
    if not register_prometheus():
        return None
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest  # noqa: PLC0415 - optional

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST

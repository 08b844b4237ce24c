"""The health endpoint and the metrics endpoint."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import pytest
from django.test import AsyncClient, Client

from django_readonly_pool.testing.topology import Topology
from tests.conftest import arun
from tests.testapp.models import Book

pytestmark = pytest.mark.usefixtures("seeded", "db_access")


def health_now() -> tuple[int, dict[str, Any]]:
    async def main() -> tuple[int, dict[str, Any]]:
        client = AsyncClient()
        await Book.objects.acount()
        await Book.objects.filter(pages__gt=3).aexists()
        response = await client.get("/health/")
        return response.status_code, response.json()

    return arun(main())


def test_health_reports_every_pool_alias(topology: Topology) -> None:
    status, body = health_now()
    assert status == 200 and body["status"] == "healthy"
    assert set(body["aliases"]) == {"readonly", "readonly_bouncer"}
    entry = body["aliases"]["readonly"]
    for key in ("healthy", "prewarmed", "size", "available", "in_use", "waiting", "utilization",
                "statements", "connect_errors", "lost", "checkout_timeouts", "replica"):
        assert key in entry, key
    assert entry["statements"] >= 3  # the two reads and the health round trip
    assert entry["replica"]["status"] in ("up", "unknown")
    text = json.dumps(body)
    assert topology.password not in text and "p@ss" not in text


@pytest.mark.slow
def test_health_is_503_while_the_replica_is_stopped(topology: Topology) -> None:
    topology.replica.stop("fast")
    try:
        async def main() -> tuple[int, dict[str, Any]]:
            response = await AsyncClient().get("/health/")
            return response.status_code, response.json()

        status, body = arun(main())
    finally:
        topology.replica.start()
        topology.wait_for_replay()
    assert status == 503 and body["status"] == "unhealthy"
    assert body["aliases"]["readonly"]["healthy"] is False
    assert topology.password not in json.dumps(body)
    # back to 200 once the replica (and PgBouncer's server_login_retry) let it
    deadline = time.monotonic() + 30
    while (status := health_now()[0]) != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert status == 200


def test_metrics_in_prometheus_format() -> None:
    pytest.importorskip("prometheus_client")
    health_now()  # pools exist only inside that loop; counters are read from live pools

    async def main() -> str:
        await Book.objects.acount()
        return (await AsyncClient().get("/metrics")).content.decode()

    text = arun(main())
    for name in ("readonly_pool_size", "readonly_pool_available", "readonly_pool_in_use",
                 "readonly_pool_waiting", "readonly_pool_statements_total", "readonly_pool_wait_ms_total",
                 "readonly_pool_connect_errors_total", "readonly_pool_lost_total",
                 "readonly_pool_checkout_timeouts_total", "readonly_pool_utilization"):
        assert name in text, name
    assert 'alias="readonly"' in text


def test_metrics_json_without_prometheus_client(monkeypatch: pytest.MonkeyPatch) -> None:
    from django_readonly_pool import metrics

    monkeypatch.setattr(metrics, "_registered", False)
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    body = Client().get("/metrics").json()
    assert "metrics" in body and "prometheus_client" in body["note"]

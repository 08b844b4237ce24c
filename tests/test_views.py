"""The health endpoint and the metrics endpoint."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.test import AsyncClient, Client, override_settings

from django_readonly_pool.testing.topology import Topology
from tests.conftest import arun
from tests.test_pool import pools_made_by, settings_for
from tests.testapp.models import Book

pytestmark = pytest.mark.usefixtures("seeded", "db_access")


@pytest.fixture(scope="module")
def staff(django_db_setup: None, django_db_blocker: Any) -> Iterator[User]:
    with django_db_blocker.unblock():
        user = User.objects.db_manager("default").create_user("ops", is_staff=True)
        yield user
        user.delete(using="default")


def details_for_everyone() -> Any:
    return override_settings(READONLY_POOL={**settings.READONLY_POOL, "HEALTH_DETAILS": "always"})


def health_now(client: AsyncClient | None = None) -> tuple[int, dict[str, Any]]:
    async def main() -> tuple[int, dict[str, Any]]:
        nonlocal client
        client = client or AsyncClient()
        await Book.objects.acount()
        await Book.objects.filter(pages__gt=3).aexists()
        response = await client.get("/health/")
        return response.status_code, response.json()

    return arun(main())


def test_anonymous_callers_get_the_status_only(topology: Topology) -> None:
    status, body = health_now()
    assert (status, body) == (200, {"status": "healthy"})


@override_settings(MIDDLEWARE=settings.FULL_MIDDLEWARE)
def test_health_details_for_staff_users(topology: Topology, staff: User) -> None:
    client = AsyncClient()
    client.force_login(staff)
    status, body = health_now(client)
    assert status == 200 and set(body["aliases"]) == {"readonly", "readonly_bouncer"}
    not_staff = User.objects.db_manager("default").create_user("visitor")
    try:
        other = AsyncClient()
        other.force_login(not_staff)
        assert health_now(other)[1] == {"status": "healthy"}
    finally:
        not_staff.delete(using="default")
    with override_settings(READONLY_POOL={**settings.READONLY_POOL, "HEALTH_DETAILS": "never"}):
        assert health_now(client)[1] == {"status": "healthy"}


def test_a_pool_that_cannot_open_is_tried_once_per_interval(topology: Topology) -> None:
    """A wrong password: polling the health view costs one failed prewarm per
    HEALTH_CHECK_INTERVAL, not one per request."""
    wrong = settings_for(pool_size=3, max_overflow=0, prewarm=True, prewarm_timeout=5)
    offset = topology.replica.logfile.stat().st_size

    async def poll() -> list[tuple[int, dict[str, Any]]]:
        client = AsyncClient()
        out = []
        for _ in range(10):
            response = await client.get("/health/")
            out.append((response.status_code, response.json()))
        return out

    with override_settings(READONLY_POOL={**settings.READONLY_POOL, "HEALTH_DETAILS": "always",
                                             "HEALTH_CHECK_INTERVAL": 30.0}), \
            pools_made_by(wrong, password="not-the-password", application_name="health-poll"):
        started = time.monotonic()
        answers = arun(poll())
        elapsed = time.monotonic() - started
    assert elapsed < 30
    assert all(status == 503 for status, _ in answers)
    assert all("password authentication failed" in body["aliases"]["readonly"]["error"] for _, body in answers)
    assert topology.password not in json.dumps(answers) and "not-the-password" not in json.dumps(answers)
    time.sleep(0.3)
    with topology.replica.logfile.open() as log:
        log.seek(offset)
        failed = sum("password authentication failed" in line for line in log)
    assert 1 <= failed <= 3, failed  # one prewarm of 3 connections, at most


def test_health_reports_every_pool_alias(topology: Topology) -> None:
    with details_for_everyone():
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

        with details_for_everyone():
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

"""diagnose(): what check_readonly_pool reports, called in-process on the real servers."""

from __future__ import annotations

import asyncio
import copy
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.conf import settings
from django.db import connections

from django_readonly_pool import aliases
from django_readonly_pool.conf import OPTIONS_KEY
from django_readonly_pool.diagnose import HEALTHY, MISCONFIGURED, UNHEALTHY, diagnose, overall
from django_readonly_pool.testing.proxy import TcpProxy
from django_readonly_pool.testing.topology import Topology
from tests.conftest import add_pool_alias, remove_pool_alias

pytestmark = pytest.mark.usefixtures("db_access")
POOL = "FIDES__DATABASE__ASYNC_READONLY_DATABASE_"


def run(alias: str, **kwargs: Any) -> dict[str, Any]:
    return asyncio.run(diagnose(alias, **kwargs))


@contextmanager
def pool_alias(**variables: str) -> Iterator[str]:
    """A pool alias on the replica, configured by these environment variables."""
    alias = "diagnosed"
    add_pool_alias(alias, {**os.environ, **variables})
    try:
        yield alias
    finally:
        remove_pool_alias(alias)


def test_a_healthy_replica(topology: Topology) -> None:
    report = run("readonly", workers=3)
    assert report["status"] == HEALTHY, report["errors"]
    assert report["target"]["password"] == "********" and topology.password not in repr(report)
    server = report["server"]
    assert server["in_recovery"] is True and server["pooler"] is False
    assert server["transaction_read_only"] is True  # a hot standby
    assert server["address"] == f"127.0.0.1:{topology.replica.port}"
    replication = report["replication"]
    assert replication["measured_against"] == "primary" and replication["lag_bytes"] >= 0
    size = report["settings"]["pool_size"] + report["settings"]["max_overflow"]
    capacity = report["capacity"]
    assert (capacity["per_process"], capacity["workers"]) == (2 * size + 1, 3)
    assert capacity["needed"] == 3 * (2 * size + 1)
    assert capacity["headroom"] == capacity["available"] - capacity["needed"]
    assert report["round_trip_ms"]["samples"] == 20


def test_through_pgbouncer_the_pooler_is_seen(topology: Topology) -> None:
    report = run("readonly_bouncer")
    assert report["server"]["pooler"] is True
    # PgBouncer in front of a hot standby: read-only sessions, server-side cursors off.
    assert report["server"]["transaction_read_only"] is True
    assert report["status"] == HEALTHY and report["warnings"] == [], report["warnings"]


def test_every_connect_is_timed_and_reported() -> None:
    with pool_alias(**{POOL + "PREWARM": "true", POOL + "POOL_SIZE": "4"}) as alias:
        seen: list[tuple[str, int, int]] = []
        report = run(alias, progress=lambda step, done, total: seen.append((step, done, total)))
    assert report["status"] == HEALTHY, report["errors"]
    assert report["prewarm"]["enabled"] is True and report["prewarm"]["connections"] == 4
    assert report["connect_ms"]["samples"] == 4
    assert seen == [("connect", n, 4) for n in range(1, 5)]


def test_without_prewarm_a_few_connections_are_measured() -> None:
    with pool_alias(**{POOL + "PREWARM": "false", POOL + "POOL_SIZE": "20"}) as alias:
        report = run(alias)
    assert report["status"] == HEALTHY, report["errors"]
    assert report["prewarm"] == {"enabled": False, "connections": 0, "seconds": None}
    assert report["connect_ms"]["samples"] == 5


def test_an_unreachable_replica_is_unhealthy_with_its_cause(topology: Topology) -> None:
    with TcpProxy(topology.replica.port) as proxy:
        dead = proxy.port  # nothing listens there any more
    with pool_alias(FIDES__DATABASE__READONLY_PORT=str(dead), **{POOL + "PREWARM": "false",
                                                               POOL + "CHECKOUT_TIMEOUT": "2"}) as alias:
        report = run(alias)
    assert report["status"] == UNHEALTHY
    message = " ".join(e["message"] for e in report["errors"])
    assert "refused" in message.lower(), message
    assert topology.password not in repr(report)
    assert report["server"] is None


def test_a_bad_pool_setting_is_misconfigured() -> None:
    alias = "diagnosed_bad"
    entry = copy.deepcopy(connections.settings["readonly"])
    entry["OPTIONS"] = {**entry["OPTIONS"], OPTIONS_KEY: {**entry["OPTIONS"][OPTIONS_KEY], "pool_size": "many"}}
    connections.settings[alias] = entry
    settings.DATABASES[alias] = entry
    try:
        report = run(alias)
    finally:
        remove_pool_alias(alias)
    assert report["status"] == MISCONFIGURED
    assert report["errors"] and all(e["id"] == "readonly_pool.E002" for e in report["errors"])
    assert "pool_size" in report["errors"][0]["message"]
    assert report["server"] is None and report["capacity"] is None


@pytest.mark.parametrize(("statuses", "expected"), [
    ([HEALTHY, HEALTHY], (HEALTHY, 0)),
    ([HEALTHY, UNHEALTHY], (UNHEALTHY, 1)),
    ([UNHEALTHY, MISCONFIGURED], (MISCONFIGURED, 2)),
])
def test_the_worst_alias_decides_the_exit_code(statuses: list[str], expected: tuple[str, int]) -> None:
    assert overall([{"status": s} for s in statuses]) == expected


def test_the_cached_alias_list_follows_added_aliases() -> None:
    before = aliases.pool_aliases()
    with pool_alias() as alias:
        assert alias in aliases.pool_aliases() and alias not in before
    assert aliases.pool_aliases() == before

"""Many replicas: ``READONLY_SERVER`` lists two streaming standbys (libpq
multi-host) with ``load_balance_hosts=random`` and
``target_session_attrs=standby``. Reads spread over both; with one stopped the
other serves everything; once it is back, both serve again.

The configuration goes through :func:`databases_from_env` exactly as a user's
settings would; each read asks the server which port answered it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from typing import Any

import pytest
from django.db import OperationalError, connections
from django.test import override_settings

from django_readonly_pool import databases_from_env, run
from django_readonly_pool.health import monitor
from django_readonly_pool.pool import open_pools
from django_readonly_pool.testing.topology import PostgresServer, Topology
from tests.conftest import arun
from tests.test_pool import pools_made_by, settings_for

pytestmark = [pytest.mark.usefixtures("seeded", "db_access"), pytest.mark.slow]

APP = "many-replicas"
ROUTING = {"TESTS_READ_PRIMARY": False, "READONLY_ALIASES": ["readonly"], "FALLBACK": "fail"}


@pytest.fixture(scope="module")
def standbys(topology: Topology, django_db_setup: Any, django_db_blocker: Any) -> Any:
    with django_db_blocker.unblock():
        first, second = topology.make_standby("standby-a"), topology.make_standby("standby-b")
    yield first, second
    for standby in (first, second):
        standby.stop("immediate")


def multi_host_conninfo(topology: Topology, first: PostgresServer, second: PostgresServer) -> dict[str, Any]:
    """What ``databases_from_env`` makes of the two standbys, as libpq keywords."""
    environ = topology.environ() | {
        "FIDES__DATABASE__READONLY_SERVER": "127.0.0.1,127.0.0.1",
        "FIDES__DATABASE__READONLY_PORT": f"{first.port},{second.port}",
        "FIDES__DATABASE__READONLY_PARAMS": json.dumps(
            {"load_balance_hosts": "random", "target_session_attrs": "standby"}),
    }
    alias = databases_from_env(environ)["readonly"]
    assert alias["ENGINE"] == "django_readonly_pool.backend"
    options = {k: v for k, v in alias["OPTIONS"].items() if k != "readonly_pool"}
    assert options == {"load_balance_hosts": "random", "target_session_attrs": "standby"}
    return {"host": alias["HOST"], "port": alias["PORT"], "application_name": APP, **options}


def answering_port() -> int:
    with connections["readonly"].cursor() as cursor:
        cursor.execute("SELECT inet_server_port()")
        return int(cursor.fetchone()[0])


def backends_by_server(*servers: PostgresServer) -> dict[int, int]:
    counts = {}
    for server in servers:
        if server.is_running():
            counts[server.port] = int(server.sql(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", [APP], dbname="postgres")[0][0])
        else:
            counts[server.port] = 0
    return counts


async def reads(count: int, tasks: int) -> tuple[Counter[int], Counter[str]]:
    """*count* reads from *tasks* concurrent tasks: answering ports, errors."""
    ports: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    remaining = count

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            try:
                ports[await run(answering_port)] += 1
            except OperationalError as exc:
                errors[type(exc).__name__] += 1
            await asyncio.sleep(0)

    await asyncio.gather(*(worker() for _ in range(tasks)))
    return ports, errors


def test_reads_spread_fail_over_and_come_back(topology: Topology, standbys: tuple[PostgresServer, ...]) -> None:
    first, second = standbys
    conninfo = multi_host_conninfo(topology, first, second)
    settings = settings_for(pool_size=16, max_overflow=0, prewarm=True, checkout_timeout=5,
                            max_lifetime=1.0, pre_ping=True)
    # the other standby of the topology (the default replica) is not in the list
    log: dict[str, Any] = {}

    async def main() -> None:
        pool = (await open_pools(["readonly"]))["readonly"]
        # 1. both standbys hold connections and answer reads
        log["backends_start"] = await asyncio.to_thread(backends_by_server, first, second)
        log["spread"] = await reads(400, 16)

        # 2. one stopped: after the dead connections are found, the other serves everything
        await asyncio.to_thread(first.stop, "immediate")
        log["during_outage"] = await reads(400, 16)
        log["after_outage"] = await reads(400, 16)
        for _ in range(100):  # the pool replaces what it lost in the background
            log["backends_outage"] = await asyncio.to_thread(backends_by_server, first, second)
            if log["backends_outage"][second.port] >= 16:
                break
            await asyncio.sleep(0.1)

        # 3. back: connections are recycled (max_lifetime) and land on both again
        await asyncio.to_thread(first.start)
        await asyncio.to_thread(topology.wait_for_replay, first)
        deadline = time.monotonic() + 30
        seen: Counter[int] = Counter()
        while time.monotonic() < deadline:
            ports, _ = await reads(200, 16)
            seen = ports
            if ports[first.port] and ports[second.port]:
                break
            await asyncio.sleep(0.3)
        log["back"] = seen
        log["stats"] = pool.get_stats()

    monitor.stop()
    with override_settings(READONLY_POOL=ROUTING), pools_made_by(settings, **conninfo):
        arun(main())
    monitor.stop()

    start = log["backends_start"]
    assert start[first.port] + start[second.port] == 16
    assert start[first.port] > 0 and start[second.port] > 0, start
    ports, errors = log["spread"]
    assert not errors
    assert set(ports) == {first.port, second.port}, ports  # never the primary: target_session_attrs=standby
    assert min(ports.values()) >= 400 // 20, ports  # a real spread, not one straggler

    ports, errors = log["during_outage"]
    assert set(ports) <= {second.port}
    assert set(errors) <= {"OperationalError"}, errors  # at worst a clear error, never a hang
    ports, errors = log["after_outage"]
    assert ports == Counter({second.port: 400}) and not errors, (ports, errors)
    assert log["backends_outage"][second.port] == 16

    back = log["back"]
    assert back[first.port] > 0 and back[second.port] > 0, back
    assert log["stats"]["in_use"] == 0

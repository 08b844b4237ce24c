"""Faults against the real topology, under concurrent load from the async path.

Each test stops, kills, freezes or fills a real server and checks what the
application sees: clear errors (or a fallback), bounded waits, recovery without
a restart, and no leaked connection (client gauges and the server's backends).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from django.db import OperationalError, connections
from django.test import override_settings

from django_readonly_pool import PoolExhausted, PrewarmFailed, QueryTimeout, ReplicaUnavailable, run
from django_readonly_pool.health import monitor
from django_readonly_pool.pool import ReadPool, open_pools
from django_readonly_pool.testing.proxy import TcpProxy
from django_readonly_pool.testing.topology import Topology
from tests.conftest import arun
from tests.test_pool import pools_made_by, replica_backends, settings_for, settled_backends, wait_until
from tests.testapp.models import Book

pytestmark = [pytest.mark.usefixtures("seeded", "db_access"), pytest.mark.slow]

BASE = {"TESTS_READ_PRIMARY": False, "READONLY_ALIASES": ["readonly"], "HEALTH_CHECK_INTERVAL": 0.1}


@pytest.fixture(autouse=True)
def _fresh_monitor() -> Any:
    monitor.stop()
    yield
    monitor.stop()


def first_pk() -> int:
    return Book.objects.using("default").order_by("pk").values_list("pk", flat=True)[0]


async def load(seconds: float, tasks: int, read: Callable[[], Any], during: Callable[[], Any]) -> dict[str, Any]:
    """Concurrent reads for *seconds* while *during* runs in a thread."""
    stop_at = time.monotonic() + seconds
    outcomes: list[tuple[str, float, float]] = []  # (kind, started, waited)

    async def reader() -> None:
        while time.monotonic() < stop_at:
            started = time.monotonic()
            try:
                await read()
                kind = "ok"
            except OperationalError as exc:
                kind = type(exc).__name__
            outcomes.append((kind, started, time.monotonic() - started))
            await asyncio.sleep(0.002)

    await asyncio.gather(*(reader() for _ in range(tasks)), asyncio.to_thread(during))
    return {
        "outcomes": outcomes,
        "max_wait": max(o[2] for o in outcomes),
        "errors": sorted({o[0] for o in outcomes if o[0] != "ok"}),
    }


def settle_pool(pool: ReadPool) -> dict[str, int]:
    return pool.get_stats()


# -- 1. replica killed mid-load -------------------------------------------------- #


def test_replica_killed_mid_load_recovers_without_restart(topology: Topology) -> None:
    app = "fault-kill"
    checkout = 2.0
    settings = settings_for(pool_size=4, max_overflow=4, prewarm=True, checkout_timeout=checkout,
                            autocommit=True, pool_skip_rollback=True)
    pk = first_pk()
    phases: dict[str, float] = {}

    def outage() -> None:
        time.sleep(0.8)
        phases["killed"] = time.monotonic()
        topology.replica.kill()
        time.sleep(1.5)
        topology.replica.start()
        phases["restarted"] = time.monotonic()
        time.sleep(3.0)

    async def main() -> dict[str, Any]:
        pool = (await open_pools(["readonly"]))["readonly"]
        result = await load(6.0, 12, lambda: Book.objects.aget(pk=pk), outage)
        for _ in range(100):
            if pool.in_use == 0:
                break
            await asyncio.sleep(0.05)
        result["stats"] = pool.get_stats()
        result["backends"] = await asyncio.to_thread(replica_backends, topology, app)
        return result

    with override_settings(READONLY_POOL={**BASE, "FALLBACK": "fail"}), pools_made_by(settings, application_name=app):
        result = arun(main())
    outcomes = result["outcomes"]
    # in-flight and following reads failed with clear OperationalErrors ...
    assert result["errors"] and set(result["errors"]) <= {"OperationalError", "ReplicaUnavailable", "PoolExhausted"}
    # ... none waited past the checkout timeout (plus a query's time) ...
    assert result["max_wait"] < checkout + 3
    # ... and reads succeed again after the restart, in the same process
    recovered = [o for o in outcomes if o[0] == "ok" and o[1] > phases["restarted"]]
    assert recovered, "no successful read after the restart"
    first_ok = min(o[1] for o in recovered)
    assert first_ok - phases["restarted"] < 5.0
    assert result["stats"]["in_use"] == 0  # nothing leaked on the client
    assert result["backends"] <= 8  # nor on the server: at most POOL_SIZE + MAX_OVERFLOW
    topology.wait_for_replay()


def test_replica_killed_with_fallback_serves_from_the_primary(topology: Topology) -> None:
    pk = first_pk()

    def outage() -> None:
        time.sleep(0.5)
        topology.replica.kill()
        time.sleep(1.5)
        topology.replica.start()
        time.sleep(2.0)

    async def main() -> dict[str, Any]:
        served: list[str | None] = []

        async def read() -> None:
            book = await Book.objects.aget(pk=pk)
            served.append(book._state.db)

        result = await load(5.0, 8, read, outage)
        result["served"] = served
        return result

    with override_settings(READONLY_POOL={**BASE, "FALLBACK": "primary"}):
        result = arun(main())
    assert "default" in result["served"] and result["served"][-1] == "readonly"
    assert result["max_wait"] < 30
    topology.wait_for_replay()


# -- 2. PgBouncer restarted; a dead replica behind PgBouncer ------------------------ #


def test_pgbouncer_restarted_under_load(topology: Topology) -> None:
    assert topology.bouncer is not None
    pk = first_pk()
    phases: dict[str, float] = {}

    def outage() -> None:
        time.sleep(0.5)
        topology.bouncer.kill()
        time.sleep(1.0)
        topology.bouncer.start()
        phases["restarted"] = time.monotonic()
        time.sleep(2.5)

    async def main() -> dict[str, Any]:
        settings = settings_for(pool_size=4, max_overflow=2, prewarm=True, checkout_timeout=2.0)
        with pools_made_by(settings):
            pool = (await open_pools(["readonly_bouncer"]))["readonly_bouncer"]
            result = await load(4.5, 8, lambda: Book.objects.using("readonly_bouncer").aget(pk=pk), outage)
            result["in_use"] = pool.in_use
            return result

    with override_settings(READONLY_POOL={**BASE, "FALLBACK": "fail"}):
        result = arun(main())
    assert result["max_wait"] < 2.0 + 3
    assert any(o[0] == "ok" and o[1] > phases["restarted"] for o in result["outcomes"])
    assert result["in_use"] == 0


def test_dead_replica_behind_pgbouncer_fails_fast(topology: Topology) -> None:
    """PgBouncer's query_wait_timeout (5 s here; 120 s by default) bounds the wait,
    well inside CHECKOUT_TIMEOUT."""
    pk = first_pk()

    async def main() -> tuple[str, float]:
        settings = settings_for(pool_size=2, max_overflow=0, prewarm=True, checkout_timeout=30.0)
        with pools_made_by(settings):
            await open_pools(["readonly_bouncer"])
            await asyncio.to_thread(topology.replica.stop, "immediate")
            started = time.monotonic()
            try:
                await Book.objects.using("readonly_bouncer").aget(pk=pk)
            except OperationalError as exc:
                return str(exc), time.monotonic() - started
            return "no error", time.monotonic() - started

    with override_settings(READONLY_POOL={**BASE, "FALLBACK": "fail"}):
        try:
            message, waited = arun(main())
        finally:
            topology.replica.start()
            topology.wait_for_replay()
    assert message != "no error"
    assert waited < 10.0  # not 120 s, and well inside the 30 s checkout timeout


def test_a_dead_replica_behind_pgbouncer_is_one_warning(topology: Topology, caplog: pytest.LogCaptureFixture) -> None:
    """PgBouncer accepts every login and then answers "server login has been failing":
    a login that cannot be configured does not end the outage, so it is not logged again
    for every attempt (CI once saw twelve)."""
    caplog.set_level(logging.INFO, logger="django_readonly_pool")
    pk = first_pk()

    async def main() -> int:
        failures = 0
        with pools_made_by(settings_for(pool_size=2, max_overflow=2, prewarm=False, checkout_timeout=1.5)):
            await open_pools(["readonly_bouncer"])
            stop_at = time.monotonic() + 6.0
            while time.monotonic() < stop_at:
                try:
                    await Book.objects.using("readonly_bouncer").aget(pk=pk)
                except Exception:  # down: what is counted is the log
                    failures += 1
                await asyncio.sleep(0.05)
        return failures

    async def warm() -> bool:  # PgBouncer now knows the server's parameters: it lets logins in
        with pools_made_by(settings_for(pool_size=1, max_overflow=0, prewarm=False, checkout_timeout=2)):
            await open_pools(["readonly_bouncer"])
            for _ in range(100):  # a test before may have left it in server_login_retry
                with contextlib.suppress(Exception):
                    return bool(await Book.objects.using("readonly_bouncer").aget(pk=pk))
                await asyncio.sleep(0.1)
        return False

    assert arun(warm())
    caplog.clear()
    topology.replica.stop("immediate")
    try:
        with override_settings(READONLY_POOL={**BASE, "FALLBACK": "fail"}):
            failures = arun(main())
    finally:
        topology.replica.start()
        topology.wait_for_replay()
    warned = [r.getMessage() for r in caplog.records
              if r.name == "django_readonly_pool" and "'readonly_bouncer' cannot connect" in r.getMessage()]
    again = [r.getMessage() for r in caplog.records if "'readonly_bouncer' connects to" in r.getMessage()]
    assert failures >= 3
    assert len(warned) == 1, warned
    assert again == []  # PgBouncer's logins never reached a server


# -- 3. a frozen network ------------------------------------------------------------ #


def test_frozen_network_queries_and_checks_time_out(topology: Topology) -> None:
    pk = first_pk()
    with TcpProxy(topology.replica.port) as proxy:
        settings = settings_for(pool_size=2, max_overflow=0, prewarm=True, query_timeout=1.0, check_timeout=0.5,
                                pre_ping=True, pre_ping_interval=0.0, checkout_timeout=3.0)

        async def main() -> dict[str, Any]:
            pool = (await open_pools(["readonly"]))["readonly"]
            await Book.objects.aget(pk=pk)  # the network works
            proxy.freeze()
            timings: dict[str, Any] = {}
            started = time.monotonic()
            with pytest.raises(OperationalError) as info:
                await run(lambda: list(Book.objects.raw("SELECT id FROM testapp_book LIMIT 1")))
            timings["first"] = (time.monotonic() - started, type(info.value).__name__)
            started = time.monotonic()
            with pytest.raises(OperationalError) as info:
                await Book.objects.aget(pk=pk)
            timings["second"] = (time.monotonic() - started, type(info.value).__name__)
            proxy.thaw()
            proxy.close_all()
            timings["stats"] = pool.get_stats()
            return timings

        with override_settings(READONLY_POOL={**BASE, "FALLBACK": "fail"}), pools_made_by(settings, port=proxy.port):
            timings = arun(main())
    # pings are bounded by CHECK_TIMEOUT (0.5 s each, at most a few before the
    # checkout gives up) and the statement by QUERY_TIMEOUT (1 s): nothing hangs
    assert timings["first"][0] < 3.0 + 2.0 and timings["second"][0] < 3.0 + 2.0
    assert timings["stats"]["checks_failed"] + timings["stats"]["query_timeouts"] >= 1


def test_query_timeout_on_a_slow_statement() -> None:
    settings = settings_for(pool_size=1, max_overflow=0, query_timeout=0.5)

    async def main() -> tuple[float, int]:
        pool = (await open_pools(["readonly"]))["readonly"]
        started = time.monotonic()
        with pytest.raises(QueryTimeout, match=r"QUERY_TIMEOUT=0\.5"):
            await run(lambda: list(Book.objects.raw("SELECT id, pg_sleep(5) FROM testapp_book LIMIT 1")))
        waited = time.monotonic() - started
        await Book.objects.acount()  # the pool serves on, with a fresh connection
        return waited, pool.get_stats()["query_timeouts"]

    with pools_made_by(settings):
        waited, timeouts = arun(main())
    assert waited < 2.0 and timeouts == 1


# -- 4. replica unreachable at startup ------------------------------------------- #


def test_unreachable_at_startup_with_prewarm_fails_within_the_deadline(topology: Topology) -> None:
    with TcpProxy(topology.replica.port) as proxy:
        proxy.freeze()  # accepts, never answers: the worst case for a deadline
        settings = settings_for(pool_size=3, prewarm=True, prewarm_timeout=1.5, connect_timeout=10)
        started = time.monotonic()
        with pools_made_by(settings, port=proxy.port), pytest.raises(PrewarmFailed) as info:
            arun(open_pools(["readonly"]))
        waited = time.monotonic() - started
    assert waited < 1.5 + 2.0
    assert f"127.0.0.1:{proxy.port}" in str(info.value) and "PREWARM_TIMEOUT" in str(info.value)


def test_unreachable_at_startup_without_prewarm_serves_when_it_appears(topology: Topology) -> None:
    pk = first_pk()
    topology.replica.stop("fast")
    settings = settings_for(pool_size=2, max_overflow=0, prewarm=False, checkout_timeout=1.0)

    async def main() -> tuple[str, float]:
        with pytest.raises(ReplicaUnavailable):  # started fine; reads fail clearly meanwhile
            await Book.objects.aget(pk=pk)
        await asyncio.to_thread(topology.replica.start)
        appeared = time.monotonic()
        while True:
            try:
                book = await Book.objects.aget(pk=pk)
                return book._state.db, time.monotonic() - appeared
            except OperationalError:
                await asyncio.sleep(0.1)

    try:
        with override_settings(READONLY_POOL={**BASE, "FALLBACK": "fail"}), pools_made_by(settings):
            db, after = arun(main())
    finally:
        if not topology.replica.is_running():
            topology.replica.start()
        topology.wait_for_replay()
    assert db == "readonly" and after < 5.0


# -- 5. pool exhausted ------------------------------------------------------------- #


def test_exhausted_pool_raises_a_clear_error_after_the_checkout_timeout() -> None:
    settings = settings_for(pool_size=2, max_overflow=1, prewarm=True, checkout_timeout=0.5)

    def slow() -> Any:
        return list(Book.objects.raw("SELECT id, pg_sleep(2) FROM testapp_book LIMIT 1"))

    async def main() -> tuple[str, float]:
        await open_pools(["readonly"])
        busy = [asyncio.ensure_future(run(slow)) for _ in range(3)]  # size + overflow
        await asyncio.sleep(0.3)
        started = time.monotonic()
        try:
            await Book.objects.acount()
        except PoolExhausted as exc:
            message = str(exc)
        else:
            message = "no error"
        waited = time.monotonic() - started
        await asyncio.gather(*busy)
        return message, waited

    with pools_made_by(settings):
        message, waited = arun(main())
    assert 0.4 < waited < 1.5
    for text in ("'readonly'", "exhausted", "POOL_SIZE=2", "MAX_OVERFLOW=1",
                 "FIDES__DATABASE__ASYNC_READONLY_DATABASE_POOL_SIZE", "_CHECKOUT_TIMEOUT"):
        assert text in message, text
    assert issubclass(PoolExhausted, OperationalError)


# -- 6. a storm of client cancellations ------------------------------------------ #


def test_storm_of_cancellations_loses_nothing(topology: Topology) -> None:
    app = "fault-storm"
    settings = settings_for(pool_size=6, max_overflow=6, overflow_idle_timeout=0.2, prewarm=True, checkout_timeout=10)
    rng = random.Random(2026)
    pk = first_pk()

    async def victim(kind: int) -> Any:
        if kind == 0:
            return await Book.objects.aget(pk=pk)
        if kind == 1:
            return await Book.objects.filter(pages__gt=10).acount()
        if kind == 2:
            return await run(lambda: list(Book.objects.raw("SELECT id, pg_sleep(0.003) FROM testapp_book LIMIT 3")))
        return [b async for b in Book.objects.order_by("pk").aiterator(chunk_size=7)]

    async def main() -> dict[str, Any]:
        pool = (await open_pools(["readonly"]))["readonly"]
        cancelled = 0
        for _ in range(100):
            tasks = [asyncio.ensure_future(victim(rng.randrange(4))) for _ in range(50)]
            await asyncio.sleep(rng.uniform(0, 0.005))
            for task in tasks:
                if not task.done() and rng.random() < 0.8:
                    task.cancel()
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
            cancelled += sum(isinstance(o, asyncio.CancelledError) for o in outcomes)
        served = await asyncio.gather(*(Book.objects.aget(pk=pk) for _ in range(100)))
        for _ in range(100):
            if pool.in_use == 0 and pool.get_stats()["pool_size"] == 6:
                break
            await asyncio.sleep(0.05)
        return {"cancelled": cancelled, "served": len(served), **pool.get_stats(),
                "backends": await asyncio.to_thread(settled_backends, topology, app, 6)}

    with pools_made_by(settings, application_name=app):
        result = arun(main())
    assert result["cancelled"] >= 2000
    assert result["served"] == 100
    assert result["in_use"] == 0 and result["pool_available"] == result["pool_size"] == 6
    assert result["backends"] == 6
    assert wait_until(lambda: replica_backends(topology, app) == 0)


# -- 7. the server's max_connections reached ------------------------------------- #


AS_FILLER = {"user": "filler", "password": "filler-Secret-7731"}


@pytest.fixture
def filled_replica(topology: Topology) -> Any:
    """Take every connection slot of the replica but *free* ones.

    Pools under test connect as the same ordinary role (``AS_FILLER``): a
    superuser could still use the reserved slots."""
    topology.primary.sql("DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'filler') THEN "
                         "CREATE ROLE filler LOGIN; END IF; "
                         "ALTER ROLE filler PASSWORD 'filler-Secret-7731'; END $$", dbname="postgres")
    with connections["default"].cursor() as cursor:  # the test database: let the role read
        cursor.execute("GRANT SELECT ON ALL TABLES IN SCHEMA public TO filler")
    topology.wait_for_replay()
    held: list[psycopg.Connection[Any]] = []

    def fill(free: int) -> None:
        max_conn, reserved = topology.replica.sql(
            "SELECT current_setting('max_connections')::int, current_setting('superuser_reserved_connections')::int",
            dbname="postgres")[0]
        used = topology.replica.sql("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'",
                                    dbname="postgres")[0][0]
        used -= 1  # this query's own connection, closed by now
        for _ in range(max_conn - reserved - used - free):
            held.append(psycopg.connect(host="127.0.0.1", port=topology.replica.port, user="filler",
                                        password=AS_FILLER["password"], dbname="postgres", autocommit=True))

    yield fill
    for conn in held:
        conn.close()


def test_max_connections_reached_during_prewarm(topology: Topology, filled_replica: Any) -> None:
    filled_replica(2)
    settings = settings_for(pool_size=6, prewarm=True, prewarm_timeout=10)
    with pools_made_by(settings, **AS_FILLER), pytest.raises(PrewarmFailed) as info:
        arun(open_pools(["readonly"]))
    message = str(info.value)
    assert "too many clients" in message or "remaining connection slots" in message
    assert topology.password not in message and AS_FILLER["password"] not in message


def test_max_connections_reached_during_growth_keeps_what_it_has(
    topology: Topology, filled_replica: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    app = "fault-full"
    pk = first_pk()
    settings = settings_for(pool_size=2, max_overflow=10, prewarm=True, checkout_timeout=10)

    async def main() -> dict[str, Any]:
        pool = (await open_pools(["readonly"]))["readonly"]
        await asyncio.to_thread(filled_replica, 1)  # room for one more connection only
        results = await asyncio.gather(*(run(lambda: list(Book.objects.raw(
            "SELECT id, pg_sleep(0.05) FROM testapp_book WHERE id = %s", [pk]))) for _ in range(24)))
        return {"served": len(results), **pool.get_stats(),
                "backends": await asyncio.to_thread(replica_backends, topology, app)}

    caplog.set_level("WARNING", logger="django_readonly_pool")
    with pools_made_by(settings, application_name=app, **AS_FILLER):
        result = arun(main())
    assert result["served"] == 24  # every read served by the connections it has
    assert result["backends"] <= 3
    assert any("too many clients" in r.getMessage() or "remaining connection slots" in r.getMessage()
               for r in caplog.records)


# -- an outage in the logs: a handful of lines, not hundreds ------------------------------- #


def _noisy(records: list[logging.LogRecord]) -> list[str]:
    return [f"{r.name} {r.levelname} {r.getMessage()[:120]}" for r in records if r.levelno >= logging.WARNING]


def test_connects_cancelled_at_loop_end_are_silent(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.INFO, logger="psycopg.pool")  # the test settings quiet it (ERROR)
    with pools_made_by(settings_for(pool_size=20, max_overflow=0, prewarm=False)):
        async def main() -> None:
            await open_pools(["readonly"])  # 20 connects start in the background ...

        arun(main())  # ... and the loop ends at once
    assert _noisy(caplog.records) == []


@pytest.mark.slow
def test_an_outage_is_a_handful_of_log_lines(topology: Topology, caplog: pytest.LogCaptureFixture) -> None:
    """Replica down for 4 s under async and sync reads and health polling (both pools
    reconnecting every 2 s): the log says down, retrying, up; not every attempt."""
    from django.test import AsyncClient

    caplog.set_level(logging.INFO)
    caplog.set_level(logging.INFO, logger="psycopg.pool")  # the test settings quiet it (ERROR)
    ids = list(Book.objects.using("default").values_list("pk", flat=True)[:10])

    async def main() -> None:
        stop_at = time.monotonic() + 9.0
        client = AsyncClient()

        async def reader() -> None:
            while time.monotonic() < stop_at:
                with contextlib.suppress(Exception):
                    await Book.objects.aget(pk=ids[0])
                await asyncio.sleep(0.01)

        def sync_reader() -> None:
            while time.monotonic() < stop_at:
                with contextlib.suppress(Exception):
                    Book.objects.get(pk=ids[1])
                connections.close_all()
                time.sleep(0.02)

        async def health() -> None:
            while time.monotonic() < stop_at:
                await client.get("/health/")
                await asyncio.sleep(0.2)

        def outage() -> None:
            time.sleep(2.0)
            topology.replica.stop("immediate")
            time.sleep(4.0)
            topology.replica.start()

        await asyncio.gather(*(reader() for _ in range(8)), health(), asyncio.to_thread(sync_reader),
                             asyncio.to_thread(outage))

    with pools_made_by(settings_for(pool_size=4, max_overflow=4, checkout_timeout=2)), \
            override_settings(READONLY_POOL={**BASE, "HEALTH_CHECK_INTERVAL": 0.2, "FALLBACK": "primary"}):
        arun(main())
    topology.wait_for_replay()
    noisy = _noisy(caplog.records)
    assert any("is down" in line for line in noisy), noisy  # said once ...
    assert len(noisy) <= 8, "\n".join(noisy)  # ... and not for every attempt, pool and request
    assert not [line for line in noisy if line.startswith("django.request")], noisy  # no 503 at ERROR

"""The reference's pool settings, each observed on the real replica."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.db import connections

from django_readonly_pool import run
from django_readonly_pool.conf import PoolSettings
from django_readonly_pool.errors import PrewarmFailed
from django_readonly_pool.health import monitor
from django_readonly_pool.pool import ReadPool, open_pools, registry
from django_readonly_pool.testing.proxy import TcpProxy
from django_readonly_pool.testing.topology import Topology
from tests.conftest import arun
from tests.testapp.models import Book, Review

pytestmark = pytest.mark.usefixtures("seeded", "db_access")

COUNTER = "stmt_counter"
COUNTER_PASSWORD = "c0unt:er@'pw"
_apps = itertools.count()


@pytest.fixture(scope="module")
def counter_role(topology: Topology, seeded: None) -> str:
    """A role whose every statement the server logs (log_statement = all)."""
    dbname = connections["default"].settings_dict["NAME"]
    exists = topology.primary.sql("SELECT 1 FROM pg_roles WHERE rolname = %s", [COUNTER], dbname="postgres")
    if not exists:
        topology.primary.sql(f"CREATE ROLE {COUNTER} LOGIN PASSWORD %s", [COUNTER_PASSWORD], dbname="postgres")
        topology.primary.sql(f"ALTER ROLE {COUNTER} SET log_statement = 'all'", dbname="postgres")
    topology.primary.sql(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {COUNTER}", dbname=dbname)
    topology.wait_for_replay()
    return COUNTER


def settings_for(**changes: Any) -> PoolSettings:
    return dataclasses.replace(connections["readonly"].readonly_pool_settings, **changes)


@contextmanager
def pools_made_by(settings: PoolSettings, **conninfo: Any) -> Iterator[None]:
    """Pools opened meanwhile use *settings* and *conninfo*."""
    original = registry.factory
    registry.factory = lambda alias: connections[alias].make_read_pool(settings, **conninfo)
    try:
        yield
    finally:
        registry.factory = original


def replica_backends(topology: Topology, app: str, state: str | None = None) -> int:
    query = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
    params: list[Any] = [app]
    if state:
        query += " AND state = %s"
        params.append(state)
    return int(topology.replica.sql(query, params, dbname="postgres")[0][0])


def settled_backends(topology: Topology, app: str, expected: int, timeout: float = 10.0) -> int:
    """The server's count of ``app``'s backends once it stops moving towards ``expected``.

    A connection the client closed leaves its backend in pg_stat_activity until that
    process has exited, which the server does on its own time; a leaked connection
    stays for good. So wait (bounded) for ``expected`` and report what is there.
    """
    wait_until(lambda: replica_backends(topology, app) == expected, timeout)
    return replica_backends(topology, app)


def wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def first_pk() -> int:
    return Book.objects.using("default").order_by("pk").values_list("pk", flat=True)[0]


async def settle(pool: ReadPool) -> None:
    """Wait until every connection is back (resets run in psycopg's workers)."""
    for _ in range(200):
        stats = pool.get_stats()
        if stats["pool_available"] == stats["pool_size"]:
            return
        await asyncio.sleep(0.01)


# -- AUTOCOMMIT x POOL_SKIP_ROLLBACK x PRE_PING: statements per read --------- #

STATEMENTS_PER_READ = {
    # (autocommit, skip_rollback, pre_ping): statements the server runs per read
    (True, True, False): 1,  # SELECT
    (True, True, True): 2,  # ping, SELECT
    (True, False, False): 2,  # SELECT, reset
    (True, False, True): 3,  # ping, SELECT, reset
    (False, True, False): 3,  # BEGIN, SELECT, ROLLBACK (never left open)
    (False, True, True): 4,  # ping, BEGIN, SELECT, ROLLBACK
    (False, False, False): 4,  # BEGIN, SELECT, ROLLBACK, reset
    (False, False, True): 5,  # ping, BEGIN, SELECT, ROLLBACK, reset
}


@pytest.mark.parametrize("combo", sorted(STATEMENTS_PER_READ), ids=lambda c: "ac{}-skip{}-ping{}".format(*map(int, c)))
def test_statements_per_read(combo: tuple[bool, bool, bool], topology: Topology, counter_role: str) -> None:
    autocommit, skip, ping = combo
    app = f"count-{next(_apps)}"
    settings = settings_for(autocommit=autocommit, pool_skip_rollback=skip, pre_ping=ping,
                            pre_ping_interval=0.0, pool_size=1, max_overflow=0, prewarm=True)
    pk = first_pk()
    reads = 5

    async def main() -> list[str]:
        pool = (await open_pools(["readonly"]))["readonly"]
        offset = topology.replica.logfile.stat().st_size
        for _ in range(reads):
            await Book.objects.aget(pk=pk)
            await settle(pool)
            # never an open transaction between borrowers
            assert replica_backends(topology, app, "idle in transaction") == 0
        await asyncio.sleep(0.3)  # let the server flush its log
        with topology.replica.logfile.open() as log:
            log.seek(offset)
            return [line for line in log if f"app={app} " in line and ("statement:" in line or "execute" in line)]

    with pools_made_by(settings, user=counter_role, password=COUNTER_PASSWORD, application_name=app):
        lines = arun(main())
    assert len(lines) == STATEMENTS_PER_READ[combo] * reads, "".join(lines)
    assert sum("testapp_book" in line for line in lines) == reads
    assert wait_until(lambda: replica_backends(topology, app) == 0)  # the pool closed with its loop


def test_recommended_settings_cost_one_statement(topology: Topology, counter_role: str) -> None:
    # The reference's recommendation (PRE_PING on) with steady traffic: the
    # ping is skipped for connections used within PRE_PING_INTERVAL.
    app = f"count-{next(_apps)}"
    settings = settings_for(autocommit=True, pool_skip_rollback=True, pre_ping=True,
                            pre_ping_interval=60.0, pool_size=2, max_overflow=0, prewarm=True)
    pk = first_pk()

    async def main() -> list[str]:
        await open_pools(["readonly"])
        offset = topology.replica.logfile.stat().st_size
        for _ in range(20):
            await Book.objects.aget(pk=pk)
        await asyncio.sleep(0.3)
        with topology.replica.logfile.open() as log:
            log.seek(offset)
            return [line for line in log if f"app={app} " in line and "statement:" in line]

    with pools_made_by(settings, user=counter_role, password=COUNTER_PASSWORD, application_name=app):
        lines = arun(main())
    assert len(lines) == 20


def test_pre_ping_after_the_window(topology: Topology, counter_role: str) -> None:
    app = f"count-{next(_apps)}"
    settings = settings_for(autocommit=True, pool_skip_rollback=True, pre_ping=True,
                            pre_ping_interval=0.2, pool_size=1, max_overflow=0, prewarm=True)
    pk = first_pk()

    async def main() -> tuple[int, int]:
        pool = (await open_pools(["readonly"]))["readonly"]
        await Book.objects.aget(pk=pk)
        await Book.objects.aget(pk=pk)  # used just now: no ping
        quick = pool.get_stats()["checks"]
        await asyncio.sleep(0.4)
        await Book.objects.aget(pk=pk)  # idle past the window: pinged
        return quick, pool.get_stats()["checks"]

    with pools_made_by(settings, user=counter_role, password=COUNTER_PASSWORD, application_name=app):
        quick, later = arun(main())
    assert later == quick + 1


def _backend_pid() -> int:
    with connections["readonly"].cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return int(cursor.fetchone()[0])


def test_steady_traffic_reuses_the_last_connection_unpinged(topology: Topology) -> None:
    """LIFO checkout: light sequential traffic on a large pool keeps using the
    connection it just returned, inside the pre-ping window (with FIFO each
    checkout would get the connection idle longest, and ping it)."""
    settings = settings_for(autocommit=True, pool_skip_rollback=True, pre_ping=True,
                            pre_ping_interval=0.3, pool_size=8, max_overflow=0, prewarm=True)

    async def main() -> tuple[set[int], int, int]:
        pool = (await open_pools(["readonly"]))["readonly"]
        await asyncio.sleep(0.4)  # every connection idle past the window
        before = pool.get_stats()
        pids = set()
        for _ in range(20):  # 8 connections would each idle 0.4 s round robin
            pids.add(await run(_backend_pid))
            await asyncio.sleep(0.05)
        after = pool.get_stats()
        return pids, after["checks"] - before["checks"], after["checks_skipped"] - before["checks_skipped"]

    with pools_made_by(settings):
        pids, checks, skipped = arun(main())
    assert len(pids) == 1, pids  # one server backend served them all
    assert (checks, skipped) == (1, 19)


# -- PREWARM ----------------------------------------------------------------- #


def test_prewarm_opens_every_connection_in_parallel(topology: Topology) -> None:
    size = 12
    app = f"prewarm-{next(_apps)}"
    # The proxy holds each connection until `size` are pending at once: a
    # connector that opens them one by one never gets through.
    with TcpProxy(topology.replica.port, barrier=size) as proxy:
        settings = settings_for(prewarm=True, pool_size=size, max_overflow=0, prewarm_timeout=20)

        async def main() -> tuple[int, bool, float | None]:
            pool = (await open_pools(["readonly"]))["readonly"]
            # all open, verified, before the first query
            seen = replica_backends(topology, app)
            assert pool.get_stats()["pool_available"] == size
            await Book.objects.acount()
            return seen, pool.prewarmed, pool.prewarm_seconds

        with pools_made_by(settings, port=proxy.port, application_name=app):
            seen, prewarmed, seconds = arun(main())
        assert proxy.max_concurrent_pending == size
        assert seen == size and prewarmed and seconds is not None


def test_prewarm_failure_names_server_and_cause(topology: Topology) -> None:
    with TcpProxy(topology.replica.port) as proxy:
        port = proxy.port
    # nothing listens there any more
    settings = settings_for(prewarm=True, pool_size=3, prewarm_timeout=5)
    with pools_made_by(settings, port=port), pytest.raises(PrewarmFailed) as info:
        arun(open_pools(["readonly"]))
    message = str(info.value)
    assert f"127.0.0.1:{port}" in message and "refused" in message.lower()
    assert "0 of 3" in message
    assert topology.password not in message


def test_prewarm_failure_bad_password_is_masked(topology: Topology) -> None:
    settings = settings_for(prewarm=True, pool_size=2, prewarm_timeout=10)
    wrong = "wr0ng-p@ss'word"
    with pools_made_by(settings, password=wrong), pytest.raises(PrewarmFailed) as info:
        arun(open_pools(["readonly"]))
    message = str(info.value)
    assert "password authentication failed" in message
    assert wrong not in message and topology.password not in message


def test_prewarm_deadline_on_a_frozen_network(topology: Topology) -> None:
    with TcpProxy(topology.replica.port) as proxy:
        proxy.freeze()
        settings = settings_for(prewarm=True, pool_size=2, prewarm_timeout=1.0)
        with pools_made_by(settings, port=proxy.port), pytest.raises(PrewarmFailed) as info:
            arun(open_pools(["readonly"]))
    message = str(info.value)
    assert "PREWARM_TIMEOUT=1" in message and f"127.0.0.1:{proxy.port}" in message


def test_a_failed_prewarm_is_retried_on_next_use(topology: Topology) -> None:
    settings = settings_for(prewarm=True, pool_size=2, prewarm_timeout=5)
    with TcpProxy(topology.replica.port) as proxy:
        dead_port = proxy.port

    async def main() -> int:
        with pools_made_by(settings, port=dead_port), pytest.raises(PrewarmFailed):
            await open_pools(["readonly"])
        # the broken pool was dropped: the next use builds a new one
        with pools_made_by(settings):
            return await Book.objects.acount()

    assert arun(main()) == 60


# -- MAX_OVERFLOW ---------------------------------------------------------------- #


def test_overflow_grows_under_a_burst_and_shrinks_after(topology: Topology) -> None:
    app = f"overflow-{next(_apps)}"
    settings = settings_for(pool_size=2, max_overflow=4, overflow_idle_timeout=0.3, prewarm=True,
                            checkout_timeout=30)
    observed: list[int] = []

    async def main() -> tuple[int, int]:
        pool = (await open_pools(["readonly"]))["readonly"]

        def slow_read() -> Any:
            return list(Book.objects.raw("SELECT id, pg_sleep(0.3) FROM testapp_book LIMIT 1"))

        burst = asyncio.gather(*(run(slow_read) for _ in range(24)))
        while not burst.done():
            observed.append(await asyncio.to_thread(replica_backends, topology, app))
            await asyncio.sleep(0.05)
        await burst
        peak = pool.get_stats()["pool_size"]
        for _ in range(200):  # shrinks back on its own
            if await asyncio.to_thread(replica_backends, topology, app) == 2:
                break
            await asyncio.sleep(0.05)
        return peak, pool.get_stats()["pool_size"]

    with pools_made_by(settings, application_name=app):
        peak, after = arun(main())
    assert max(observed) == 6 and peak == 6
    assert after == 2
    assert wait_until(lambda: replica_backends(topology, app) == 0)


def test_overflow_closed_on_return_with_zero_idle_timeout(topology: Topology) -> None:
    app = f"overflow0-{next(_apps)}"
    settings = settings_for(pool_size=1, max_overflow=3, overflow_idle_timeout=0.0, prewarm=True)

    async def main() -> tuple[int, int]:
        pool = (await open_pools(["readonly"]))["readonly"]

        def slow_read() -> Any:
            return list(Book.objects.raw("SELECT id, pg_sleep(0.2) FROM testapp_book LIMIT 1"))

        await asyncio.gather(*(run(slow_read) for _ in range(8)))
        await settle(pool)
        return pool.get_stats()["pool_size"], pool.get_stats()["overflow_closed"]

    with pools_made_by(settings, application_name=app):
        size, closed = arun(main())
    assert size == 1 and closed >= 1


# -- gather, borrowing per statement, streaming ------------------------------ #


def test_gather_uses_one_connection_per_concurrent_read(topology: Topology) -> None:
    app = f"gather-{next(_apps)}"
    n = 8
    settings = settings_for(pool_size=n, max_overflow=0, prewarm=True)
    active: list[int] = []

    async def main() -> None:
        await open_pools(["readonly"])

        def slow_read() -> Any:
            return list(Book.objects.raw("SELECT id, pg_sleep(0.5) FROM testapp_book LIMIT 1"))

        reads = asyncio.gather(*(run(slow_read) for _ in range(n)))
        while not reads.done():
            active.append(await asyncio.to_thread(replica_backends, topology, app, "active"))
        await reads

    with pools_made_by(settings, application_name=app):
        arun(main())
    assert max(active) == n


@pytest.mark.parametrize("skip_rollback", [True, False])
def test_each_statement_returns_its_connection_at_once(skip_rollback: bool) -> None:
    pk = first_pk()
    settings = settings_for(autocommit=True, pool_skip_rollback=skip_rollback, pool_size=3, max_overflow=0)

    def two_reads() -> list[int]:
        pool = registry.ready("readonly")
        assert pool is not None
        seen = []
        Book.objects.get(pk=pk)
        seen.append(pool.in_use)
        Book.objects.filter(pk=pk).count()
        seen.append(pool.in_use)
        return seen

    async def main() -> list[int]:
        pool = (await open_pools(["readonly"]))["readonly"]
        await settle(pool)
        return await run(two_reads)

    with pools_made_by(settings):
        between = arun(main())
    assert between == [0, 0]  # nothing held between statements


def test_aiterator_holds_one_connection_and_returns_it() -> None:
    async def main() -> dict[str, int]:
        pool = (await open_pools(["readonly"]))["readonly"]
        await settle(pool)
        size = pool.get_stats()["pool_size"]
        result: dict[str, int] = {"size": size}

        # ends normally; more rows than one chunk of the stream
        wide = Review.objects.values_list("pk", "book__tags__name").order_by("pk", "book__tags__name")
        result["expected"] = await wide.acount()
        it = wide.aiterator(chunk_size=5)
        await anext(it)
        result["during"] = pool.in_use
        rest = [b async for b in it]
        result["count"] = 1 + len(rest)
        await settle(pool)
        result["after_end"] = pool.get_stats()["pool_available"]

        # abandoned after one row
        it2 = wide.aiterator(chunk_size=5)
        await anext(it2)
        await it2.aclose()
        await settle(pool)
        result["after_abandon"] = pool.get_stats()["pool_available"]

        # abandoned without aclose(): the async generator is finalised by the loop
        it3 = wide.aiterator(chunk_size=5)
        await anext(it3)
        result["during_gc"] = pool.in_use
        del it3
        await asyncio.sleep(0.1)
        await settle(pool)
        result["after_gc"] = pool.get_stats()["pool_available"]

        # fails half way: division by zero on a later row
        first_id = await Book.objects.order_by("pk").values_list("pk", flat=True).afirst()
        boom = Book.objects.extra(select={"x": f"1 / (id - {first_id + 40})"}).order_by("pk")
        with pytest.raises(Exception, match="division by zero"):
            async for _ in boom.aiterator(chunk_size=2):
                pass
        await settle(pool)
        result["after_error"] = pool.get_stats()["pool_available"]
        return result

    r = arun(main())
    assert r["during"] == r["during_gc"] == 1
    assert r["count"] == r["expected"] > 256
    assert r["after_end"] == r["after_abandon"] == r["after_gc"] == r["after_error"] == r["size"]


# -- stale connections ----------------------------------------------------------- #


@pytest.mark.slow
def test_replica_restart_costs_checks_not_requests(topology: Topology) -> None:
    monitor.stop()  # pre-pings and retries, not the monitor's breaker, handle the restart
    settings = settings_for(pool_size=4, max_overflow=0, prewarm=True, pre_ping=True, pre_ping_interval=0.0)
    pk = first_pk()

    async def main() -> dict[str, int]:
        pool = (await open_pools(["readonly"]))["readonly"]
        replica = Book.objects.using("readonly")  # the pool itself: no router, no health monitor
        await replica.aget(pk=pk)
        await asyncio.to_thread(topology.replica.restart)
        results = [await replica.aget(pk=pk) for _ in range(10)]  # none fails
        assert len(results) == 10
        return pool.get_stats()

    with pools_made_by(settings):
        stats = arun(main())
    assert stats["checks_failed"] >= 1 and stats["flushes"] >= 1
    assert stats["connections_lost"] >= 1


@pytest.mark.slow
def test_recently_used_dead_connection_is_retried(topology: Topology) -> None:
    monitor.stop()  # pre-pings and retries, not the monitor's breaker, handle the restart
    # Within PRE_PING_INTERVAL nothing is pinged: the read meets the dead
    # connection, and is retried once on a fresh one.
    settings = settings_for(pool_size=2, max_overflow=0, prewarm=True, pre_ping=True, pre_ping_interval=3600)
    pk = first_pk()

    async def main() -> dict[str, int]:
        pool = (await open_pools(["readonly"]))["readonly"]
        replica = Book.objects.using("readonly")
        await replica.aget(pk=pk)
        await asyncio.to_thread(topology.replica.restart)
        for _ in range(5):
            await replica.aget(pk=pk)
        return pool.get_stats()

    with pools_made_by(settings):
        stats = arun(main())
    assert stats["retries"] >= 1


# -- lifecycle ------------------------------------------------------------------ #


def test_one_pool_per_event_loop_and_none_left_open(topology: Topology) -> None:
    import threading

    app = f"loops-{next(_apps)}"
    settings = settings_for(pool_size=2, max_overflow=0, prewarm=True)
    pools: dict[str, ReadPool] = {}
    counts: dict[str, int] = {}

    def in_thread(name: str) -> None:
        async def main() -> None:
            pools[name] = registry.ready("readonly") or await registry.get("readonly")
            counts[name] = await Book.objects.acount()
        asyncio.run(main())

    with pools_made_by(settings, application_name=app):
        threads = [threading.Thread(target=in_thread, args=(n,)) for n in ("a", "b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert counts == {"a": 60, "b": 60}
    assert pools["a"] is not pools["b"]
    assert pools["a"].closed and pools["b"].closed
    assert wait_until(lambda: replica_backends(topology, app) == 0)


def test_asgi_lifespan_prewarms_and_closes(topology: Topology) -> None:
    from django_readonly_pool.asgi import ReadOnlyPoolLifespan

    app_name = f"lifespan-{next(_apps)}"
    settings = settings_for(pool_size=3, max_overflow=0, prewarm=True)

    async def inner_app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("lifespan must not reach the wrapped app")

    async def main() -> tuple[list[str], int, int]:
        app = ReadOnlyPoolLifespan(inner_app, aliases=["readonly"])
        incoming: asyncio.Queue[dict[str, str]] = asyncio.Queue()
        sent: list[str] = []

        async def send(message: Any) -> None:
            sent.append(message["type"])

        task = asyncio.create_task(app({"type": "lifespan"}, incoming.get, send))
        await incoming.put({"type": "lifespan.startup"})
        while not sent:
            await asyncio.sleep(0.01)
        during = await asyncio.to_thread(replica_backends, topology, app_name)
        await incoming.put({"type": "lifespan.shutdown"})
        await task
        after = await asyncio.to_thread(replica_backends, topology, app_name)
        return sent, during, after

    with pools_made_by(settings, application_name=app_name):
        sent, during, after = arun(main())
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert during == 3 and after == 0


def test_asgi_lifespan_startup_fails_clearly(topology: Topology) -> None:
    from django_readonly_pool.asgi import ReadOnlyPoolLifespan

    with TcpProxy(topology.replica.port) as proxy:
        dead = proxy.port
    settings = settings_for(pool_size=2, prewarm=True, prewarm_timeout=5)

    async def main() -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []

        async def send(message: Any) -> None:
            sent.append(dict(message))

        async def receive() -> dict[str, str]:
            return {"type": "lifespan.startup"}

        lifespan = ReadOnlyPoolLifespan(lambda *a: None, aliases=["readonly"])  # type: ignore[arg-type]
        await lifespan({"type": "lifespan"}, receive, send)
        return sent

    with pools_made_by(settings, port=dead):
        sent = arun(main())
    assert sent[0]["type"] == "lifespan.startup.failed"
    assert f"127.0.0.1:{dead}" in sent[0]["message"]


def test_lazy_open_without_lifespan() -> None:
    async def main() -> tuple[bool, int, bool]:
        before = registry.ready("readonly") is None
        count = await Book.objects.acount()
        return before, count, registry.ready("readonly") is not None

    assert arun(main()) == (True, 60, True)


# -- sync code ------------------------------------------------------------------- #


def test_sync_reads_use_djangos_pool_with_the_same_settings() -> None:
    conn = connections["readonly"]
    pool = conn.pool
    s = conn.readonly_pool_settings
    assert (pool.min_size, pool.max_size, pool.timeout) == (s.pool_size, s.max_size, s.checkout_timeout)
    assert Book.objects.count() == 60  # routed to the read-only alias, sync path
    assert Book.objects.using("readonly").count() == 60
    assert conn.connection is not None and conn.connection.autocommit
    assert conn.connection.info.transaction_status == 0  # IDLE


def test_sync_pool_hands_out_the_last_returned_connection() -> None:
    conn = connections["readonly"]
    pool = conn.pool
    assert pool.min_size >= 2
    pool.open()
    pool.wait(timeout=30)  # every POOL_SIZE connection idle in the pool
    pids = set()
    for _ in range(3 * pool.min_size):
        with conn.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            pids.add(cursor.fetchone()[0])
        conn.close()  # back to the pool, as at the end of a request
    assert len(pids) == 1, pids

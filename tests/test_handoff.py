"""Past saturation: connections handed over first come first served, none lost, none stuck."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from django_readonly_pool.errors import PoolExhausted, ReplicaUnavailable
from django_readonly_pool.health import monitor
from django_readonly_pool.pool import ReadPool, open_pools
from django_readonly_pool.pool.handoff import RETRY, Waiters
from tests.conftest import arun
from tests.test_pool import pools_made_by, settings_for

pytestmark = pytest.mark.usefixtures("seeded", "db_access")


async def _pool() -> ReadPool:
    return (await open_pools(["readonly"]))["readonly"]


def test_clients_past_saturation_are_served_in_arrival_order() -> None:
    settings = settings_for(pool_size=2, max_overflow=0, prewarm=True, checkout_timeout=10.0)

    async def main() -> tuple[list[int], dict[str, int]]:
        pool = await _pool()
        pool.pop_stats()
        served: list[int] = []

        async def client(n: int) -> None:
            conn = await pool.getconn()
            served.append(n)
            try:
                await conn.execute("SELECT pg_sleep(0.01)")
            finally:
                await pool.putconn(conn)

        tasks = []
        for n in range(12):
            tasks.append(asyncio.create_task(client(n)))
            await asyncio.sleep(0.001)  # arrive in this order
        await asyncio.sleep(0.005)
        waiting = pool.get_stats()["requests_waiting"]  # 10 clients wait for the 2 connections
        await asyncio.gather(*tasks)
        psycopgs = pool._pool.get_stats()  # psycopg's own figures (its queue, its getconn())
        return served, {**pool.pop_stats(), "waiting_then": waiting,
                        "psycopg_queued": psycopgs.get("requests_queued", 0)}

    with pools_made_by(settings):
        served, stats = arun(main())
    assert served == sorted(served)
    assert stats["psycopg_queued"] == 0  # psycopg's queue (a Condition per client) was not used ...
    assert stats["waiting_then"] >= 8 and stats["requests_queued"] >= 8  # ... ours counts in its keys
    assert stats["requests_num"] == 12  # every checkout, handed over or not
    assert stats["requests_wait_ms"] >= 10 * stats["requests_queued"] // 2
    assert stats.get("requests_waiting", 0) == 0


def test_a_waiter_that_gives_up_loses_no_connection() -> None:
    settings = settings_for(pool_size=1, max_overflow=0, prewarm=True, checkout_timeout=10.0)

    async def main() -> tuple[int, Any]:
        pool = await _pool()
        held = await pool.getconn()
        waiter = asyncio.create_task(pool.getconn())
        await asyncio.sleep(0.05)  # waiting now
        await pool.putconn(held)  # handed over to the waiter ...
        waiter.cancel()  # ... which gives up before it runs
        with pytest.raises(asyncio.CancelledError):
            await waiter
        await asyncio.sleep(0.05)
        # The connection went back: the next client gets it at once.
        started = time.monotonic()
        again = await pool.getconn(timeout=1.0)
        took = time.monotonic() - started
        await pool.putconn(again)
        return pool.in_use, took

    with pools_made_by(settings):
        in_use, took = arun(main())
    assert in_use == 0
    assert took < 0.5


def test_a_waiter_times_out_with_the_checkout_error_and_leaves_the_queue() -> None:
    settings = settings_for(pool_size=1, max_overflow=0, prewarm=True, checkout_timeout=0.3)

    async def main() -> int:
        pool = await _pool()
        held = await pool.getconn()
        try:
            with pytest.raises(PoolExhausted, match="POOL_SIZE=1"):
                await pool.getconn()
        finally:
            await pool.putconn(held)
        return len(pool._waiters)

    with pools_made_by(settings):
        assert arun(main()) == 0


def test_a_broken_connection_wakes_a_waiter_onto_a_fresh_one() -> None:
    monitor.stop()  # the breaker is not under test here
    settings = settings_for(pool_size=1, max_overflow=0, prewarm=True, checkout_timeout=10.0, pre_ping=False)

    async def main() -> tuple[Any, float]:
        pool = await _pool()
        held = await pool.getconn()
        waiter = asyncio.create_task(pool.execute("SELECT 42", None))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        await held.close()  # psycopg must take it (and open a replacement)
        await pool.putconn(held)
        _, rows = await waiter
        return rows, time.monotonic() - started

    with pools_made_by(settings):
        rows, took = arun(main())
    assert rows == [(42,)]
    assert took < 5.0  # not the checkout timeout


def test_the_replica_down_fails_the_waiters_at_once() -> None:
    settings = settings_for(pool_size=1, max_overflow=0, prewarm=True, checkout_timeout=10.0)

    async def main() -> float:
        pool = await _pool()
        held = await pool.getconn()
        waiter = asyncio.create_task(pool.getconn())
        await asyncio.sleep(0.05)
        started = time.monotonic()
        await pool.fail_waiting()
        try:
            with pytest.raises(ReplicaUnavailable):
                await waiter
        finally:
            await pool.putconn(held)
        return time.monotonic() - started

    with pools_made_by(settings):
        assert arun(main()) < 1.0


def test_waiters_first_come_first_served_and_retry_passed_on() -> None:
    async def main() -> list[Any]:
        waiters = Waiters()
        given_back: list[Any] = []

        async def give_back(item: Any) -> None:
            given_back.append(item)

        tasks = [asyncio.create_task(waiters.wait(5.0, give_back)) for _ in range(3)]
        await asyncio.sleep(0)
        assert len(waiters) == 3
        waiters.wake()  # the first one is told to look again ...
        tasks[0].cancel()  # ... but gives up: the chance goes to the second
        await asyncio.sleep(0)
        assert waiters.hand("conn")  # the third gets the connection
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert not waiters.hand("nobody")
        return [type(r).__name__ if isinstance(r, BaseException) else r for r in results] + given_back

    assert arun(main()) == ["CancelledError", RETRY, "conn"]


def test_a_client_in_psycopgs_queue_is_served_first_and_does_not_draw_the_others_in() -> None:
    # A client queued by psycopg (it arrived while the pool could still grow) came first: it gets
    # the next connection; clients arriving after it still wait for a hand-over.
    settings = settings_for(pool_size=1, max_overflow=0, prewarm=True, checkout_timeout=5.0)

    async def main() -> tuple[list[str], int, int]:
        pool = await _pool()
        order: list[str] = []
        held = await pool.getconn()

        async def psycopg_client() -> None:
            conn = await pool._pool.getconn()
            order.append("psycopg's")
            await pool.putconn(conn)

        async def our_client() -> None:
            conn = await pool.getconn()
            order.append("ours")
            await pool.putconn(conn)

        first = asyncio.create_task(psycopg_client())
        await asyncio.sleep(0.05)
        second = asyncio.create_task(our_client())
        await asyncio.sleep(0.05)
        ours_waiting = len(pool._waiters)
        await pool.putconn(held)
        await asyncio.wait_for(asyncio.gather(first, second), 3.0)
        return order, ours_waiting, pool.in_use

    with pools_made_by(settings):
        order, ours_waiting, in_use = arun(main())
    assert ours_waiting == 1
    assert order == ["psycopg's", "ours"]
    assert in_use == 0

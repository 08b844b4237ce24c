"""Replica health: the verdicts, the breaker, and what reads do with them.

Each test builds its own pool alias (on the primary, a dead port, a promoted
standby, a freezing proxy) so that the health monitor and the pool look at the
same server, as in a deployment.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.conf import settings
from django.test import override_settings

from django_readonly_pool import ReplicaUnavailable, run
from django_readonly_pool.health import evaluate, health_report, monitor
from django_readonly_pool.pool import registry
from django_readonly_pool.router import current_read_alias
from django_readonly_pool.testing.proxy import TcpProxy
from django_readonly_pool.testing.topology import Topology, free_port
from tests.conftest import add_pool_alias, arun, remove_pool_alias
from tests.testapp.models import Book

pytestmark = pytest.mark.usefixtures("seeded", "db_access")

ALIAS = "readonly_probe"


@contextmanager
def alias_at(port: int | None, **routing: Any) -> Iterator[str]:
    """A pool alias at *port* (None: no READONLY_SERVER, the primary), the router's only one."""
    env = dict(os.environ)
    if port is None:
        env.pop("FIDES__DATABASE__READONLY_SERVER", None)
        env.pop("FIDES__DATABASE__READONLY_PORT", None)
    else:
        env["FIDES__DATABASE__READONLY_PORT"] = str(port)
    monitor.stop()  # fresh verdicts
    add_pool_alias(ALIAS, env)
    try:
        with override_settings(READONLY_POOL={**settings.READONLY_POOL, "READONLY_ALIASES": [ALIAS],
                                              "HEALTH_CHECK_INTERVAL": 0.1, **routing}):
            yield ALIAS
    finally:
        monitor.stop()
        remove_pool_alias(ALIAS)


def pks() -> list[int]:
    return list(Book.objects.using("default").order_by("pk").values_list("pk", flat=True)[:20])


def test_verdicts() -> None:
    kwargs: dict[str, Any] = {"replay_lsn": None, "primary_lsn": None, "replay_age": None, "paused": None,
                              "max_lag_seconds": None, "max_lag_bytes": None}
    assert evaluate(in_recovery=False, **kwargs)[0] == "promoted"  # a replica that stopped being one
    assert evaluate(in_recovery=False, replica_expected=False, **kwargs)[0] == "primary"  # as configured
    assert evaluate(in_recovery=True, replica_expected=False, **kwargs)[0] == "up"


# -- no replica configured: the pool reads from the primary, and keeps doing so ---------- #


def test_a_pool_on_the_primary_keeps_serving_reads() -> None:
    ids = pks()
    with alias_at(None) as alias:
        async def main() -> tuple[list[str | None], int]:
            served = []
            for i in range(15):  # 15 health intervals
                served.append((await Book.objects.aget(pk=ids[i % len(ids)]))._state.db)
                await asyncio.sleep(0.1)
            pool = registry.ready(alias)
            assert pool is not None
            return served, pool.get_stats()["statements"]

        served, statements = arun(main())
        status = health_report()[alias]["status"]
    assert served == [alias] * 15 and statements >= 15
    assert status == "primary"


# -- the replica unreachable at start: no read fails (FALLBACK="primary") ------------------ #


@pytest.mark.parametrize("trial", range(3))
def test_an_unreachable_replica_at_start_costs_no_read(trial: int) -> None:
    ids = pks()
    with alias_at(free_port(), FALLBACK="primary"):
        async def main() -> list[Any]:
            started = time.monotonic()
            first = await Book.objects.aget(pk=ids[0])  # the very first read of the process
            listed = [b async for b in Book.objects.filter(pk__in=ids[:3])]
            counted = await run(Book.objects.count)
            streamed = [b async for b in Book.objects.filter(pk__in=ids[:3]).aiterator(chunk_size=2)]
            return [first._state.db, {b._state.db for b in listed}, counted, len(streamed),
                    time.monotonic() - started]

        first, listed, counted, streamed, took = arun(main())
    assert (first, listed, counted, streamed) == ("default", {"default"}, 60, 3)
    assert took < 10  # not the 30 s checkout timeout


def test_the_hint_fits_the_fallback_setting() -> None:
    pk = pks()[0]

    async def read() -> str:
        try:
            book = await Book.objects.using(ALIAS).aget(pk=pk)
        except ReplicaUnavailable as exc:
            return str(exc)
        return f"served by {book._state.db}"

    async def after_the_verdict() -> str:
        for _ in range(100):
            if health_report().get(ALIAS, {}).get("status") == "down":
                break
            await asyncio.sleep(0.05)
        return await read()

    with alias_at(free_port(), FALLBACK="fail"):
        failing = arun(after_the_verdict())
    with alias_at(free_port(), FALLBACK="primary"):
        explicit = arun(after_the_verdict())
    assert "FALLBACK is 'fail'" in failing and "FALLBACK'] = 'primary'" in failing
    assert explicit == "served by default"  # FALLBACK="primary": even .using() reads are served


@pytest.mark.parametrize("fallback", ["primary", "fail"])
def test_sync_reads_of_an_unreachable_replica(fallback: str) -> None:
    """Sync code too: served by the primary, or a fast ReplicaUnavailable; never the
    checkout timeout's wait."""
    from django.db import connections

    pk = pks()[0]
    with alias_at(free_port(), FALLBACK=fallback) as alias:
        started = time.monotonic()
        try:
            outcome = Book.objects.get(pk=pk)._state.db, Book.objects.using(alias).filter(pk=pk).count()
        except ReplicaUnavailable as exc:
            outcome = ("ReplicaUnavailable", str(exc))
        took = time.monotonic() - started
        connections[alias].close()
    if fallback == "primary":
        # Served either way: through the alias by the primary's connection, or, once the
        # monitor's first probe has found the replica down (it races this read), routed to
        # the primary by the router.
        assert outcome[0] in (alias, "default") and outcome[1] == 1, outcome
    else:
        assert outcome[0] == "ReplicaUnavailable" and "FALLBACK is 'fail'" in outcome[1]
    assert took < 10


# -- FALLBACK="fail" fails fast for every verdict, "primary" reads there ------------------- #


@pytest.fixture(scope="module")
def promoted(topology: Topology, django_db_setup: Any, django_db_blocker: Any) -> Iterator[int]:
    with django_db_blocker.unblock():
        standby = topology.make_standby("promoted-for-health")
        standby.sql("SELECT pg_promote()", dbname="postgres")
        for _ in range(100):
            if standby.sql("SELECT pg_is_in_recovery()", dbname="postgres") == [(False,)]:
                break
            time.sleep(0.1)
    yield standby.port
    standby.stop("immediate")


@contextmanager
def verdict_of(kind: str, topology: Topology, promoted_port: int, fallback: str) -> Iterator[None]:
    routing: dict[str, Any] = {"FALLBACK": fallback}
    if kind == "down":
        port = free_port()
    elif kind == "promoted":
        port = promoted_port
    else:
        assert topology.replica is not None
        port, routing["MAX_LAG_BYTES"] = topology.replica.port, 1
        topology.replica.sql("SELECT pg_wal_replay_pause()", dbname="postgres")
    try:
        with alias_at(port, **routing) as alias:
            if kind == "lagging":  # something to lag behind
                from tests.testapp.models import Note

                Note.objects.using("default").create(text="lag")
            current_read_alias()  # the first routed read starts the monitor
            for _ in range(200):
                if health_report().get(alias, {}).get("status") == kind:
                    break
                time.sleep(0.05)
            assert health_report()[alias]["status"] == kind, health_report()
            yield
    finally:
        if kind == "lagging":
            topology.replica.sql("SELECT pg_wal_replay_resume()", dbname="postgres")
            topology.wait_for_replay()


@pytest.mark.parametrize("kind", ["down", "promoted", "lagging"])
def test_fallback_fail_fails_fast_for_every_verdict(kind: str, topology: Topology, promoted: int) -> None:
    pk = pks()[0]

    async def read() -> str:
        started = time.monotonic()
        try:
            book = await Book.objects.aget(pk=pk)
        except ReplicaUnavailable as exc:
            assert time.monotonic() - started < 2.0  # fast: the breaker, not a timeout
            return f"ReplicaUnavailable: {exc}"
        return str(book._state.db)

    with verdict_of(kind, topology, promoted, "fail"):
        failed = arun(read())
    with verdict_of(kind, topology, promoted, "primary"):
        served = arun(read())
    assert failed.startswith("ReplicaUnavailable") and kind in failed, failed
    assert served == "default"


# -- a frozen network: at most the reads in flight, each bounded --------------------------- #


@pytest.mark.slow
def test_a_frozen_replica_costs_at_most_the_reads_in_flight(topology: Topology) -> None:
    assert topology.replica is not None
    ids = pks()
    with TcpProxy(topology.replica.port) as proxy, alias_at(proxy.port, FALLBACK="primary",
                                                           HEALTH_CHECK_INTERVAL=1.0) as alias:
        async def main() -> dict[str, Any]:
            results: list[tuple[float, float, str]] = []  # (start, duration, outcome)
            stop_at = time.monotonic() + 14.0
            began = time.monotonic()

            async def reader(n: int) -> None:
                i = n
                while time.monotonic() < stop_at:
                    started = time.monotonic()
                    try:
                        book = await Book.objects.aget(pk=ids[i % len(ids)])
                        outcome = str(book._state.db)
                    except Exception as exc:
                        outcome = type(exc).__name__
                    results.append((started - began, time.monotonic() - started, outcome))
                    i += 32
                    await asyncio.sleep(0.002)

            async def network() -> None:
                await asyncio.sleep(3.0)
                proxy.freeze()
                await asyncio.sleep(8.0)
                proxy.thaw()

            await asyncio.gather(network(), *(reader(n) for n in range(32)))
            return {
                "errors": Counter(o for _, _, o in results if o not in ("default", alias)),
                "longest": max(d for _, d, _ in results),
                "during": Counter(o for s, _, o in results if 5.0 + 6.0 > s > 3.0 + 6.5),
                "last": Counter(o for s, _, o in results if s > 13.0),
                "total": len(results),
            }

        log = arun(main())
    # at most the reads in flight when it froze: POOL_SIZE + MAX_OVERFLOW (defaults: 15)
    assert sum(log["errors"].values()) <= 15, log
    # none waits past the breaker: CHECK_TIMEOUT (5 s) + HEALTH_CHECK_INTERVAL + a margin
    assert log["longest"] < 5.0 + 1.0 + 4.0, log
    assert log["during"] and set(log["during"]) == {"default"}, log  # after the breaker: the primary
    assert log["last"].get(alias, 0) > 0, log  # and back on the replica once it answers

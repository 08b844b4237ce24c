"""The greenlet bridge: run(), context, instrumentation, errors, refusals, cancellation."""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import random
import threading
from typing import Any

import pytest
from django.core.exceptions import SynchronousOnlyOperation
from django.db import connections, transaction
from django.db.utils import ProgrammingError
from django.test import override_settings

from django_readonly_pool import ReadOnlyAliasError, run, use_primary
from django_readonly_pool import orm as orm_dispatch
from django_readonly_pool.bridge import BridgeError, await_only, in_bridge
from django_readonly_pool.pool import open_pools, registry
from tests.conftest import arun
from tests.test_pool import pools_made_by, replica_backends, settings_for, settled_backends, wait_until
from tests.testapp.models import Book, Review

pytestmark = pytest.mark.usefixtures("seeded", "db_access")

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


def first_pk() -> int:
    return Book.objects.using("default").order_by("pk").values_list("pk", flat=True)[0]


def test_run_mixes_several_orm_calls_on_the_loop_thread() -> None:
    pk = first_pk()

    def load(book_pk: int) -> tuple[Any, list[Any], int, bool]:
        book = Book.objects.select_related("author").get(pk=book_pk)
        reviews = list(book.reviews.order_by("pk")[:3])
        return book, reviews, threading.get_ident(), in_bridge()

    async def main() -> tuple[Any, list[Any], int, bool, int]:
        book, reviews, ident, bridged = await run(load, pk)
        return book, reviews, ident, bridged, threading.get_ident()

    book, reviews, ident, bridged, loop_ident = arun(main())
    assert book.pk == pk and book.author.pk == book.author_id
    assert reviews == list(Review.objects.using("default").filter(book_id=pk).order_by("pk")[:3])
    assert bridged and ident == loop_ident
    assert book._state.db == "readonly"


def test_context_variables_flow_both_ways() -> None:
    def inside() -> str:
        seen = request_id.get()
        request_id.set("set-inside")
        return seen

    async def main() -> tuple[str, str]:
        request_id.set("req-42")
        seen = await run(inside)
        return seen, request_id.get()

    assert arun(main()) == ("req-42", "set-inside")


def test_connection_objects_are_not_rebuilt_per_call() -> None:
    async def main() -> set[int]:
        outside = id(connections["readonly"])
        ids = {outside}
        for _ in range(5):
            ids.add(await run(lambda: id(connections["readonly"])))
            await Book.objects.acount()
        ids.add(id(connections["readonly"]))
        return ids

    assert len(arun(main())) == 1


def test_gathered_tasks_read_concurrently_and_share_nothing() -> None:
    pk = first_pk()

    async def main() -> list[int]:
        results = await asyncio.gather(*(Book.objects.filter(pk__gte=pk).acount() for _ in range(20)))
        pool = registry.ready("readonly")
        assert pool is not None and pool.in_use == 0
        return results

    assert len(set(arun(main()))) == 1


def test_execute_wrapper_and_debug_queries_see_every_statement() -> None:
    pk = first_pk()
    calls: list[str] = []

    def wrapper(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        calls.append(sql)
        return execute(sql, params, many, context)

    async def main() -> list[dict[str, str]]:
        conn = connections["readonly"]
        conn.queries_log.clear()
        with conn.execute_wrapper(wrapper):
            await Book.objects.aget(pk=pk)
            await Book.objects.filter(pages__gt=100).acount()
            [b async for b in Book.objects.prefetch_related("tags")[:2]]
        return list(conn.queries)

    with override_settings(DEBUG=True):
        queries = arun(main())
    assert len(calls) == len(queries) == 4
    assert str(pk) in queries[0]["sql"]  # with its parameters interpolated
    assert all(float(q["time"]) >= 0 for q in queries)
    assert all("testapp_" in q["sql"] for q in queries)


def test_driver_errors_surface_as_django_errors() -> None:
    async def main() -> None:
        [b async for b in Book.objects.raw("SELECT no_such_column FROM testapp_book")]

    with pytest.raises(ProgrammingError, match="no_such_column"):
        arun(main())


# -- writes and transactions on the read-only alias ------------------------------ #


def test_async_writes_on_the_readonly_alias_are_refused() -> None:
    async def main() -> list[str]:
        messages = []
        book = await Book.objects.afirst()
        attempts = [
            lambda: Book.objects.using("readonly").acreate(title="x"),
            lambda: Book.objects.using("readonly").filter(pk=book.pk).aupdate(pages=1),
            lambda: Book.objects.using("readonly").filter(pk=book.pk).adelete(),
            lambda: Book.objects.using("readonly").abulk_create([Book(title="y")]),
            lambda: book.asave(using="readonly"),
            lambda: run(lambda: Book.objects.using("readonly").filter(pk=book.pk).update(pages=1)),
            lambda: run(lambda: connections["readonly"].cursor().execute("INSERT INTO testapp_note (text) VALUES ('x')")),
        ]
        for attempt in attempts:
            with pytest.raises(ReadOnlyAliasError) as info:
                await attempt()
            messages.append(str(info.value))
        return messages

    for message in arun(main()):
        assert "'readonly'" in message and "default" in message


def test_atomic_on_the_readonly_alias_is_refused_in_async_code() -> None:
    def in_transaction() -> int:
        with transaction.atomic(using="readonly"):
            return Book.objects.using("readonly").count()

    async def main() -> None:
        with pytest.raises(ReadOnlyAliasError, match=r"transaction\.atomic"):
            await run(in_transaction)
        with pytest.raises(ReadOnlyAliasError, match="'readonly'"), transaction.atomic(using="readonly"):
            pass

    arun(main())


def test_sync_code_may_use_atomic_on_the_readonly_alias() -> None:
    with transaction.atomic(using="readonly"):
        assert Book.objects.using("readonly").count() == 60


# -- what stays Django's ------------------------------------------------------- #


def test_other_aliases_keep_djangos_path() -> None:
    threads: list[int] = []

    def hook(execute: Any, *args: Any) -> Any:
        threads.append(threading.get_ident())
        return execute(*args)

    def install_hook() -> Any:
        return connections["default"].execute_wrapper(hook)

    async def main() -> int:
        from asgiref.sync import sync_to_async

        cm = await sync_to_async(install_hook)()
        await sync_to_async(cm.__enter__)()
        try:
            await Book.objects.using("default").acount()
        finally:
            await sync_to_async(cm.__exit__)(None, None, None)
        return threading.get_ident()

    loop_thread = arun(main())
    assert threads and all(t != loop_thread for t in threads)


def test_djangos_async_guard_stays_armed() -> None:
    async def main() -> None:
        with pytest.raises(SynchronousOnlyOperation):
            Book.objects.using("default").count()
        with pytest.raises(SynchronousOnlyOperation):
            connections["readonly"].cursor()  # outside the bridge
        with pytest.raises(BridgeError):
            await_only(asyncio.sleep(0))

    arun(main())


def test_async_orm_can_be_turned_off() -> None:
    seen: list[bool] = []

    def hook(execute: Any, *args: Any) -> Any:
        seen.append(in_bridge())
        return execute(*args)

    orm_dispatch.uninstall()
    try:
        async def main() -> int:
            return await Book.objects.acount()

        def sync_read() -> None:
            with connections["readonly"].execute_wrapper(hook):
                Book.objects.count()

        assert arun(main()) == 60  # Django's sync_to_async path
        sync_read()
    finally:
        orm_dispatch.install()
    assert seen == [False]


def test_run_follows_the_router_when_it_pins_the_primary() -> None:
    def where() -> tuple[str | None, bool]:
        return Book.objects.all()[:1].get()._state.db, in_bridge()

    async def main() -> list[tuple[str | None, bool]]:
        results = [await run(where)]
        with use_primary():
            results.append(await run(where))
        return results

    assert arun(main()) == [("readonly", True), ("default", False)]


# -- cancellation and churn ---------------------------------------------------- #


@pytest.mark.slow
def test_thousands_of_cancellations_lose_no_connection(topology: Any) -> None:
    app = "cancel-storm"
    settings = settings_for(pool_size=5, max_overflow=5, overflow_idle_timeout=0.2, prewarm=True,
                            autocommit=True, pool_skip_rollback=True, checkout_timeout=10)
    rng = random.Random(7)
    pk = first_pk()

    async def victim(kind: int) -> Any:
        if kind == 0:
            return await Book.objects.aget(pk=pk)
        if kind == 1:
            return await run(lambda: list(Book.objects.raw("SELECT id, pg_sleep(0.002) FROM testapp_book LIMIT 2")))
        return [b async for b in Review.objects.values_list("pk", "book__tags__name").aiterator(chunk_size=50)]

    async def main() -> dict[str, Any]:
        pool = (await open_pools(["readonly"]))["readonly"]
        cancelled = 0
        for _ in range(1000 // 20):
            tasks = [asyncio.ensure_future(victim(rng.randrange(3))) for _ in range(20)]
            await asyncio.sleep(rng.uniform(0, 0.004))
            for task in tasks:
                if not task.done() and rng.random() < 0.9:
                    task.cancel()
            for outcome in await asyncio.gather(*tasks, return_exceptions=True):
                cancelled += isinstance(outcome, asyncio.CancelledError)
        # the pool still serves
        after = await asyncio.gather(*(Book.objects.aget(pk=pk) for _ in range(50)))
        for _ in range(100):
            if pool.in_use == 0 and pool.get_stats()["pool_size"] == 5:
                break
            await asyncio.sleep(0.05)
        stats = pool.get_stats()
        stats["cancelled"] = cancelled
        stats["served_after"] = len(after)
        stats["backends"] = await asyncio.to_thread(settled_backends, topology, app, 5)
        return stats

    with pools_made_by(settings, application_name=app):
        stats = arun(main())
    assert stats["cancelled"] >= 500
    assert stats["served_after"] == 50
    assert stats["in_use"] == 0
    assert stats["pool_size"] == stats["pool_available"] == 5
    assert stats["backends"] == 5  # no connection lost or leaked on the server
    assert wait_until(lambda: replica_backends(topology, app) == 0)


@pytest.mark.slow
def test_ten_thousand_mixed_reads_leave_the_pool_whole(topology: Any) -> None:
    app = "mixed-10k"
    base = dataclasses.replace(settings_for(), pool_size=5, max_overflow=10, overflow_idle_timeout=0.2)
    rng = random.Random(11)
    pk = first_pk()

    async def one(i: int) -> str:
        kind = i % 6
        try:
            if kind == 0:
                await Book.objects.aget(pk=pk)
            elif kind == 1:
                await Book.objects.aget(pk=-1)
            elif kind == 2:
                await Book.objects.filter(pages__gt=i % 2000).acount()
            elif kind == 3:
                [b async for b in Book.objects.raw("SELECT no_such_column FROM testapp_book")]
            elif kind == 4:
                it = Review.objects.values_list("pk", "book__tags__name").aiterator(chunk_size=20)
                await anext(it)
                await it.aclose()
            else:
                await asyncio.wait_for(Book.objects.filter(pk__gte=pk).aexists(), timeout=rng.uniform(0, 0.003))
        except Exception as exc:
            return type(exc).__name__
        return "ok"

    async def main() -> dict[str, Any]:
        pool = (await open_pools(["readonly"]))["readonly"]
        outcomes: dict[str, int] = {}
        sem = asyncio.Semaphore(64)

        async def bounded(i: int) -> None:
            async with sem:
                name = await one(i)
            outcomes[name] = outcomes.get(name, 0) + 1

        await asyncio.gather(*(bounded(i) for i in range(10_000)))
        for _ in range(100):
            if pool.in_use == 0 and pool.get_stats()["pool_size"] == 5:
                break
            await asyncio.sleep(0.05)
        stats = pool.get_stats()
        stats["outcomes"] = outcomes
        stats["backends"] = await asyncio.to_thread(settled_backends, topology, app, 5)
        return stats

    with pools_made_by(base, application_name=app):
        stats = arun(main())
    outcomes = stats["outcomes"]
    assert sum(outcomes.values()) == 10_000
    assert outcomes["DoesNotExist"] >= 1600 and outcomes["ProgrammingError"] >= 1600
    assert stats["in_use"] == 0
    assert stats["pool_available"] == stats["pool_size"] == 5
    assert stats["backends"] == 5

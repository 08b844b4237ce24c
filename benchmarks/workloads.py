"""W1-W7, application-shaped reads, for this package and every peer, in one process.

Run by ``python -m benchmarks`` in ``.bench/venv312`` (Python 3.12+, Django 6.1):
``python -m benchmarks.workloads --seconds S --warmup W [--only W1 ...]`` prints one
JSON document. Every contender runs the same ORM code on the same replica rows:

* ``ours``: this package (``.using("readonly")``: the bridge on the prewarmed pool);
* ``dab``: django-async-backend's async ORM on its psycopg pool;
* ``vpg_dab``: django-vpg (Rust driver, deadpool) through django-async-backend;
* ``vpg_stock``: Django's stock async ORM on django-vpg, in the ASGI request shell;
* ``turbo``: django-turbo-orm on django-async-backend's connections;
* ``djpool``: Django's stock async ORM on its built-in psycopg pool, in the ASGI request shell;
* ``stock``: the same without a pool (``CONN_MAX_AGE=0``: a connection per request);
* ``sqlalchemy``: SQLAlchemy 2's async ORM on asyncpg, the same reads written its way
  (:mod:`benchmarks.sqlalchemy_workloads`; not a Django ORM, so outside the targets);
* ceilings, W1 (and W5) only, not Django's ORM: ``raw_psycopg`` (a psycopg
  AsyncConnectionPool, the SQL Django sends, tuples), ``raw_asyncpg`` (an asyncpg pool, the
  same SQL, records) and ``vpg_raw`` (django-vpg's driver; for W5 its ``fetch_models`` into
  model instances, JSON decoded).

For each (workload, contender): throughput and client CPU per 1,000 operations at 32
tasks on the plain tables and at 64 tasks on the slow views (2 ms per statement), and
whether the values equal ours (model fields, types included).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

WORKLOADS = {
    "W1": "aget(pk=...)",
    "W2": "filter(price__lt=p).order_by('-created')[:20]",
    "W3": "select_related('author').aget(pk=...)",
    "W4": "values_list('id', 'name', 'price')[:100]",
    "W5": "10,000 model instances (async for)",
    "W6": "filter(...).acount() + filter(...).aexists()",
    "W7": "prefetch_related('books').aget(pk=...): 20 children",
}
ORM = ("ours", "dab", "vpg_dab", "vpg_stock", "turbo", "djpool", "stock")
OTHER = ("sqlalchemy",)  # not Django's ORM: measured and compared, outside the targets
CEILINGS = ("raw_psycopg", "raw_asyncpg", "vpg_raw")
ROWS = 10_000
AUTHORS = ROWS // 20

Op = Callable[[int], Awaitable[Any]]


def orm_ops(item: Any, book: Any, author: Any) -> dict[str, Op]:
    """The workloads as application code writes them, on three managers."""

    async def w1(i: int) -> Any:
        return await item.aget(pk=1 + i % ROWS)

    async def w2(i: int) -> Any:
        qs = item.filter(price__lt=Decimal(10 + i % 80)).order_by("-created")[:20]
        return [x async for x in qs]

    async def w3(i: int) -> Any:
        return await book.select_related("author").aget(pk=1 + i % ROWS)

    async def w4(i: int) -> Any:
        qs = item.filter(id__gt=i % (ROWS - 100)).order_by("id").values_list("id", "name", "price")[:100]
        return [x async for x in qs]

    async def w5(i: int) -> Any:
        return [x async for x in item.all()]

    async def w6(i: int) -> Any:
        p = Decimal(10 + i % 80)
        return (await item.filter(price__lt=p).acount(), await item.filter(price__gte=p * 2).aexists())

    async def w7(i: int) -> Any:
        return await author.prefetch_related("books").aget(pk=1 + i % AUTHORS)

    return {"W1": w1, "W2": w2, "W3": w3, "W4": w4, "W5": w5, "W6": w6, "W7": w7}


def _models(app: str, slow: bool) -> tuple[Any, Any, Any]:
    from django.apps import apps

    prefix = ("Dab" if app == "dabapp" else "") + ("Slow" if slow else "")
    return tuple(apps.get_model(app, prefix + name) for name in ("Item", "Book", "Author"))  # type: ignore[return-value]


def _per_request(ops: dict[str, Op], finished: Callable[[], Awaitable[Any]], *,
                 thread_context: bool) -> dict[str, Op]:
    """Each op as one request: *finished* (request_finished) after it, inside a
    ThreadSensitiveContext when *thread_context* (Django's ASGI handler)."""
    from asgiref.sync import ThreadSensitiveContext

    def wrap(op: Op) -> Op:
        async def request(i: int) -> Any:
            async with ThreadSensitiveContext() if thread_context else contextlib.nullcontext():
                try:
                    return await op(i)
                finally:
                    await finished()

        return request

    return {name: wrap(op) for name, op in ops.items()}


def _request_shell(ops: dict[str, Op]) -> dict[str, Op]:
    """Django's ASGI handler around each op: close_old_connections at the end returns a pooled
    connection."""
    from asgiref.sync import sync_to_async
    from django.db import close_old_connections

    return _per_request(ops, sync_to_async(close_old_connections), thread_context=True)


def _async_request(ops: dict[str, Op]) -> dict[str, Op]:
    """django-async-backend's request_finished: the async connection back to its pool."""
    from django_async_backend.db import close_old_async_connections

    return _per_request(ops, close_old_async_connections, thread_context=False)


@asynccontextmanager
async def contender(name: str, slow: bool) -> AsyncIterator[dict[str, Op]]:
    from asgiref.sync import sync_to_async
    from django.db import connections

    if name == "ours":
        from django_readonly_pool.pool import open_pools

        await open_pools(["readonly"])
        item, book, author = _models("benchapp", slow)
        yield orm_ops(*(m.objects.using("readonly") for m in (item, book, author)))
    elif name in ("dab", "vpg_dab"):
        alias = "dab" if name == "dab" else "vpg"
        models = _models("dabapp", slow)
        yield _async_request(orm_ops(*(m.async_objects.using(alias) for m in models)))
    elif name == "turbo":
        models = _models("dabapp", slow)
        yield _async_request(orm_ops(*(m.turbo.using("dab") for m in models)))
    elif name in ("djpool", "vpg_stock", "stock"):
        alias = {"djpool": "djpool", "vpg_stock": "vpg", "stock": "stock"}[name]
        if alias == "djpool":
            await sync_to_async(lambda: connections["djpool"].pool.open(wait=True, timeout=60))()
        models = _models("benchapp", slow)
        yield _request_shell(orm_ops(*(m.objects.using(alias) for m in models)))
    elif name == "sqlalchemy":
        from benchmarks.sqlalchemy_workloads import sqlalchemy_asyncpg

        async with sqlalchemy_asyncpg(slow, ROWS, AUTHORS) as ops:
            yield ops
    elif name == "raw_psycopg":
        async with raw_psycopg(slow) as ops:
            yield ops
    elif name == "raw_asyncpg":
        async with raw_asyncpg(slow) as ops:
            yield ops
    elif name == "vpg_raw":
        yield await vpg_raw(slow)
    else:  # pragma: no cover
        raise ValueError(name)


def _item_sql(slow: bool) -> str:
    from benchmarks.harness import sql_for_pk

    return sql_for_pk("bench_item_slow" if slow else "bench_item")


@asynccontextmanager
async def raw_psycopg(slow: bool) -> AsyncIterator[dict[str, Op]]:
    """The ceiling: psycopg's own pool, Django's SQL, tuples, no ORM."""
    from django.db import connections
    from psycopg_pool import AsyncConnectionPool

    params = connections["stock"].get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)
    size = int(os.environ.get("BENCH_POOL_SIZE", "64"))
    pool = AsyncConnectionPool(kwargs={**params, "autocommit": True}, min_size=size, max_size=size,
                               open=False, reset=None, check=None)
    await pool.open(wait=True, timeout=60)
    sql = _item_sql(slow)
    every = sql.replace(' WHERE "bench_item_slow"."id" = %s LIMIT 21', "").replace(
        ' WHERE "bench_item"."id" = %s LIMIT 21', "")

    async def w1(i: int) -> Any:
        async with pool.connection() as conn:
            cur = await conn.execute(sql, (1 + i % ROWS,))
            return await cur.fetchall()

    async def w5(i: int) -> Any:
        async with pool.connection() as conn:
            cur = await conn.execute(every)
            return await cur.fetchall()

    try:
        yield {"W1": w1, "W5": w5}
    finally:
        await pool.close()


@asynccontextmanager
async def raw_asyncpg(slow: bool) -> AsyncIterator[dict[str, Op]]:
    """The other ceiling: asyncpg's pool, the same SQL, records, no ORM."""
    import asyncpg
    from django.db import connections

    params = connections["stock"].get_connection_params()
    size = int(os.environ.get("BENCH_POOL_SIZE", "64"))
    pool = await asyncpg.create_pool(host=params.get("host"), port=int(params.get("port") or 5432),
                                     user=params.get("user"), password=params.get("password"),
                                     database=params.get("dbname"), min_size=size, max_size=size)
    sql = _item_sql(slow).replace("%s", "$1")
    every = sql.split(" WHERE ")[0]

    async def w1(i: int) -> Any:
        async with pool.acquire() as conn:
            return await conn.fetch(sql, 1 + i % ROWS)

    async def w5(i: int) -> Any:
        async with pool.acquire() as conn:
            return await conn.fetch(every)

    try:
        yield {"W1": w1, "W5": w5}
    finally:
        await pool.close()


async def vpg_raw(slow: bool) -> dict[str, Op]:
    """django-vpg's driver: W1 as tuples, W5 through fetch_models (its fused
    row-to-instance path), the JSON column decoded."""
    from django.conf import settings
    from django_vpg import driver_from_django_settings

    item = _models("benchapp", slow)[0]
    driver = driver_from_django_settings(settings, alias="vpg")
    sql = _item_sql(slow).replace("%s", "$1")
    every = sql.split(" WHERE ")[0]
    attnames = [f.attname for f in item._meta.concrete_fields]

    async def w1(i: int) -> Any:
        rows, _ = await driver.query(sql, [1 + i % ROWS])
        return rows

    async def w5(i: int) -> Any:
        objs = await driver.fetch_models(every, [], attnames, item, "vpg")
        for obj in objs:
            if isinstance(obj.data, str):
                obj.data = json.loads(obj.data)
        return objs

    return {"W1": w1, "W5": w5}


# --------------------------------------------------------------------------- #
# Same values?
# --------------------------------------------------------------------------- #


def normalise(value: Any, path: tuple[int, ...] = ()) -> Any:
    """A model instance as its field values (related objects included, a reference back
    to an object on the path as its primary key), for comparison."""
    from django.db.models import Model

    from benchmarks.sqlalchemy_workloads import normalise_mapped

    mapped = normalise_mapped(value, path, normalise)
    if mapped is not None:
        return mapped
    if isinstance(value, Model):
        if id(value) in path:
            return ("back to", value.pk)
        inner = (*path, id(value))
        out: dict[str, Any] = {f.attname: getattr(value, f.attname) for f in value._meta.concrete_fields}
        for name, related in value._state.fields_cache.items():
            out[name] = normalise(related, inner)
        for name, children in getattr(value, "_prefetched_objects_cache", {}).items():
            out[name] = sorted((normalise(c, inner) for c in children), key=lambda c: c["id"])
        return out
    if isinstance(value, (list, tuple)):
        return [normalise(v, path) for v in value]
    return value


def differences(ours: Any, theirs: Any, path: str = "") -> list[str]:
    """Where two normalised results differ, value or type (first few)."""
    if isinstance(ours, dict) and isinstance(theirs, dict):
        found = [f"{path}.{k}: missing" for k in ours if k not in theirs]
        for key in ours:
            if key in theirs:
                found += differences(ours[key], theirs[key], f"{path}.{key}")
        return found[:3]
    if isinstance(ours, list) and isinstance(theirs, list):
        if len(ours) != len(theirs):
            return [f"{path}: {len(theirs)} items, ours {len(ours)}"]
        found = []
        for n, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            found += differences(a, b, f"{path}[{n}]")
            if found:
                break
        return found
    if type(ours) is not type(theirs):
        return [f"{path or 'value'}: {type(theirs).__name__}, ours {type(ours).__name__}"]
    if ours != theirs:
        return [f"{path or 'value'}: {theirs!r:.60}, ours {ours!r:.60}"]
    return []


# --------------------------------------------------------------------------- #
# The run
# --------------------------------------------------------------------------- #


async def _one(name: str, workload: str, slow: bool, concurrency: int, *, seconds: float,
               warmup: float) -> tuple[dict[str, Any] | None, Any]:
    print(f"  {workload} {name} ...", file=sys.stderr, flush=True)
    try:
        return await _measure(name, workload, slow, concurrency, seconds=seconds, warmup=warmup)
    except Exception as exc:  # a peer that cannot even start: say so, go on with the others
        import traceback

        traceback.print_exc()
        return {"error": f"{type(exc).__name__}: {exc}"[:200]}, None


async def _measure(name: str, workload: str, slow: bool, concurrency: int, *, seconds: float,
                   warmup: float) -> tuple[dict[str, Any] | None, Any]:
    from benchmarks.harness import measure, measure_batch

    async with contender(name, slow) as ops:
        op = ops.get(workload)
        if op is None:
            return None, None
        try:
            # In a task of its own, as every worker: django-async-backend's connections belong
            # to the task (context) that first used them.
            sample = normalise(await asyncio.create_task(op(7)))
        except Exception as exc:  # a peer that cannot run this workload: say so
            return {"error": f"{type(exc).__name__}: {exc}"[:200]}, None
        if workload == "W5":  # 10,000 rows per operation: a fixed number of them, not a window
            await asyncio.gather(*(op(i) for i in range(4)))  # warm, as the others are
            result = await measure_batch(op, concurrency, per_task=1 if seconds < 1 else 2)
        else:
            result = await measure(op, concurrency, seconds, warmup)
        return result.as_dict(), sample


async def run(seconds: float, warmup: float, only: list[str], repeats: int) -> dict[str, Any]:
    """Every measurement on one event loop: each peer's pool belongs to the loop it opened on."""
    table: dict[str, Any] = {}
    for slow, concurrency in ((False, 32), (True, 64)):
        key = f"{'2ms' if slow else '0ms'}_c{concurrency}"
        for workload in only:
            cell: dict[str, Any] = {}
            samples: dict[str, Any] = {}
            for _ in range(repeats):  # interleaved: A B C ... A B C; the median-throughput run kept
                for name in ORM + OTHER + CEILINGS:
                    gc.collect()
                    result, sample = await _one(name, workload, slow, concurrency, seconds=seconds, warmup=warmup)
                    if result is None:
                        continue
                    if sample is not None:
                        samples[name] = sample
                    cell.setdefault(name, []).append(result)
            for name, results in cell.items():
                ok = [r for r in results if "error" not in r]
                chosen = sorted(ok, key=lambda r: r["ops_per_s"])[len(ok) // 2] if ok else results[0]
                if name in samples and "ours" in samples and name not in CEILINGS:
                    diff = differences(samples["ours"], samples[name])
                    chosen = {**chosen, "same_values": not diff, **({"differences": diff} if diff else {})}
                table.setdefault(workload, {}).setdefault(key, {})[name] = chosen
            print(f"{workload} {key}: " + ", ".join(
                f"{n} {c.get('ops_per_s', 'x')}/s {c.get('cpu_ms_per_1000', '')}" for n, c in
                table[workload][key].items()), file=sys.stderr, flush=True)
    return table


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--only", action="append", choices=list(WORKLOADS))
    args = parser.parse_args()
    os.environ["BENCH_DAB"] = "1"
    os.environ["DJANGO_SETTINGS_MODULE"] = "benchmarks.settings"
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from importlib.metadata import version

    import django

    django.setup()
    measured: dict[str, Any] = {
        "python": sys.version.split()[0], "workloads": WORKLOADS,
        "versions": {p: version(p) for p in ("django", "django-async-backend", "django-vpg", "django-turbo-orm",
                                             "psycopg", "psycopg-pool")},
    }
    measured["results"] = asyncio.run(run(args.seconds, args.warmup, args.only or list(WORKLOADS), args.repeats))
    print(json.dumps(measured, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

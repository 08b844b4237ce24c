"""What is compared: each contender yields ``op(i)``, one primary-key read.

All of them read the same rows of the same replica (``bench_item``, or the
``bench_item_slow`` view for 2 ms of server-side latency per read).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.db import close_old_connections, connections

from benchmarks.harness import Op, sql_for_pk

PKS = list(range(1, 10_001))


def _model(slow: bool) -> Any:
    from benchmarks.benchapp.models import Item, SlowItem

    return SlowItem if slow else Item


def _table(slow: bool) -> str:
    return "bench_item_slow" if slow else "bench_item"


@asynccontextmanager
async def ours(slow: bool, alias: str = "readonly") -> AsyncIterator[Op]:
    """This package: Django's ORM, aget() on the prewarmed async pool."""
    from django_readonly_pool.pool import open_pools

    await open_pools([alias])
    manager = _model(slow).objects.using(alias)

    async def op(i: int) -> Any:
        return await manager.aget(pk=PKS[i % len(PKS)])

    yield op


@asynccontextmanager
async def stock(slow: bool, alias: str = "stock") -> AsyncIterator[Op]:
    """Django's async ORM as its ASGI handler runs it: one ThreadSensitiveContext
    per request, aget() through sync_to_async, close_old_connections at the end."""
    manager = _model(slow).objects.using(alias)
    if alias == "djpool":
        await sync_to_async(lambda: connections["djpool"].pool.open(wait=True, timeout=60))()

    async def op(i: int) -> Any:
        async with ThreadSensitiveContext():
            obj = await manager.aget(pk=PKS[i % len(PKS)])
            await sync_to_async(close_old_connections)()  # request_finished
            return obj

    yield op


@asynccontextmanager
async def django_pool(slow: bool) -> AsyncIterator[Op]:
    """Django's built-in pool (OPTIONS["pool"]), under the same request contexts."""
    async with stock(slow, alias="djpool") as op:
        yield op


def _conninfo() -> dict[str, Any]:
    settings = connections["stock"].settings_dict
    return {"host": settings["HOST"], "port": int(settings["PORT"]), "user": settings["USER"],
            "password": settings["PASSWORD"], "dbname": settings["NAME"]}


@asynccontextmanager
async def sqlalchemy(slow: bool, size: int = 64) -> AsyncIterator[Op]:
    """SQLAlchemy 2 AsyncSession + asyncpg with the guide's recommended settings."""
    import asyncio

    from sqlalchemy import URL, BigInteger, DateTime, Numeric, String, select
    from sqlalchemy.dialects.postgresql import JSONB
    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
    from sqlalchemy.orm import DeclarativeBase, mapped_column

    class Base(DeclarativeBase):
        pass

    SAItem: Any = type("SAItem", (Base,), {  # noqa: N806 - a mapped class
        "__tablename__": _table(slow),
        "id": mapped_column(BigInteger, primary_key=True),
        "name": mapped_column(String(50)),
        "price": mapped_column(Numeric(10, 2)),
        "created": mapped_column(DateTime(timezone=True)),
        "data": mapped_column(JSONB),
    })

    info = _conninfo()
    engine = create_async_engine(
        URL.create("postgresql+asyncpg", username=info["user"], password=info["password"], host=info["host"],
                   port=info["port"], database=info["dbname"]),
        pool_size=size, max_overflow=0, pool_pre_ping=True, pool_reset_on_return=None,
        isolation_level="AUTOCOMMIT",
    )
    # Prewarm, as the reference implementation does: check out every connection once.
    held = await asyncio.gather(*(engine.connect() for _ in range(size)))
    for conn in held:
        await conn.close()
    session_factory = async_sessionmaker(engine, expire_on_commit=False)
    statement = select(SAItem)

    async def op(i: int) -> Any:
        async with session_factory() as session:
            return (await session.execute(statement.where(SAItem.id == PKS[i % len(PKS)]))).scalar_one()

    try:
        yield op
    finally:
        await engine.dispose()


@asynccontextmanager
async def raw_pool(slow: bool, size: int = 64) -> AsyncIterator[Op]:
    """A raw psycopg AsyncConnectionPool running the same SQL (the ceiling)."""
    from psycopg_pool import AsyncConnectionPool

    pool = AsyncConnectionPool(kwargs={**_conninfo(), "autocommit": True, "prepare_threshold": None},
                               min_size=size, max_size=size, open=False)
    await pool.open(wait=True, timeout=60)
    sql = sql_for_pk(_table(slow))

    async def op(i: int) -> Any:
        async with pool.connection() as conn:
            cur = await conn.execute(sql, (PKS[i % len(PKS)],))
            return await cur.fetchone()

    try:
        yield op
    finally:
        await pool.close()


CONTENDERS = {
    "ours": ours,
    "stock_asgi": stock,
    "django_pool_asgi": django_pool,
    "sqlalchemy_asyncpg": sqlalchemy,
    "raw_pool": raw_pool,
}


def available() -> dict[str, Any]:
    """Contenders whose packages are installed."""
    found = dict(CONTENDERS)
    try:
        import asyncpg  # noqa: F401
        import sqlalchemy  # noqa: F401
    except ImportError:
        found.pop("sqlalchemy_asyncpg")
    return found


"""W1-W7 in SQLAlchemy 2's async ORM on asyncpg: the non-Django peer of ``benchmarks.workloads``.

The same tables and the same reads, written as SQLAlchemy code is written
(``session.get``, ``select().where().order_by().limit()``, ``joinedload``,
``selectinload`` ...), on an engine with the guide's settings (a pool of
``BENCH_POOL_SIZE``, prewarmed, AUTOCOMMIT, no reset on return). One
``AsyncSession`` per operation, as per request in an application.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

Op = Callable[[int], Awaitable[Any]]


def _mapped(slow: bool) -> tuple[Any, Any, Any]:
    from sqlalchemy import BigInteger, Date, DateTime, ForeignKey, Numeric, String
    from sqlalchemy.dialects.postgresql import JSONB
    from sqlalchemy.orm import DeclarativeBase, mapped_column, relationship

    suffix = "_slow" if slow else ""

    class Base(DeclarativeBase):
        pass

    item = type("SAItem", (Base,), {
        "__tablename__": f"bench_item{suffix}",
        "id": mapped_column(BigInteger, primary_key=True), "name": mapped_column(String(50)),
        "price": mapped_column(Numeric(10, 2)), "created": mapped_column(DateTime(timezone=True)),
        "data": mapped_column(JSONB),
    })
    author = type("SAAuthor", (Base,), {
        "__tablename__": f"bench_author{suffix}",
        "id": mapped_column(BigInteger, primary_key=True), "name": mapped_column(String(50)),
        "books": relationship("SABook", back_populates="author"),
    })
    book = type("SABook", (Base,), {
        "__tablename__": f"bench_book{suffix}",
        "id": mapped_column(BigInteger, primary_key=True), "title": mapped_column(String(80)),
        "price": mapped_column(Numeric(10, 2)), "published": mapped_column(Date),
        "author_id": mapped_column(BigInteger, ForeignKey(f"bench_author{suffix}.id")),
        "author": relationship("SAAuthor", back_populates="books"),
    })
    return item, book, author


@asynccontextmanager
async def sqlalchemy_asyncpg(slow: bool, rows: int, authors: int) -> AsyncIterator[dict[str, Op]]:
    import asyncio

    from django.db import connections
    from sqlalchemy import URL, exists, func, select
    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
    from sqlalchemy.orm import joinedload, selectinload

    item, book, author = _mapped(slow)
    params = connections["stock"].get_connection_params()
    size = int(os.environ.get("BENCH_POOL_SIZE", "64"))
    engine = create_async_engine(
        URL.create("postgresql+asyncpg", username=params.get("user"), password=params.get("password"),
                   host=params.get("host"), port=int(params.get("port") or 5432), database=params.get("dbname")),
        pool_size=size, max_overflow=0, pool_pre_ping=True, pool_reset_on_return=None, isolation_level="AUTOCOMMIT",
    )
    held = await asyncio.gather(*(engine.connect() for _ in range(size)))  # prewarm
    for conn in held:
        await conn.close()
    session = async_sessionmaker(engine, expire_on_commit=False)

    async def w1(i: int) -> Any:
        async with session() as s:
            return await s.get(item, 1 + i % rows)

    async def w2(i: int) -> Any:
        async with session() as s:
            stmt = select(item).where(item.price < Decimal(10 + i % 80)).order_by(item.created.desc()).limit(20)
            return list((await s.scalars(stmt)).all())

    async def w3(i: int) -> Any:
        async with session() as s:
            stmt = select(book).options(joinedload(book.author)).where(book.id == 1 + i % rows)
            return (await s.scalars(stmt)).one()

    async def w4(i: int) -> Any:
        async with session() as s:
            stmt = (select(item.id, item.name, item.price).where(item.id > i % (rows - 100))
                    .order_by(item.id).limit(100))
            return [tuple(r) for r in (await s.execute(stmt)).all()]

    async def w5(i: int) -> Any:
        async with session() as s:
            return list((await s.scalars(select(item))).all())

    async def w6(i: int) -> Any:
        p = Decimal(10 + i % 80)
        async with session() as s:
            count = await s.scalar(select(func.count()).select_from(item).where(item.price < p))
            found = await s.scalar(select(exists().where(item.price >= p * 2)))
            return count, found

    async def w7(i: int) -> Any:
        async with session() as s:
            stmt = select(author).options(selectinload(author.books)).where(author.id == 1 + i % authors)
            return (await s.scalars(stmt)).one()

    try:
        yield {"W1": w1, "W2": w2, "W3": w3, "W4": w4, "W5": w5, "W6": w6, "W7": w7}
    finally:
        await engine.dispose()


def normalise_mapped(value: Any, path: tuple[int, ...], recurse: Callable[[Any, tuple[int, ...]], Any]) -> Any:
    """A SQLAlchemy instance as the field values ``benchmarks.workloads.normalise`` makes of
    a Django instance (loaded relationships included), or None when *value* is not one."""
    mapper = getattr(type(value), "__mapper__", None)
    if mapper is None:
        return None
    if id(value) in path:
        return ("back to", value.id)
    inner = (*path, id(value))
    out: dict[str, Any] = {c.key: getattr(value, c.key) for c in mapper.column_attrs}
    loaded = value.__dict__
    for rel in mapper.relationships:
        if rel.key in loaded:
            related = loaded[rel.key]
            if isinstance(related, list):
                children = [recurse(c, inner) for c in related]
                if rel.back_populates:  # child.<back> is this object (from the identity map, no query)
                    for child in children:
                        child.setdefault(rel.back_populates, ("back to", value.id))
                out[rel.key] = sorted(children, key=lambda c: c["id"])
            elif related is not None:
                out[rel.key] = recurse(related, inner)
    return out

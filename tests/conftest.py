"""Shared fixtures. The servers come from django_readonly_pool.testing.pytest_plugin."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import uuid
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any, TypeVar

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connections
from django.db.backends.postgresql.psycopg_any import DateTimeTZRange, NumericRange

from django_readonly_pool import compiled, fastlane, materialise
from django_readonly_pool.router import routing_scope
from django_readonly_pool.testing.topology import Topology

T = TypeVar("T")


def _close_thread_connections() -> None:
    for conn in connections.all(initialized_only=True):
        conn.close()


@contextmanager
def djangos_compiler() -> Iterator[None]:
    """Django's own query building, SQL compilation and instances (the templates of
    filter()/values(), the compiled-SQL cache and materialise off, their shapes kept): the
    reference the cached paths are compared with."""
    was, building, making = compiled.installed(), fastlane.build.installed(), materialise.installed()
    compiled.uninstall()
    fastlane.build.uninstall()
    materialise.uninstall()
    try:
        yield
    finally:
        if was:
            compiled.install()
        if building:
            fastlane.build.install()
        if making:
            materialise.install()


def arun(coro: Coroutine[Any, Any, T]) -> T:
    """Run *coro* on a fresh event loop (its pools close when it ends).

    Like a request's end, it closes the sync connections that Django's
    ``sync_to_async`` opened in its thread for non-pool aliases.
    """
    async def main() -> T:
        try:
            return await coro
        finally:
            await sync_to_async(_close_thread_connections)()

    return asyncio.run(main())


@pytest.fixture(autouse=True)
def _fresh_routing_scope() -> Iterator[None]:
    """Each test starts with no read-your-writes pin (as each request does),
    and leaves no verdict of a replica it stopped behind."""
    from django_readonly_pool.health import health_report, monitor

    with routing_scope():
        yield
    if any(not state["usable"] for state in health_report().values()):
        monitor.stop()


@pytest.fixture(scope="session")
def topology(readonly_pool_topology: Topology) -> Topology:
    return readonly_pool_topology


@pytest.fixture(scope="session")
def django_db_setup(django_test_environment: None, django_db_blocker: Any) -> Iterator[None]:
    """Create the test database for every alias (pytest-django only creates the
    ones that django_db marks ask for; these tests reach the replica directly)."""
    from django.test.utils import setup_databases, teardown_databases

    with django_db_blocker.unblock():
        config = setup_databases(verbosity=0, interactive=False, aliases=set(connections))
    yield
    from django_readonly_pool.health import monitor

    monitor.stop()  # its probe connections would block DROP DATABASE
    with django_db_blocker.unblock():
        for conn in connections.all(initialized_only=True):
            conn.close()
        teardown_databases(config, verbosity=0)


def add_pool_alias(alias: str, environ: dict[str, str]) -> None:
    """Add the pool alias that ``databases_from_env(environ)`` describes, on the test database."""
    from django_readonly_pool import databases_from_env

    entry = databases_from_env(environ, readonly_alias=alias)[alias]
    entry["NAME"] = connections["default"].settings_dict["NAME"]  # the test database
    entry.pop("TEST")
    configured = connections.configure_settings({"default": connections.settings["default"], alias: entry})
    connections.settings[alias] = configured[alias]
    settings.DATABASES[alias] = connections.settings[alias]


def remove_pool_alias(alias: str) -> None:
    from django_readonly_pool import aliases

    wrapper = connections[alias]
    wrapper.close()
    if alias in wrapper._connection_pools:
        wrapper.close_pool()
    del connections[alias]
    connections.settings.pop(alias, None)
    settings.DATABASES.pop(alias, None)
    aliases.forget()


@pytest.fixture
def primary_alias(db_access: None) -> Iterator[str]:
    """A pool alias on the primary itself (no READONLY_SERVER: a documented mode)."""
    import os

    alias = "readonly_primary"
    add_pool_alias(alias, {k: v for k, v in os.environ.items()
                           if k not in ("FIDES__DATABASE__READONLY_SERVER", "FIDES__DATABASE__READONLY_PORT")})
    yield alias
    remove_pool_alias(alias)


@pytest.fixture
def db_access(django_db_setup: None, django_db_blocker: Any) -> Iterator[None]:
    """Real, committed database access (no test transaction around it)."""
    with django_db_blocker.unblock():
        yield
        for conn in connections.all(initialized_only=True):
            conn.close()


def _seed() -> None:
    from tests.testapp.models import Author, Book, Review, Tag

    rng = random.Random(20261128)
    tz = dt.timezone(dt.timedelta(hours=-5))
    tags = Tag.objects.bulk_create(Tag(name=f"tag-{i:02d}") for i in range(10))
    names = ["Ada", "Brontë", "Ĉiu", "Dürer", "O'Neil", 'Say "hi"', "Zoë", "Ωmega", "back\\slash", "李白"]
    authors = Author.objects.bulk_create(
        Author(
            name=f"{names[i % len(names)]} {i}",
            uuid=uuid.UUID(int=rng.getrandbits(128)),
            born=None if i % 7 == 0 else dt.date(1900 + i * 3, 1 + i % 12, 1 + i % 28),
            ip=None if i % 5 == 0 else (f"10.0.{i}.{i * 3 % 250}" if i % 2 else f"2001:db8::{i:x}"),
            meta={"rank": i, "nested": {"ok": i % 2 == 0, "list": [i, None, "x"]}, "ü": "ñ"},
        )
        for i in range(20)
    )
    books = []
    for i in range(60):
        published = dt.datetime(2000 + i % 25, 1 + i % 12, 1 + i % 28, i % 24, i % 60, i % 60, i * 997, tzinfo=tz)
        books.append(Book(
            author=authors[i % len(authors)],
            title=f"Book {i:03d} {'%' if i % 9 == 0 else ''}{'_' if i % 11 == 0 else ''}",
            genre=["novel", "essay", "poetry"][i % 3],
            price=Decimal(rng.randint(-500, 99_999)) / 100,
            published=published,
            pages=rng.randint(10, 2000),
            rating=None if i % 6 == 0 else round(rng.random() * 5, 3),
            in_print=i % 4 != 0,
            data=None if i % 8 == 0 else {"i": i, "f": i / 7, "s": "x" * (i % 5), "a": [1, {"b": None}]},
            keywords=[f"k{j}" for j in range(i % 4)],
            sales=None if i % 5 == 0 else NumericRange(i, i * 10 + 1),
            available=None if i % 3 else DateTimeTZRange(published, published + dt.timedelta(days=i + 1)),
            reading_time=None if i % 2 else dt.timedelta(hours=i, minutes=7, microseconds=i),
            cover=None if i % 10 else bytes(range(i % 256)) * 3,
            starts_at=None if i % 4 else dt.time(i % 24, (i * 7) % 60, (i * 13) % 60),
            isbn=9_780_000_000_000 + i * 7919,
        ))
    books = Book.objects.bulk_create(books)
    for i, book in enumerate(books):
        book.tags.set(tags[j] for j in range(10) if (i + j) % 4 == 0)
    Review.objects.bulk_create(
        Review(
            book=books[i % len(books)],
            stars=1 + i % 5,
            body=f"review {i} " + "lorem " * (i % 6),
            created=dt.datetime(2024, 1 + i % 12, 1 + i % 28, tzinfo=dt.UTC) + dt.timedelta(minutes=i),
        )
        for i in range(150)
    )


@pytest.fixture(scope="session")
def seeded(django_db_setup: None, django_db_blocker: Any, readonly_pool_topology: Topology) -> None:
    """The read-only seed data, committed on the primary and replayed on the replica."""
    from tests.testapp.models import Book

    with django_db_blocker.unblock(), routing_scope():
        if not Book.objects.using("default").exists():
            _seed()
        for conn in connections.all(initialized_only=True):
            conn.close()
    readonly_pool_topology.wait_for_replay()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """How many configuration inputs hypothesis tried (quoted in the README)."""
    import sys

    module = sys.modules.get("tests.test_bad_input")
    if module is not None and module.TRIED:
        terminalreporter.write_line(
            f"hypothesis: {sum(module.TRIED.values())} configuration inputs tried over {len(module.TRIED)} properties")

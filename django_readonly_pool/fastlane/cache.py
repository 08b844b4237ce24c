"""What the fast lane's caches share: tables, statistics, and the direct lane.

A statement of a trusted shape runs straight from the event loop on the pool
(no bridge greenlet, no cursor wrapper) when Django's cursor wrapper would add
nothing to it: no ``execute_wrapper()`` is installed on the connection and
queries are not logged (``DEBUG``, ``assertNumQueries``, the debug toolbar).
Driver errors are still raised as Django's (``connection.wrap_database_errors``).
Its SQL is the text Django compiled when the shape was learnt, and the read-only
guard judges it as Django's cursor wrapper would (one lookup of its cached
verdict); only the parameters, bound client-side, change.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Final

from django_readonly_pool.guard import refuse_unless_read
from django_readonly_pool.pool import ReadPool, registry

from . import fresh

__all__ = ["MAX_SHAPES", "NOT_ELIGIBLE", "builds", "clear", "counts", "direct_pool", "execute_direct", "lock",
           "remember", "scalars", "shapes", "stats"]

MAX_SHAPES: Final = 2048
NOT_ELIGIBLE: Final = object()  # a shape that takes Django's path for good

lock = threading.Lock()
counts = {"hits": 0, "misses": 0, "ineligible": 0, "direct": 0, "fetched": 0, "built_from_template": 0,
          "built_by_django": 0}
shapes: OrderedDict[tuple[Any, ...], Any] = OrderedDict()  # aget(**kwargs), by shape
scalars: OrderedDict[tuple[Any, ...], Any] = OrderedDict()  # count() / exists(), by shape
builds: OrderedDict[tuple[Any, ...], Any] = OrderedDict()  # filter() / exclude() templates, by shape


def stats() -> dict[str, int]:
    return {**counts, "shapes": len(shapes)}


def clear(**kwargs: Any) -> None:
    """Forget every shape (tests; ``setting_changed`` receiver: when DATABASES changes)."""
    if kwargs.get("setting") not in (None, "DATABASES"):
        return
    with lock:
        shapes.clear()
        scalars.clear()
        builds.clear()
        fresh.forget()


def remember(table: OrderedDict[tuple[Any, ...], Any], key: tuple[Any, ...], value: Any) -> None:
    """Store *value* under *key*, forgetting the oldest shapes past :data:`MAX_SHAPES`."""
    with lock:
        table[key] = value
        while len(table) > MAX_SHAPES:
            table.popitem(last=False)


async def execute_direct(pool: ReadPool, connection: Any, sql: str, params: Any) -> list[Any]:
    """One statement of a trusted shape on *pool*, from the event loop: its rows.

    The read-only guard judges it as Django's cursor wrapper would (one lookup: the shape's SQL
    text was judged when learnt), and driver errors are raised as Django's."""
    refuse_unless_read(sql, params, connection.alias)
    counts["direct"] += 1
    with connection.wrap_database_errors:
        rows = (await pool.execute(sql, params))[1]
    return rows if rows is not None else []


def direct_pool(connection: Any) -> ReadPool | None:
    """The pool a cached statement may run on straight from the event loop, or None (the bridge)."""
    if connection.execute_wrappers or connection.queries_logged:
        return None
    return registry.ready(connection.alias)

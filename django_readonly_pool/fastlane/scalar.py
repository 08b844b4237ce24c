"""``acount()`` and ``aexists()`` from a statement learnt per query shape.

For any queryset whose shape :mod:`django_readonly_pool.compiled` can
fingerprint, Django's building of the COUNT/EXISTS query (a clone, an aggregate
resolved, ``as_sql()``) is skipped: the statement Django sent the first times
for the shape is sent again with this queryset's parameters, and the row read
as Django reads it (``int(count)``; ``exists()`` is whether a row came back; a
queryset with annotations takes Django's path, so the answer is the first
column). A shape is trusted after Django's own call sent the same one statement
twice, ending with the parameters computed here.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

from django.db import connections
from django.db.models.query import QuerySet

from django_readonly_pool import bridge, compiled
from django_readonly_pool.pool import ReadPool

from .cache import MAX_SHAPES, NOT_ELIGIBLE, counts, direct_pool, execute_direct, lock, scalars

__all__ = ["fast_scalar"]


@dataclass(slots=True)
class _Scalar:
    sql: str
    prefix: tuple[Any, ...]  # the statement's parameters before the WHERE's (exists(): SELECT 1)
    method: str
    alias: str
    pins: tuple[Any, ...]
    trusted: bool = False

    def read(self, row: Any) -> Any:
        """The answer Django's get_aggregation() / has_results() makes of the row."""
        if self.method == "exists":
            return bool(row)
        value = row[0] if row else 0  # no row: Count's empty_result_set_value
        return None if value is None else int(value)


def fast_scalar(qs: QuerySet[Any], alias: str, method: str) -> Awaitable[Any] | None:
    """An awaitable doing ``qs.count()`` / ``qs.exists()`` on the pool of *alias*, or None."""
    if (qs._result_cache is not None
            or getattr(type(qs), method) is not getattr(QuerySet, method) or not compiled.installed()):
        return None
    query = qs.query
    if query.annotations:  # then the answer is not always the first column: Django's path
        return None
    found = compiled.shape(query.get_compiler(using=alias), method)
    if found is None:
        return None
    entry = scalars.get(found.key)
    if entry is NOT_ELIGIBLE:
        return None
    if entry is not None and entry.trusted:
        counts["hits"] += 1
        connection = connections[alias]
        pool = direct_pool(connection)
        if pool is None:
            return bridge.call_in_bridge(_run_scalar, (entry, found.params, connection), {})
        return _run_scalar_direct(entry, found.params, connection, pool)
    return bridge.call_in_bridge(_learn_scalar, (qs, alias, method, found), {})


def _run_scalar(entry: _Scalar, params: tuple[Any, ...], connection: Any) -> Any:
    with connection.cursor() as cursor:
        cursor.execute(entry.sql, (*entry.prefix, *params))
        return entry.read(cursor.fetchone())


async def _run_scalar_direct(entry: _Scalar, params: tuple[Any, ...], connection: Any, pool: ReadPool) -> Any:
    rows = await execute_direct(pool, connection, entry.sql, (*entry.prefix, *params))
    return entry.read(rows[0] if rows else None)


def _learn_scalar(qs: QuerySet[Any], alias: str, method: str, found: compiled.Found) -> Any:
    """Django's own call, its statement recorded (no statement of ours: assertNumQueries holds)."""
    key, params, pins = found
    sent: list[tuple[str, Any, bool]] = []

    def record(execute: Any, sql: str, sql_params: Any, many: bool, context: dict[str, Any]) -> Any:
        sent.append((sql, sql_params, many))
        return execute(sql, sql_params, many, context)

    connection = connections[alias]
    with connection.execute_wrapper(record):
        answer = getattr(qs, method)()
    candidate = None
    if len(sent) == 1 and not sent[0][2]:
        sql, sent_params = sent[0][0], tuple(sent[0][1] or ())
        cut = len(sent_params) - len(params)
        if cut >= 0 and compiled.same(sent_params[cut:], params):
            candidate = _Scalar(sql, sent_params[:cut], method, alias, tuple(pins))
    with lock:
        entry = scalars.get(key)
        if candidate is None:
            scalars[key] = NOT_ELIGIBLE
        elif entry is None:
            scalars[key] = candidate
            counts["misses"] += 1
        elif entry is not NOT_ELIGIBLE and not entry.trusted:
            if (entry.sql, entry.prefix) == (candidate.sql, candidate.prefix):
                entry.trusted = True
            else:
                scalars[key] = NOT_ELIGIBLE
        while len(scalars) > MAX_SHAPES:
            scalars.popitem(last=False)
    return answer

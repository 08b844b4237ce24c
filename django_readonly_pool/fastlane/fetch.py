"""``async for`` over a queryset whose statement is trusted: rows awaited from the event loop.

A queryset's rows are read by Django's iterable (``ModelIterable``, or
``ValuesListIterable``/``FlatValuesListIterable`` for ``values_list()``), which
compiles the query and reads through the cursor, in the bridge. When the
compiled-SQL cache (:mod:`django_readonly_pool.compiled`) already trusts the
query's shape, the statement and its parameters are known before anything runs:
they are sent on the pool straight from the coroutine (the direct lane, see
:mod:`.cache`), and the results made from the rows as the iterable makes them:
the converters Django's compiler gives (``apply_converters()``), then a tuple or
the first value per row, or an instance: ``from_db()`` for the model's columns,
Django's own ``RelatedPopulator`` for each ``select_related()`` relation, then
the annotations.

It applies to a queryset of one of those iterables with nothing they do beyond
that: no ``prefetch_related()`` (its lookups run after), no known related
objects (a related manager's), no ORDER BY columns added to a DISTINCT select,
no composite field, and no fetch mode that tracks peers; anything else, or a
statement Django's cursor wrapper would add something to, takes the bridge and
Django's iterable.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Final

from django.db import connections
from django.db.models import Model
from django.db.models.query import (
    FlatValuesListIterable,
    ModelIterable,
    QuerySet,
    ValuesListIterable,
    get_related_populators,
)

from django_readonly_pool import compiled
from django_readonly_pool.pool import ReadPool

from .cache import counts, direct_pool, execute_direct

__all__ = ["fast_fetch"]

_DJANGOS_FETCH_ALL: Final = QuerySet._fetch_all  # a QuerySet class that overrides it fetches its own way
# Django 6.1 passes the queryset's fetch mode to from_db() and to the populators.
_FETCH_MODES: Final = "fetch_mode" in inspect.signature(get_related_populators).parameters


@dataclass(frozen=True, slots=True)
class _Rows:
    """How a trusted shape's rows become results (derived once from its compiled state)."""

    kind: str  # "model" (ModelIterable), "tuples" (ValuesListIterable), "flat" (FlatValuesListIterable)
    converters: tuple[tuple[int, tuple[Any, ...], Any], ...]
    model: Any = None  # "model" only, from here on
    start: int = 0
    end: int = 0
    init_list: list[str] | None = None
    populators: tuple[Any, ...] = ()
    annotations: tuple[tuple[str, int], ...] = ()
    fetch_mode: dict[str, Any] | None = None


_ITERABLES: Final[dict[Any, str]] = {ModelIterable: "model", ValuesListIterable: "tuples", FlatValuesListIterable: "flat"}


def _rows_plan(compiler: Any, alias: str, kind: str, fetch_mode: Any) -> _Rows | None:
    """From a compiler left as Django's ``as_sql()`` leaves it (:func:`compiled.restore`)."""
    if compiler.has_extra_select:
        return None  # rows cut to col_count by Django's cursor_iter
    fields = [s[0] for s in compiler.select[0:compiler.col_count]]
    if compiler.has_composite_fields(fields):
        return None  # rows reshaped by composite_fields_to_tuples()
    converters = tuple((pos, tuple(convs), expr) for pos, (convs, expr) in compiler.get_converters(fields).items())
    if kind != "model":
        return _Rows(kind, converters)
    klass_info = compiler.klass_info
    if not klass_info:
        return None
    model = klass_info["model"]
    if _FETCH_MODES and getattr(model.from_db, "__func__", None) is not getattr(Model.from_db, "__func__", None):
        return None  # a from_db() of the model's own: Django decides how to call it
    select = compiler.select
    select_fields = klass_info["select_fields"]
    start, end = select_fields[0], select_fields[-1] + 1
    args = (klass_info, select, alias, fetch_mode) if _FETCH_MODES else (klass_info, select, alias)
    return _Rows(
        kind, converters, model=model, start=start, end=end,
        init_list=[f[0].target.attname for f in select[start:end]],
        populators=tuple(get_related_populators(*args)),
        annotations=tuple((compiler.annotation_col_map or {}).items()),
        fetch_mode={"fetch_mode": fetch_mode} if _FETCH_MODES else {},
    )


def fast_fetch(qs: QuerySet[Any], alias: str) -> Awaitable[None] | None:
    """An awaitable filling ``qs``'s result cache from the pool of *alias*, or None (the bridge)."""
    kind = _ITERABLES.get(getattr(qs, "_iterable_class", None))
    if (kind is None or type(qs)._fetch_all is not _DJANGOS_FETCH_ALL
            or qs._prefetch_related_lookups or qs._known_related_objects  # type: ignore[attr-defined]
            or not compiled.installed()):
        return None
    fetch_mode = getattr(qs, "_fetch_mode", None)
    if getattr(fetch_mode, "track_peers", False):
        return None
    connection = connections[alias]
    pool = direct_pool(connection)
    if pool is None:
        return None
    compiler = qs.query.get_compiler(using=alias)
    found = compiled.shape(compiler, True, False)  # as execute_sql() calls as_sql()
    if found is None:
        return None
    entry = compiled.lookup(found.key)
    if entry is None:
        return None
    plan: _Rows | bool | None = entry.derived.get((kind, fetch_mode))
    if plan is None:
        compiled.restore(entry, compiler)
        plan = entry.derived[kind, fetch_mode] = _rows_plan(compiler, alias, kind, fetch_mode) or False
    if plan is False:
        return None
    assert isinstance(plan, _Rows)
    return _fetch(qs, plan, (entry.sql, found.params), connection, pool)


async def _fetch(qs: Any, plan: _Rows, statement: tuple[str, Any], connection: Any, pool: ReadPool) -> None:
    rows = await execute_direct(pool, connection, *statement)
    if plan.converters:
        rows = _converted(plan.converters, rows, connection)
    if plan.kind == "tuples":
        qs._result_cache = [row if type(row) is tuple else tuple(row) for row in rows]
    elif plan.kind == "flat":
        qs._result_cache = [row[0] for row in rows]
    else:
        qs._result_cache = _instances(plan, rows, connection)
    counts["fetched"] += 1


def _converted(converters: tuple[tuple[int, tuple[Any, ...], Any], ...], rows: list[Any],
               connection: Any) -> list[list[Any]]:
    """Django's ``SQLCompiler.apply_converters()``: each row a list, its values converted."""
    out = []
    for row in rows:
        row = list(row)
        for pos, convs, expression in converters:
            value = row[pos]
            for converter in convs:
                value = converter(value, expression, connection)
            row[pos] = value
        out.append(row)
    return out


def _instances(plan: _Rows, rows: list[Any], connection: Any) -> list[Model]:
    """Django's ``ModelIterable`` loop, for what :func:`fast_fetch` lets through."""
    from_db, db, init_list, start, end = plan.model.from_db, connection.alias, plan.init_list, plan.start, plan.end
    populators, annotations, fetch_mode = plan.populators, plan.annotations, plan.fetch_mode or {}
    objs = []
    for row in rows:
        obj = from_db(db, init_list, row[start:end], **fetch_mode)
        for populator in populators:
            populator.populate(row, obj)
        for name, pos in annotations:
            setattr(obj, name, row[pos])
        objs.append(obj)
    return objs

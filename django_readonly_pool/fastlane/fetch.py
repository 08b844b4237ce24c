"""``async for`` over a queryset whose statement is trusted: rows awaited from the event loop.

A queryset's rows are read by Django's iterable (``ModelIterable``), which
compiles the query and reads through the cursor, in the bridge. When the
compiled-SQL cache (:mod:`django_readonly_pool.compiled`) already trusts the
query's shape, the statement and its parameters are known before anything runs:
they are sent on the pool straight from the coroutine (the direct lane, see
:mod:`.cache`), and the instances are built from the rows as ``ModelIterable``
builds them: the converters Django's compiler gives, ``from_db()`` for the
model's columns, Django's own ``RelatedPopulator`` for each ``select_related()``
relation, then the annotations.

It applies to a queryset of Django's ``ModelIterable`` with nothing that
iterable does beyond that: no ``prefetch_related()`` (its lookups run after),
no known related objects (a related manager's), no extra select, and no fetch
mode that tracks peers; anything else, or a statement Django's cursor wrapper
would add something to, takes the bridge and Django's iterable.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Final

from django.db import connections
from django.db.models import Model
from django.db.models.query import ModelIterable, QuerySet, get_related_populators

from django_readonly_pool import compiled
from django_readonly_pool.pool import ReadPool

from .cache import counts, direct_pool, execute_direct

__all__ = ["fast_fetch"]

_DJANGOS_FETCH_ALL: Final = QuerySet._fetch_all  # a QuerySet class that overrides it fetches its own way
# Django 6.1 passes the queryset's fetch mode to from_db() and to the populators.
_FETCH_MODES: Final = "fetch_mode" in inspect.signature(get_related_populators).parameters


@dataclass(frozen=True, slots=True)
class _Rows:
    """How a trusted shape's rows become instances (derived once from its compiled state)."""

    model: type[Model]
    start: int
    end: int
    init_list: list[str]
    converters: tuple[tuple[int, tuple[Any, ...], Any], ...]
    populators: tuple[Any, ...]
    annotations: tuple[tuple[str, int], ...]
    fetch_mode: dict[str, Any]


def _rows_plan(compiler: Any, alias: str, fetch_mode: Any) -> _Rows | None:
    """From a compiler left as Django's ``as_sql()`` leaves it (:func:`compiled.restore`)."""
    klass_info = compiler.klass_info
    if not klass_info or compiler.has_extra_select:
        return None
    model = klass_info["model"]
    if _FETCH_MODES and getattr(model.from_db, "__func__", None) is not getattr(Model.from_db, "__func__", None):
        return None  # a from_db() of the model's own: Django decides how to call it
    select = compiler.select
    select_fields = klass_info["select_fields"]
    start, end = select_fields[0], select_fields[-1] + 1
    converters = compiler.get_converters([s[0] for s in select[0:compiler.col_count]])
    args = (klass_info, select, alias, fetch_mode) if _FETCH_MODES else (klass_info, select, alias)
    return _Rows(
        model=model, start=start, end=end, init_list=[f[0].target.attname for f in select[start:end]],
        converters=tuple((pos, tuple(convs), expr) for pos, (convs, expr) in converters.items()),
        populators=tuple(get_related_populators(*args)),
        annotations=tuple((compiler.annotation_col_map or {}).items()),
        fetch_mode={"fetch_mode": fetch_mode} if _FETCH_MODES else {},
    )


def fast_fetch(qs: QuerySet[Any], alias: str) -> Awaitable[None] | None:
    """An awaitable filling ``qs``'s result cache from the pool of *alias*, or None (the bridge)."""
    if (getattr(qs, "_iterable_class", None) is not ModelIterable or type(qs)._fetch_all is not _DJANGOS_FETCH_ALL
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
    plan: _Rows | bool | None = entry.derived.get(fetch_mode)
    if plan is None:
        compiled.restore(entry, compiler)
        plan = entry.derived[fetch_mode] = _rows_plan(compiler, alias, fetch_mode) or False
    if plan is False:
        return None
    assert isinstance(plan, _Rows)
    return _fetch(qs, plan, (entry.sql, found.params), connection, pool)


async def _fetch(qs: Any, plan: _Rows, statement: tuple[str, Any], connection: Any, pool: ReadPool) -> None:
    rows = await execute_direct(pool, connection, *statement)
    qs._result_cache = _instances(plan, rows, connection)
    counts["fetched"] += 1


def _instances(plan: _Rows, rows: list[Any], connection: Any) -> list[Model]:
    """Django's ``ModelIterable`` loop, for what :func:`fast_fetch` lets through."""
    from_db, db, init_list, start, end = plan.model.from_db, connection.alias, plan.init_list, plan.start, plan.end
    converters, populators, annotations, fetch_mode = (
        plan.converters, plan.populators, plan.annotations, plan.fetch_mode)
    objs = []
    for row in rows:
        if converters:  # SQLCompiler.apply_converters()
            row = list(row)
            for pos, convs, expression in converters:
                value = row[pos]
                for converter in convs:
                    value = converter(value, expression, connection)
                row[pos] = value
        obj = from_db(db, init_list, row[start:end], **fetch_mode)
        for populator in populators:
            populator.populate(row, obj)
        for name, pos in annotations:
            setattr(obj, name, row[pos])
        objs.append(obj)
    return objs

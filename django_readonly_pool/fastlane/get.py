"""``aget(**kwargs)`` from a statement learnt per query shape.

For the most common read of web code, ``await Model.objects.aget(pk=...)`` (or
any exact lookups on plain columns), the SQL only depends on the model, the
alias, the queryset's class and the names of the lookups. So the first call of
a shape goes through Django as usual, and is compiled once; later calls reuse
the SQL, prepare the parameters the way Django's ``Exact`` lookup does, and
build the instances with Django's converters and ``Model.from_db()``; the
statement goes through Django's own cursor wrapper whenever that adds anything
(``execute_wrapper()`` hooks, ``connection.queries``: see :mod:`.cache`).

A call takes the fast lane only when nothing could make its SQL or its result
differ from an untouched queryset's:

* the queryset is as a fresh one of the model (:mod:`.fresh`), but for a
  ``select_related()``, and its class and ``select_related()`` tree are part of
  the cache key; the related instances are built by Django's own
  ``RelatedPopulator`` objects (made once per shape from Django's compilation),
  as its ``ModelIterable`` builds them;
* every keyword is ``pk``, a concrete column, or a foreign key's attname
  (``author_id``), optionally with ``__exact``, whose exact lookup is Django's own
  (``Exact``, ``IntegerFieldExact``, ``RelatedExact``), and no value is None, an
  expression, a queryset or a model.

The field's exact lookup is checked on every call (one registered since takes
Django's path), and Django 6.1's fetch mode is passed to ``from_db()`` as its
``ModelIterable`` passes it (a mode that tracks peers takes Django's path).

A shape is cached only after checking, on its first compilation, that the
parameters prepared here are exactly those Django produced. Values are prepared
as Django prepares them (``get_prep_value`` then ``get_db_prep_value``); a value
Django would answer without a query (an integer out of the column's range) or
refuse takes Django's path, so Django raises its own exception. Django's
internal ``EmptyResultSet``/``FullResultSet`` never escape.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

from django.db import connections
from django.db.models import Model
from django.db.models.fields.related_lookups import RelatedExact
from django.db.models.lookups import Exact, IntegerFieldExact, IntegerFieldOverflow
from django.db.models.query import MAX_GET_RESULTS, QuerySet, get_related_populators

from django_readonly_pool import bridge
from django_readonly_pool.pool import ReadPool

from .cache import NOT_ELIGIBLE, counts, direct_pool, execute_direct, remember, shapes
from .fresh import untouched

__all__ = ["fast_get"]

_EXACT_LOOKUPS: Final = (Exact, IntegerFieldExact, RelatedExact)


# Django 6.1 passes the queryset's fetch mode to from_db() and to select_related()'s populators.
_FETCH_MODES: Final = "fetch_mode" in inspect.signature(get_related_populators).parameters
_MAY_DIFFER: Final = frozenset({"select_related"})  # from a fresh Query: part of the key


@dataclass(frozen=True, slots=True)
class _Shape:
    sql: str
    preps: tuple[Callable[[Any], Any], ...]  # one per parameter, in SQL order
    keys: tuple[str, ...]  # the kwargs names, in SQL order
    init_list: list[str]  # passed to Model.from_db as Django passes it (one list per query)
    converters: tuple[tuple[int, tuple[Any, ...], Any], ...]
    model: type[Model]
    alias: str
    end: int  # the model's columns are row[:end]; select_related()'s follow
    populators: tuple[Any, ...]  # Django's RelatedPopulator per select_related() relation
    fetch_mode: dict[str, Any]  # from_db()'s keyword (Django 6.1+), as Django's ModelIterable passes it


class _DjangoPath(Exception):
    """This call's values need Django's own path (Django raises, or answers without a query)."""


def _field_for(model: type[Model], key: str) -> Any:
    name = key[:-7] if key.endswith("__exact") else key
    if "__" in name:
        return None
    opts = model._meta
    field: Any
    if name == "pk":
        field = opts.pk
    else:
        try:
            field = opts.get_field(name)
        except Exception:  # noqa: BLE001 - unknown names: let Django raise its error
            return None
    if getattr(field, "attname", None) is None or not getattr(field, "concrete", False):
        return None
    lookup = field.get_lookup("exact")
    if field.is_relation:
        # author_id=...: a plain column. author=...: Django normalises the value first.
        if name != field.attname or not field.many_to_one or len(field.foreign_related_fields) != 1:
            return None
        if lookup is not RelatedExact:
            return None
    elif lookup not in _EXACT_LOOKUPS:
        return None
    return field


def _prep(field: Any, connection: Any) -> Callable[[Any], Any]:
    """Prepare a value as Django's exact lookup does; raise _DjangoPath where Django
    would answer without a query (out of the column's range) or raise."""
    target = field.target_field if field.is_relation else field
    exact = field.get_lookup("exact")
    checked = issubclass(exact, IntegerFieldOverflow)
    low, high = connection.ops.integer_field_range(field.get_internal_type()) if checked else (None, None)
    get_prep_value, get_db_prep_value, get_lookup = target.get_prep_value, target.get_db_prep_value, field.get_lookup

    def prep(value: Any) -> Any:
        if get_lookup("exact") is not exact:  # an exact lookup registered since: Django's
            raise _DjangoPath
        try:
            prepared = get_prep_value(value)
            if checked and isinstance(prepared, int) and (
                    (low is not None and prepared < low) or (high is not None and prepared > high)):
                raise _DjangoPath  # Django: no rows, no query
            return get_db_prep_value(prepared, connection, prepared=True)
        except Exception:  # noqa: BLE001 - Django raises its own error, or answers without a query
            raise _DjangoPath from None

    return prep


def _values_ok(kwargs: dict[str, Any]) -> bool:
    for value in kwargs.values():
        if value is None or isinstance(value, (Model, QuerySet)) or hasattr(value, "resolve_expression"):
            return False
    return True


def _compile(qs: QuerySet[Any], alias: str, kwargs: dict[str, Any]) -> Any:
    """Compile the shape with Django and check our parameters against its own."""
    model = qs.model
    keys = tuple(sorted(kwargs))  # Q() sorts keyword lookups, so does the WHERE
    fields = [_field_for(model, key) for key in keys]
    if any(f is None for f in fields):
        return NOT_ELIGIBLE
    connection = connections[alias]
    clone = qs.filter(**kwargs).order_by()
    clone.query.set_limits(high=MAX_GET_RESULTS)
    compiler = clone.query.get_compiler(using=alias)
    sql, params = compiler.as_sql()  # EmptyResultSet/FullResultSet: the caller's business
    preps = tuple(_prep(f, connection) for f in fields)
    mine = [prep(kwargs[key]) for prep, key in zip(preps, keys, strict=True)]
    if list(params) != mine or [type(p) for p in params] != [type(p) for p in mine]:
        return NOT_ELIGIBLE
    select = compiler.select
    klass_info = compiler.klass_info
    if compiler.annotation_col_map or not klass_info:
        return NOT_ELIGIBLE
    start, end = klass_info["select_fields"][0], klass_info["select_fields"][-1] + 1
    related = klass_info.get("related_klass_infos")
    if start != 0 or (end != len(select) and not related):
        return NOT_ELIGIBLE
    fetch_mode = getattr(qs, "_fetch_mode", None)
    if getattr(fetch_mode, "track_peers", False) or (
            _FETCH_MODES and getattr(model.from_db, "__func__", None) is not getattr(Model.from_db, "__func__", None)):
        return NOT_ELIGIBLE  # peers to track, a from_db() of the model's own: Django's ModelIterable
    args = (klass_info, select, alias, fetch_mode) if _FETCH_MODES else (klass_info, select, alias)
    converters = compiler.get_converters([f[0] for f in select])
    return _Shape(
        sql=sql, preps=preps, keys=keys, init_list=[f[0].target.attname for f in select[start:end]],
        converters=tuple((pos, tuple(convs), expr) for pos, (convs, expr) in converters.items()),
        model=model, alias=alias, end=end, populators=tuple(get_related_populators(*args)) if related else (),
        fetch_mode={"fetch_mode": fetch_mode} if _FETCH_MODES else {},
    )


def _related_key(value: Any) -> Any:
    """select_related()'s tree as part of the key (False, True, or nested dicts)."""
    if type(value) is bool:
        return value
    if type(value) is not dict:
        raise _DjangoPath
    return tuple((name, _related_key(inner)) for name, inner in value.items())


def fast_get(qs: QuerySet[Any], alias: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Awaitable[Any] | None:
    """An awaitable doing ``qs.get(**kwargs)`` on the pool of *alias*, or None (Django's path)."""
    if args or not kwargs or not _values_ok(kwargs) or not untouched(qs, _MAY_DIFFER):
        counts["ineligible"] += 1
        return None
    try:
        key = (qs.model, alias, type(qs), _related_key(qs._query.select_related), *sorted(kwargs))  # type: ignore[attr-defined]
    except _DjangoPath:
        counts["ineligible"] += 1
        return None
    shape = shapes.get(key)
    if shape is NOT_ELIGIBLE:
        counts["ineligible"] += 1
        return None
    if shape is None:
        def first_call() -> Any:
            try:
                compiled = _compile(qs, alias, kwargs)
            except Exception:  # noqa: BLE001 - EmptyResultSet, FullResultSet, _DjangoPath, Django's own errors
                # These values answer without SQL, or make Django raise: nothing learnt
                # about the shape, and Django's path below gives Django's answer.
                compiled = None
            if compiled is not None:
                remember(shapes, key, compiled)
                counts["misses"] += 1
            return qs.get(**kwargs)  # Django's own path, this first time

        return bridge.call_in_bridge(first_call, (), {})
    try:
        if len(shape.keys) == 1:  # aget(pk=...): no comprehension
            params = [shape.preps[0](kwargs[shape.keys[0]])]
        else:
            params = [prep(kwargs[name]) for prep, name in zip(shape.preps, shape.keys, strict=True)]
    except _DjangoPath:
        counts["ineligible"] += 1
        return None
    counts["hits"] += 1
    connection = connections[alias]
    pool = direct_pool(connection)
    if pool is None:
        return bridge.call_in_bridge(_run, (shape, params, connection), {})
    return _run_direct(shape, params, connection, pool)


def _run(shape: _Shape, params: list[Any], connection: Any) -> Any:
    with connection.cursor() as cursor:
        cursor.execute(shape.sql, params)
        rows = cursor.fetchall()
    return _instance(shape, rows, connection)


async def _run_direct(shape: _Shape, params: list[Any], connection: Any, pool: ReadPool) -> Any:
    return _instance(shape, await execute_direct(pool, connection, shape.sql, params), connection)


def _instance(shape: _Shape, rows: Any, connection: Any) -> Any:
    """``get()``'s answer from the rows: the instance, DoesNotExist or MultipleObjectsReturned."""
    model, alias, init_list, converters = shape.model, shape.alias, shape.init_list, shape.converters
    populators, fetch_mode = shape.populators, shape.fetch_mode
    objs = []
    for row in rows:
        if converters:
            row = list(row)
            for pos, convs, expression in converters:
                value = row[pos]
                for converter in convs:
                    value = converter(value, expression, connection)
                row[pos] = value
        obj = model.from_db(alias, init_list, row[:shape.end] if populators else row, **fetch_mode)
        for populator in populators:  # as Django's ModelIterable does for select_related()
            populator.populate(row, obj)
        objs.append(obj)
    num = len(objs)
    if num == 1:
        return objs[0]
    name = model._meta.object_name
    if not num:
        raise model.DoesNotExist(f"{name} matching query does not exist.")  # type: ignore[attr-defined]
    shown = num if num < MAX_GET_RESULTS else f"more than {MAX_GET_RESULTS - 1}"
    raise model.MultipleObjectsReturned(  # type: ignore[attr-defined]
        f"get() returned more than one {name} -- it returned {shown}!"
    )

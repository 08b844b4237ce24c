"""The fast lane: compiled SQL cached per query shape, for ``aget(**kwargs)``.

Building a Django query (``filter()``: lookups, WHERE tree) and compiling it
(``as_sql()``) cost more CPU than the round trip of a primary-key read. For the
most common read of web code, ``await Model.objects.aget(pk=...)`` (or any exact
lookups on plain fields), the SQL only depends on the model, the alias and the
names of the lookups. So the first call of a shape goes through Django as
usual, and is compiled once; later calls reuse the SQL, prepare the parameters
the way Django's ``Exact`` lookup does, run it through Django's own cursor
wrapper (``execute_wrapper()`` hooks and ``connection.queries`` see it), and
build the instances with Django's converters and ``Model.from_db()``.

A call takes the fast lane only when nothing could make its SQL differ:

* the queryset is untouched (no filter, ordering, slicing, annotation,
  select_related, only/defer, values, prefetch, hints ...) and of a class that
  does not override ``get()``;
* every keyword is ``pk`` or a concrete non-relation field (or an attname like
  ``author_id``), optionally with ``__exact``, whose ``exact`` lookup is
  Django's own ``Exact``, and no value is None, an expression or a model.

A shape is cached only after checking, on its first compilation, that the
parameters prepared here are exactly those Django produced. Anything else takes
Django's path. ``READONLY_POOL["FAST_LANE"] = False`` turns it off.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from django.db import connections
from django.db.models import Model
from django.db.models.lookups import Exact, IntegerFieldExact
from django.db.models.query import MAX_GET_RESULTS, ModelIterable, QuerySet

__all__ = ["clear", "fast_get", "stats"]

_MAX_SHAPES: Final = 2048
_PLAIN: Final = (int, str, float, bytes)
_NOT_ELIGIBLE: Final = object()


@dataclass(frozen=True, slots=True)
class _Shape:
    sql: str
    preps: tuple[Callable[[Any], Any], ...]  # one per parameter, in SQL order
    keys: tuple[str, ...]  # the kwargs names, in SQL order
    # For integer fields: (key, min, max). Django answers an out-of-range value
    # with no rows and no query; such calls take Django's path.
    ranges: tuple[tuple[str, int | None, int | None], ...]
    init_list: tuple[str, ...]
    converters: tuple[tuple[int, tuple[Any, ...], Any], ...]
    model: type[Model]
    alias: str


_shapes: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
_lock = threading.Lock()
_stats = {"hits": 0, "misses": 0, "ineligible": 0}


def stats() -> dict[str, int]:
    return {**_stats, "shapes": len(_shapes)}


def clear(**kwargs: Any) -> None:
    """Forget every shape (``setting_changed`` receiver, tests)."""
    with _lock:
        _shapes.clear()


def _pristine(qs: QuerySet[Any]) -> bool:
    q = qs.query
    return (
        type(qs).get is QuerySet.get
        and qs._iterable_class is ModelIterable  # type: ignore[attr-defined]
        and not qs._prefetch_related_lookups  # type: ignore[attr-defined]
        and not qs._known_related_objects  # type: ignore[attr-defined]
        and not qs._sticky_filter  # type: ignore[attr-defined]
        and not qs._hints  # type: ignore[attr-defined]
        and qs._fields is None  # type: ignore[attr-defined]
        and not q.where.children
        and not q.select_related
        and not q.annotations
        and not q.extra
        and not q.distinct
        and not q.combinator
        and not q.values_select
        and not q.select
        and q.low_mark == 0
        and q.high_mark is None
        and q.deferred_loading == (frozenset(), True)
        and not q.select_for_update
        and not q.alias_map
    )


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
    if field.is_relation and name != field.attname:
        return None  # author=...: Django's related lookups normalise the value
    if field.get_lookup("exact") not in (Exact, IntegerFieldExact):
        return None
    return field


def _prep(field: Any, connection: Any) -> Callable[[Any], Any]:
    target = field.target_field if field.is_relation else field

    def prep(value: Any) -> Any:
        return target.get_db_prep_value(target.get_prep_value(value), connection, prepared=True)

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
        return _NOT_ELIGIBLE
    connection = connections[alias]
    clone = qs.filter(**kwargs).order_by()
    clone.query.set_limits(high=MAX_GET_RESULTS)
    compiler = clone.query.get_compiler(using=alias)
    sql, params = compiler.as_sql()
    preps = tuple(_prep(f, connection) for f in fields)
    try:
        mine = [prep(kwargs[key]) for prep, key in zip(preps, keys, strict=True)]
    except Exception:  # noqa: BLE001 - Django will raise its own error
        return _NOT_ELIGIBLE
    if list(params) != mine or [type(p) for p in params] != [type(p) for p in mine]:
        return _NOT_ELIGIBLE
    select = compiler.select
    klass_info = compiler.klass_info
    if compiler.annotation_col_map or not klass_info or klass_info.get("related_klass_infos"):
        return _NOT_ELIGIBLE
    start, end = klass_info["select_fields"][0], klass_info["select_fields"][-1] + 1
    if start != 0 or end != len(select):
        return _NOT_ELIGIBLE
    init_list = tuple(f[0].target.attname for f in select[start:end])
    converters = compiler.get_converters([f[0] for f in select[start:end]])
    ranges = tuple(
        (key, *connection.ops.integer_field_range(field.get_internal_type()))
        for key, field in zip(keys, fields, strict=True)
        if field.get_lookup("exact") is IntegerFieldExact
    )
    return _Shape(
        sql=sql, preps=preps, keys=keys, ranges=ranges, init_list=init_list,
        converters=tuple((pos, tuple(convs), expr) for pos, (convs, expr) in converters.items()),
        model=model, alias=alias,
    )


def fast_get(qs: QuerySet[Any], alias: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """A sync callable for the bridge doing ``qs.get(**kwargs)``, or None (not eligible)."""
    if args or not kwargs or not _pristine(qs) or not _values_ok(kwargs):
        _stats["ineligible"] += 1
        return None
    model = qs.model
    key = (model, alias, *sorted(kwargs))
    shape = _shapes.get(key)
    if shape is _NOT_ELIGIBLE:
        _stats["ineligible"] += 1
        return None
    if shape is None:
        def first_call() -> Any:
            compiled = _compile(qs, alias, kwargs)
            with _lock:
                _shapes[key] = compiled
                while len(_shapes) > _MAX_SHAPES:
                    _shapes.popitem(last=False)
            _stats["misses"] += 1
            return qs.get(**kwargs)  # Django's own path, this first time

        return first_call
    for name, low, high in shape.ranges:
        value = kwargs[name]
        if isinstance(value, int) and ((low is not None and value < low) or (high is not None and value > high)):
            _stats["ineligible"] += 1
            return None
    _stats["hits"] += 1
    return lambda: _run(shape, kwargs)


def _run(shape: _Shape, kwargs: dict[str, Any]) -> Any:
    connection = connections[shape.alias]
    params = [prep(kwargs[key]) for prep, key in zip(shape.preps, shape.keys, strict=True)]
    with connection.cursor() as cursor:
        cursor.execute(shape.sql, params)
        rows = cursor.fetchall()
    model = shape.model
    objs = []
    for row in rows:
        if shape.converters:
            row = list(row)
            for pos, convs, expression in shape.converters:
                value = row[pos]
                for converter in convs:
                    value = converter(value, expression, connection)
                row[pos] = value
        objs.append(model.from_db(shape.alias, list(shape.init_list), row))
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

"""The fast lane: compiled SQL cached per query shape, for ``aget(**kwargs)``.

Building a Django query (``filter()``: lookups, WHERE tree) and compiling it
(``as_sql()``) cost more CPU than the round trip of a primary-key read. For the
most common read of web code, ``await Model.objects.aget(pk=...)`` (or any exact
lookups on plain columns), the SQL only depends on the model, the alias, the
queryset's class and the names of the lookups. So the first call of a shape
goes through Django as usual, and is compiled once; later calls reuse the SQL,
prepare the parameters the way Django's ``Exact`` lookup does, run it through
Django's own cursor wrapper (``execute_wrapper()`` hooks and ``connection.queries``
see it), and build the instances with Django's converters and ``Model.from_db()``.

A call takes the fast lane only when nothing could make its SQL or its result
differ from an untouched queryset's:

* the queryset and its ``Query`` are as a fresh one of the model: each of their
  instance attributes equals what a newly built ``QuerySet``/``Query`` holds (or
  its class, for attributes ``__init__`` leaves there), so ``extra()``,
  ``filter()``, ``order_by()``, slicing, ``select_related()``, ``only()``, hints,
  prefetches, a related manager's filters, and any attribute a future Django sets
  all take Django's path: nothing is listed by hand;
* its class overrides no method or attribute of Django's ``QuerySet`` (adding new
  ones is fine), and the class is part of the cache key;
* every keyword is ``pk``, a concrete column, or a foreign key's attname
  (``author_id``), optionally with ``__exact``, whose exact lookup is Django's own
  (``Exact``, ``IntegerFieldExact``, ``RelatedExact``), and no value is None, an
  expression, a queryset or a model.

A shape is cached only after checking, on its first compilation, that the
parameters prepared here are exactly those Django produced. Values are prepared
as Django prepares them (``get_prep_value`` then ``get_db_prep_value``); a value
Django would answer without a query (an integer out of the column's range) or
refuse takes Django's path, so Django raises its own exception. Django's
internal ``EmptyResultSet``/``FullResultSet`` never escape.
``READONLY_POOL["FAST_LANE"] = False`` turns it off.

``acount()`` and ``aexists()`` of any queryset whose shape
:mod:`django_readonly_pool.compiled` can fingerprint skip Django's building of
the COUNT/EXISTS query too (a clone, an aggregate resolved, ``as_sql()``): the
statement Django sent the first times for the shape is sent again with this
queryset's parameters, and the row read as Django reads it (``int(count)``;
``exists()`` is whether a row came back; a queryset with annotations takes
Django's path, so the answer is the first column). A shape is trusted after
Django's own call sent the same one statement twice, ending with the parameters
computed here.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Final

from django.db import connections
from django.db.models import Model
from django.db.models.fields.related_lookups import RelatedExact
from django.db.models.lookups import Exact, IntegerFieldExact, IntegerFieldOverflow
from django.db.models.query import MAX_GET_RESULTS, QuerySet
from django.db.models.sql import Query

from . import compiled

__all__ = ["clear", "fast_get", "fast_scalar", "stats"]

_MAX_SHAPES: Final = 2048
_EXACT_LOOKUPS: Final = (Exact, IntegerFieldExact, RelatedExact)
_NOT_ELIGIBLE: Final = object()
_NOT_SHAPE_ATTRS: Final = frozenset({"_query", "_db"})  # the alias is part of the key


@dataclass(frozen=True, slots=True)
class _Shape:
    sql: str
    preps: tuple[Callable[[Any], Any], ...]  # one per parameter, in SQL order
    keys: tuple[str, ...]  # the kwargs names, in SQL order
    init_list: list[str]  # passed to Model.from_db as Django passes it (one list per query)
    converters: tuple[tuple[int, tuple[Any, ...], Any], ...]
    model: type[Model]
    alias: str


class _DjangoPath(Exception):
    """This call's values need Django's own path (Django raises, or answers without a query)."""


_shapes: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
_lock = threading.Lock()
_stats = {"hits": 0, "misses": 0, "ineligible": 0}
_fresh: dict[type[Model], tuple[dict[str, Any], dict[str, Any]]] = {}
_plain_classes: dict[type[Any], bool] = {}


def stats() -> dict[str, int]:
    return {**_stats, "shapes": len(_shapes)}


def clear(**kwargs: Any) -> None:
    """Forget every shape (tests; ``setting_changed`` receiver: when DATABASES changes)."""
    if kwargs.get("setting") not in (None, "DATABASES"):
        return
    with _lock:
        _shapes.clear()
        _fresh.clear()
        _scalars.clear()


def _defaults(model: type[Model]) -> tuple[dict[str, Any], dict[str, Any]]:
    """What a fresh QuerySet and a fresh Query of *model* hold, attribute by attribute
    (filled in from the classes as other attribute names are met)."""
    state = _fresh.get(model)
    if state is None:
        fresh: QuerySet[Any] = QuerySet(model=model)
        state = _fresh[model] = (dict(vars(fresh)), dict(vars(Query(model))))
    return state


def _class_default(cls: type[Any], name: str) -> Any:
    """The class attribute *name* as stored (a descriptor stays a descriptor: never equal)."""
    for klass in cls.__mro__:
        if name in vars(klass):
            return vars(klass)[name]
    return _NOT_ELIGIBLE


def _at_defaults(obj: Any, cls: type[Any], defaults: dict[str, Any]) -> bool:
    """Every instance attribute of *obj* (a chained clone sets some to their class's
    value) equals a fresh object's."""
    for name, value in vars(obj).items():
        if name in _NOT_SHAPE_ATTRS:
            continue
        default = defaults.get(name, _NOT_ELIGIBLE)
        if default is _NOT_ELIGIBLE:
            default = defaults[name] = _class_default(cls, name)
        if default is not value and default != value:
            return False
    return True


def _plain_class(cls: type[Any]) -> bool:
    """True when *cls* (a QuerySet subclass) overrides nothing of Django's QuerySet."""
    plain = _plain_classes.get(cls)
    if plain is None:
        django_names = set(vars(QuerySet)) - {"__module__", "__qualname__", "__doc__", "__dict__", "__weakref__"}
        plain = _plain_classes[cls] = all(
            not django_names.intersection(vars(klass)) for klass in cls.__mro__
            if klass is not QuerySet and issubclass(klass, QuerySet)
        )
    return plain


def _untouched(qs: QuerySet[Any]) -> bool:
    """The queryset and its Query are as a fresh one of the model (alias aside)."""
    cls = type(qs)
    if cls is not QuerySet and not _plain_class(cls):
        return False
    query = qs._query  # type: ignore[attr-defined]
    if type(query) is not Query:
        return False
    model = qs.model
    queryset_defaults, query_defaults = _fresh.get(model) or _defaults(model)
    return _at_defaults(qs, QuerySet, queryset_defaults) and _at_defaults(query, Query, query_defaults)


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
    checked = issubclass(field.get_lookup("exact"), IntegerFieldOverflow)
    low, high = connection.ops.integer_field_range(field.get_internal_type()) if checked else (None, None)
    get_prep_value, get_db_prep_value = target.get_prep_value, target.get_db_prep_value

    def prep(value: Any) -> Any:
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
        return _NOT_ELIGIBLE
    connection = connections[alias]
    clone = qs.filter(**kwargs).order_by()
    clone.query.set_limits(high=MAX_GET_RESULTS)
    compiler = clone.query.get_compiler(using=alias)
    sql, params = compiler.as_sql()  # EmptyResultSet/FullResultSet: the caller's business
    preps = tuple(_prep(f, connection) for f in fields)
    mine = [prep(kwargs[key]) for prep, key in zip(preps, keys, strict=True)]
    if list(params) != mine or [type(p) for p in params] != [type(p) for p in mine]:
        return _NOT_ELIGIBLE
    select = compiler.select
    klass_info = compiler.klass_info
    if compiler.annotation_col_map or not klass_info or klass_info.get("related_klass_infos"):
        return _NOT_ELIGIBLE
    start, end = klass_info["select_fields"][0], klass_info["select_fields"][-1] + 1
    if start != 0 or end != len(select):
        return _NOT_ELIGIBLE
    converters = compiler.get_converters([f[0] for f in select[start:end]])
    return _Shape(
        sql=sql, preps=preps, keys=keys, init_list=[f[0].target.attname for f in select[start:end]],
        converters=tuple((pos, tuple(convs), expr) for pos, (convs, expr) in converters.items()),
        model=model, alias=alias,
    )


def _remember(key: tuple[Any, ...], shape: Any) -> None:
    with _lock:
        _shapes[key] = shape
        while len(_shapes) > _MAX_SHAPES:
            _shapes.popitem(last=False)


def fast_get(qs: QuerySet[Any], alias: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """A sync callable for the bridge doing ``qs.get(**kwargs)``, or None (Django's path)."""
    if args or not kwargs or not _values_ok(kwargs) or not _untouched(qs):
        _stats["ineligible"] += 1
        return None
    key = (qs.model, alias, type(qs), *sorted(kwargs))
    shape = _shapes.get(key)
    if shape is _NOT_ELIGIBLE:
        _stats["ineligible"] += 1
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
                _remember(key, compiled)
                _stats["misses"] += 1
            return qs.get(**kwargs)  # Django's own path, this first time

        return first_call
    try:
        if len(shape.keys) == 1:  # aget(pk=...): no comprehension
            params = [shape.preps[0](kwargs[shape.keys[0]])]
        else:
            params = [prep(kwargs[name]) for prep, name in zip(shape.preps, shape.keys, strict=True)]
    except _DjangoPath:
        _stats["ineligible"] += 1
        return None
    _stats["hits"] += 1
    return partial(_run, shape, params)


def _run(shape: _Shape, params: list[Any]) -> Any:
    connection = connections[shape.alias]
    with connection.cursor() as cursor:
        cursor.execute(shape.sql, params)
        rows = cursor.fetchall()
    model, alias, init_list, converters = shape.model, shape.alias, shape.init_list, shape.converters
    objs = []
    for row in rows:
        if converters:
            row = list(row)
            for pos, convs, expression in converters:
                value = row[pos]
                for converter in convs:
                    value = converter(value, expression, connection)
                row[pos] = value
        objs.append(model.from_db(alias, init_list, row))
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


# --------------------------------------------------------------------------- #
# count() and exists()
# --------------------------------------------------------------------------- #


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


_scalars: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
_SCALAR_METHODS: Final = ("count", "exists")


def fast_scalar(qs: QuerySet[Any], alias: str, method: str) -> Any:
    """A sync callable for the bridge doing ``qs.count()`` / ``qs.exists()``, or None."""
    if (qs._result_cache is not None
            or getattr(type(qs), method) is not getattr(QuerySet, method) or not compiled.installed()):
        return None
    query = qs.query
    if query.annotations:  # then the answer is not always the first column: Django's path
        return None
    found = compiled.shape(query.get_compiler(using=alias), method)
    if found is None:
        return None
    entry = _scalars.get(found.key)
    if entry is _NOT_ELIGIBLE:
        return None
    if entry is not None and entry.trusted:
        _stats["hits"] += 1
        return partial(_run_scalar, entry, found.params)
    return partial(_learn_scalar, qs, alias, method, found)


def _run_scalar(entry: _Scalar, params: tuple[Any, ...]) -> Any:
    with connections[entry.alias].cursor() as cursor:
        cursor.execute(entry.sql, (*entry.prefix, *params))
        return entry.read(cursor.fetchone())


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
    with _lock:
        entry = _scalars.get(key)
        if candidate is None:
            _scalars[key] = _NOT_ELIGIBLE
        elif entry is None:
            _scalars[key] = candidate
            _stats["misses"] += 1
        elif entry is not _NOT_ELIGIBLE and not entry.trusted:
            if (entry.sql, entry.prefix) == (candidate.sql, candidate.prefix):
                entry.trusted = True
            else:
                _scalars[key] = _NOT_ELIGIBLE
        while len(_scalars) > _MAX_SHAPES:
            _scalars.popitem(last=False)
    return answer

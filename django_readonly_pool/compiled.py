"""Compiled SQL per query shape: Django's ``as_sql()`` once per shape, then reused.

Compiling a query (``SQLCompiler.as_sql()``: the select list, the joins of
``select_related()``, the ORDER BY, the WHERE tree) costs more CPU than the
round trip of a small read. Most reads an application sends differ only in the
values they compare with: ``filter(price__lt=p)`` with another ``p``. So the
backend's compiler (:mod:`django_readonly_pool.backend.compiler`) asks
:func:`shape` for the query's *shape* (a key made from its structure) and the
parameters Django would send; a trusted shape gives the SQL without compiling.

What makes up a shape, and what keeps a query out:

* every instance attribute of the ``Query`` either has a fingerprint here
  (the WHERE tree, the tables and joins, ``order_by``, the limits, ``values()``
  columns, ``select_related``, ``only()``/``defer()``, the COUNT and EXISTS
  annotations ...) or equals a fresh ``Query``'s: any other attribute (``extra(where=)``,
  ``annotate()``, ``distinct(*fields)``, combinators, ``select_for_update`` ...,
  and whatever a later Django adds) takes Django's path, nothing listed by hand;
* each WHERE leaf is one of Django's own lookups (exact class: a custom subclass
  is not trusted) on a plain column, with a literal value. Its parameters come
  from Django's ``process_rhs()`` for this very value, and its placeholder SQL
  (``IN (%s, %s)`` for two values) is part of the key; ``True``/``False`` are
  part of the key too (``WHERE flag`` vs ``WHERE NOT flag``). A value for which
  Django would send no SQL (an integer out of the column's range, an empty
  ``__in``) takes Django's path;
* the alias, the compiler's class and ``as_sql()``'s arguments.

A shape is trusted only after Django compiled it twice to the same SQL, with
parameters equal (values and types) to the ones computed here, and with the
compiler left in a state this module knows how to restore (``select``,
``klass_info`` ...). A mismatch marks the shape as Django's for good.

Objects of the query (fields, joins' relations, models) are keyed by ``id()``,
and each cached shape holds them, so an id cannot be reused while a shape
names it. Turned off with ``READONLY_POOL["FAST_LANE"] = False``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

from django.core.exceptions import EmptyResultSet, FullResultSet
from django.db.models import Count, lookups
from django.db.models.expressions import Col, Star, Value
from django.db.models.fields.related_lookups import (
    RelatedExact,
    RelatedGreaterThan,
    RelatedGreaterThanOrEqual,
    RelatedIn,
    RelatedIsNull,
    RelatedLessThan,
    RelatedLessThanOrEqual,
)
from django.db.models.sql import Query
from django.db.models.sql.datastructures import BaseTable, Join
from django.db.models.sql.where import AND, OR, WhereNode

from .conf import app_settings
from .errors import ConfigurationError

__all__ = ["Found", "clear", "follow_settings", "install", "installed", "learn", "lookup", "restore", "same", "shape",
           "stats", "uninstall"]

_MAX_SHAPES: Final = 4096
_NOT_ELIGIBLE: Final = object()
_MISSING: Final = object()

# Lookups whose SQL is "<column> <operator> <process_rhs()>", the operator fixed per class.
_LOOKUPS: Final = frozenset({
    lookups.Exact, lookups.IExact, lookups.GreaterThan, lookups.GreaterThanOrEqual,
    lookups.LessThan, lookups.LessThanOrEqual, lookups.IntegerFieldExact, lookups.IntegerGreaterThan,
    lookups.IntegerGreaterThanOrEqual, lookups.IntegerLessThan, lookups.IntegerLessThanOrEqual,
    lookups.In, lookups.Contains, lookups.IContains, lookups.StartsWith, lookups.IStartsWith,
    lookups.EndsWith, lookups.IEndsWith, lookups.Range,
    RelatedExact, RelatedIn, RelatedGreaterThan, RelatedGreaterThanOrEqual, RelatedLessThan,
    RelatedLessThanOrEqual,
})
_NULL_LOOKUPS: Final = frozenset({lookups.IsNull, RelatedIsNull})  # "IS [NOT] NULL", no parameter
_SCALARS: Final = (int, str, type(None))  # bool is an int
# Attributes that hold caches or state of building, not of the SQL.
_DERIVED: Final = frozenset({"_lookup_joins", "_annotation_select_cache", "_extra_select_cache",
                             "used_aliases", "base_table", "model", "filter_is_sticky"})
# What Django's as_sql() leaves on the compiler that later steps read (results_iter,
# the iterables); "where"/"having"/"qualify" are the query's own WHERE when cacheable.
_STATE: Final = frozenset({"select", "klass_info", "annotation_col_map", "col_count", "has_extra_select",
                           "_meta_ordering", "where", "having", "qualify"})


class Found(NamedTuple):
    """A query's shape: the key, the parameters Django would send, the objects keyed by id."""

    key: tuple[Any, ...]
    params: tuple[Any, ...]
    pins: list[Any]


class _Unknown(Exception):
    """Part of the query this module cannot fingerprint: Django's path."""


@dataclass(slots=True)
class Entry:
    sql: str
    state: dict[str, Any]
    pins: tuple[Any, ...]  # the objects keyed by id()
    trusted: bool = False
    # What the layers above derive once from a trusted entry's state (fastlane.fetch: how its
    # rows become instances), by their own key.
    derived: dict[Any, Any] = field(default_factory=dict)


_entries: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
_lock = threading.Lock()
_stats = {"hits": 0, "compiled": 0, "ineligible": 0}
_fresh: dict[type[Any], dict[str, Any]] = {}
_enabled = False


def install() -> None:
    global _enabled
    _enabled = True


def uninstall() -> None:
    global _enabled
    _enabled = False


def installed() -> bool:
    return _enabled


def follow_settings(**kwargs: Any) -> None:
    """``ready()`` and the ``setting_changed`` receiver: ``FAST_LANE`` turns the cache on or off,
    and a change of ``DATABASES`` or ``READONLY_POOL`` empties it."""
    if kwargs.get("setting") not in (None, "DATABASES", "READONLY_POOL"):
        return
    clear()
    try:
        on = app_settings().fast_lane
    except ConfigurationError:
        on = True  # the system check reports the bad setting
    if on:
        install()
    else:
        uninstall()


def stats() -> dict[str, int]:
    return {**_stats, "shapes": len(_entries)}


def clear() -> None:
    """Forget every shape."""
    with _lock:
        _entries.clear()
        _fresh.clear()


# --------------------------------------------------------------------------- #
# Fingerprints
# --------------------------------------------------------------------------- #


class _Walk:
    """One query's fingerprint: the parameters in SQL order and the objects keyed by id."""

    __slots__ = ("compiler", "connection", "pins", "select_params", "where_params")

    def __init__(self, compiler: Any) -> None:
        self.compiler = compiler
        self.connection = compiler.connection
        self.pins: list[Any] = []
        self.select_params: list[Any] = []
        self.where_params: list[Any] = []

    def pin(self, obj: Any) -> int:
        self.pins.append(obj)
        return id(obj)

    def col(self, col: Any) -> tuple[Any, ...]:
        if type(col) is not Col:
            raise _Unknown
        return (col.alias, self.pin(col.target), self.pin(col.output_field))

    def leaf(self, node: Any) -> tuple[Any, ...]:
        cls = type(node)
        lhs = self.col(node.lhs)
        rhs = node.rhs
        if cls in _NULL_LOOKUPS:
            if type(rhs) is not bool:
                raise _Unknown
            return (cls, lhs, rhs)
        if cls not in _LOOKUPS or node.bilateral_transforms or not node.rhs_is_direct_value():
            raise _Unknown
        if type(rhs) in (list, tuple, set, frozenset):
            if any(hasattr(v, "resolve_expression") for v in rhs):
                raise _Unknown
        elif hasattr(rhs, "resolve_expression") or hasattr(rhs, "__next__"):
            raise _Unknown
        # Django's own preparation of this value (EmptyResultSet/FullResultSet: Django's path).
        sql, params = node.process_rhs(self.compiler, self.connection)
        self.where_params.extend(params)
        return (cls, lhs, sql, ("bool", rhs) if type(rhs) is bool else None)

    def where(self, node: Any) -> tuple[Any, ...]:
        if type(node) is not WhereNode or node.connector not in (AND, OR):
            raise _Unknown
        parts: list[Any] = [node.connector, node.negated]
        for child in node.children:
            parts.append(self.where(child) if type(child) is WhereNode else self.leaf(child))
        return tuple(parts)

    def table(self, table: Any) -> tuple[Any, ...]:
        if type(table) is BaseTable:
            return ("T", table.table_name, table.table_alias)
        if type(table) is Join and table.filtered_relation is None:
            return ("J", table.table_name, table.parent_alias, table.table_alias, table.join_type,
                    self.pin(table.join_field), table.nullable)
        raise _Unknown

    def annotation(self, name: str, expr: Any) -> tuple[Any, ...]:
        """COUNT(*) (``count()``) and a literal (``exists()``'s ``SELECT 1``)."""
        cls = type(expr)
        if cls is Value:
            if type(expr.value) not in (int, str):
                raise _Unknown
            # Its SQL and parameter come from Django's Value.as_sql() (see _annotations).
            return (name, cls, type(expr.value), expr.value, type(expr._output_field_or_none))
        if cls is Count and not expr.distinct and expr.filter is None and getattr(expr, "order_by", None) is None:
            # [expression, filter] (Django 5.2), [expression, filter, order_by] (6.x)
            sources = expr.get_source_expressions()
            if type(sources[0]) is Star and all(s is None for s in sources[1:]):
                return (name, cls, getattr(expr, "is_summary", None))
        raise _Unknown


def _frozen(value: Any) -> Any:
    """A hashable form of a settings-like value (select_related's tree, masks)."""
    if type(value) in _SCALARS or type(value) is bool:
        return value
    if type(value) is dict:
        return ("dict", tuple((k, _frozen(v)) for k, v in value.items()))
    if type(value) in (tuple, list):
        return (type(value).__name__, tuple(_frozen(v) for v in value))
    if type(value) in (set, frozenset):
        if not all(type(v) is str for v in value):
            raise _Unknown
        return ("set", frozenset(value))
    raise _Unknown


def _strings(value: Any) -> tuple[str, ...]:
    if not all(type(v) is str for v in value):
        raise _Unknown
    return tuple(value)


def _annotations(walk: _Walk, query: Any, value: dict[str, Any]) -> Any:
    parts = tuple(walk.annotation(name, expr) for name, expr in value.items())
    for expr in query.annotation_select.values():  # in SELECT order: their parameters come first
        if type(expr) is Value:
            sql, params = walk.compiler.compile(expr)
            walk.select_params.extend(params)
            parts += (sql,)
    return parts


def _extra(value: dict[str, Any]) -> Any:
    """``extra(select=...)`` without parameters (exists() on a query with extra)."""
    if not all(type(sql) is str and not params for sql, params in value.values()):
        raise _Unknown
    return tuple((name, sql) for name, (sql, _) in value.items())


def _selected(walk: _Walk, value: Any) -> Any:
    if value is None:
        return None
    if type(value) is not dict or not all(type(v) in (str, int) for v in value.values()):
        raise _Unknown
    return tuple(value.items())


_FINGERPRINTS: Final[dict[str, Any]] = {
    "where": lambda walk, query, value: walk.where(value),
    "alias_map": lambda walk, query, value: tuple((k, walk.table(t)) for k, t in value.items()),
    "alias_refcount": lambda walk, query, value: tuple(value.items()),
    "table_map": lambda walk, query, value: tuple((k, tuple(v)) for k, v in value.items()),
    "external_aliases": lambda walk, query, value: tuple(value.items()),
    "order_by": lambda walk, query, value: _strings(value),
    "select": lambda walk, query, value: tuple(walk.col(c) for c in value),
    "values_select": lambda walk, query, value: _strings(value),
    "selected": lambda walk, query, value: _selected(walk, value),
    "annotations": _annotations,
    "extra": lambda walk, query, value: _extra(value),
    "deferred_loading": lambda walk, query, value: (_frozen(frozenset(value[0])), value[1]),
    "select_related": lambda walk, query, value: _frozen(value),
    "annotation_select_mask": lambda walk, query, value: _frozen(value),
    "extra_select_mask": lambda walk, query, value: _frozen(value),
    **{name: (lambda walk, query, value: _frozen(value)) for name in (
        "low_mark", "high_mark", "default_cols", "default_ordering", "standard_ordering", "distinct",
        "subquery", "max_depth", "alias_cols", "select_for_update", "group_by")},
}
# Of those, the ones that usually hold a plain scalar: taken as they are, without a call
# (what _frozen() gives them too).
_SCALAR_ATTRS: Final = frozenset({"low_mark", "high_mark", "default_cols", "default_ordering", "standard_ordering",
                                  "distinct", "subquery", "max_depth", "alias_cols", "select_for_update",
                                  "group_by"})
_PLAIN_SCALARS: Final = frozenset({int, str, bool, type(None)})
# An empty container's fingerprint depends on its type alone, and holds no parameter and no
# object to pin (checked for every fingerprint above): ("empty", type), without a call.
_CONTAINERS: Final = frozenset({dict, tuple, list, set, frozenset})


def _fresh_vars(model: Any) -> dict[str, Any]:
    fresh = _fresh.get(model)
    if fresh is None:
        fresh = _fresh[model] = dict(vars(Query(model)))
    return fresh


def _is_default(query: Any, fresh: dict[str, Any], name: str, value: Any) -> bool:
    default = fresh.get(name, _MISSING)
    if default is _MISSING:
        default = getattr(type(query), name, _MISSING)
    return default is value or (default is not _MISSING and type(default) is type(value) and default == value)


def shape(compiler: Any, *args: Any) -> Found | None:
    """The shape of the compiler's query, or None: Django's path.

    *args* are ``as_sql()``'s arguments, part of the key."""
    if not _enabled:
        return None
    query = compiler.query
    if type(query) is not Query:
        return None
    model = query.model
    walk = _Walk(compiler)
    parts: list[Any] = [type(compiler), compiler.using, compiler.elide_empty, args, walk.pin(model)]
    fresh = _fresh_vars(model)
    try:
        for name, value in vars(query).items():
            fingerprint = _FINGERPRINTS.get(name)
            if fingerprint is not None:
                parts.append(name)
                kind = type(value)
                if kind in _PLAIN_SCALARS and name in _SCALAR_ATTRS:
                    parts.append(value)
                elif kind in _CONTAINERS and not value:
                    parts.append(("empty", kind))
                else:
                    parts.append(fingerprint(walk, query, value))
            elif (name not in _DERIVED and fresh.get(name, _MISSING) is not value
                  and not _is_default(query, fresh, name, value)):
                raise _Unknown
    except (_Unknown, EmptyResultSet, FullResultSet):
        _stats["ineligible"] += 1
        return None
    except Exception:  # noqa: BLE001 - a value Django refuses: Django's path raises its own error
        _stats["ineligible"] += 1
        return None
    return Found(tuple(parts), (*walk.select_params, *walk.where_params), walk.pins)


def lookup(key: tuple[Any, ...]) -> Entry | None:
    """The trusted entry of *key*, or None (compile with Django, then :func:`learn`)."""
    entry = _entries.get(key)
    if entry is None or entry is _NOT_ELIGIBLE or not entry.trusted:
        return None
    _stats["hits"] += 1
    return entry  # type: ignore[no-any-return]


def restore(entry: Entry, compiler: Any) -> None:
    """Leave *compiler* as Django's ``as_sql()`` leaves it."""
    compiler.__dict__.update(entry.state)
    compiler.where, compiler.having, compiler.qualify = compiler.query.where, None, None


def same(theirs: Any, ours: tuple[Any, ...]) -> bool:
    """Equal parameters, value by value and type by type."""
    return len(theirs) == len(ours) and all(
        type(a) is type(b) and a == b for a, b in zip(theirs, ours, strict=True))


def learn(found: Found, compiler: Any, before: dict[str, Any], sql: str, params: Any) -> None:
    """Django compiled the query of *found* to (*sql*, *params*): check what :func:`shape` computed
    (*before*: the compiler's attributes before ``as_sql()``)."""
    key, ours, pins = found
    _stats["compiled"] += 1
    state = {k: v for k, v in vars(compiler).items() if before.get(k, _MISSING) is not v}
    where, having, qualify = (state.pop(k, None) for k in ("where", "having", "qualify"))
    ok = (bool(sql) and same(params, ours) and not set(state) - _STATE
          and where is compiler.query.where and having is None and qualify is None)
    with _lock:
        entry = _entries.get(key)
        if not ok:
            _entries[key] = _NOT_ELIGIBLE
        elif entry is None:
            _entries[key] = Entry(sql, state, tuple(pins))
        elif entry is not _NOT_ELIGIBLE and not entry.trusted:
            if entry.sql == sql and entry.state.keys() == state.keys():
                entry.trusted = True
            else:
                _entries[key] = _NOT_ELIGIBLE
        while len(_entries) > _MAX_SHAPES:
            _entries.popitem(last=False)

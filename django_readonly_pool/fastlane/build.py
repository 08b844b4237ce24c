"""``filter()``/``exclude()``/``values()`` built from a template per shape, on a pool alias.

Django builds a filter's WHERE clause from scratch on every call: the lookup's
name is resolved field by field (``names_to_path``), the joins set up and trimmed,
the lookup class found, and the join bookkeeping updated; ``values()`` and
``values_list()`` resolve every field the same way. For a given query state and
the same names, all of that comes out the same; only a filter's values differ.
So, for a queryset bound to a pool alias with ``.using()`` (or ``db_manager()``),
the first calls of a *shape* are built by Django, and the first is recorded as a
template; later calls take the template and construct only the lookups that hold
the values, with Django's own lookup classes (``LessThan(col, value)``: the value
prepared as Django prepares it).

A shape is:

* the query's model and everything of its state that building reads: the join
  bookkeeping (``alias_map`` with its tables and joins, ``alias_refcount``,
  ``table_map``, ``used_aliases``), ``alias_cols``, ``alias_prefix``,
  ``filter_is_sticky``, and a root WHERE that is a plain AND (annotations, extra
  selects, filtered relations, a GROUP BY or a combinator make it Django's);
* the step: ``values(*names)``, or ``filter()``/``exclude()`` and its ``Q`` tree:
  connectors, negations, each lookup's name (``field`` or ``field__lookup`` on a
  concrete field of the model: no relation traversal, no transform, no ``isnull``)
  and its value's type (``int``, ``str``, ``Decimal``, dates and times, ``UUID``
  ..., or a list or tuple of them; a subclass, such as a ``TextChoices`` member,
  is Django's). Expressions, models, querysets, iterators and ``None`` take
  Django's path.

A template is trusted only after Django built the same shape twice more and the
template, given those calls' values, gave a query equal to Django's attribute by
attribute (the WHERE tree node by node, each lookup by class, column and prepared
value, types included); a difference makes the shape Django's for good. Values
for which Django builds another tree (a lookup whose prepared value is ``None``,
an empty string where the default database reads it as NULL, a ``None`` in an
``__in``) or raises take Django's path, so Django raises its own error.

A queryset whose alias the router chooses when it runs (``Model.objects.filter()``,
a related manager) may still be used to write (``update()``, ``delete()``), so its
building is always Django's; a pool alias refuses writes, so a template only ever
builds reads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from django.db.models import Q
from django.db.models.query import PROHIBITED_FILTER_KWARGS, QuerySet

from django_readonly_pool.aliases import is_pool_alias
from django_readonly_pool.conf import app_settings
from django_readonly_pool.errors import ConfigurationError

from .cache import NOT_ELIGIBLE, builds, counts, lock, remember
from .template import Before, DjangoPath, Plan, learn, q_shape, query_shape, replay, same_query

__all__ = ["follow_settings", "install", "installed", "uninstall"]

_TRUST_AFTER: Final = 2  # Django's own builds compared with the template's, after the first
# Django's private methods this module stands in for (QuerySet.filter()/exclude()/get() and
# values()/values_list() call them): their signatures are the same in Django 5.2 to 6.1.
_stock_filter: Any = QuerySet.__dict__["_filter_or_exclude_inplace"]
_stock_values: Any = QuerySet.__dict__["_values"]


def _step(query: Any, key: tuple[Any, ...] | None, values: list[Any], q: Q | None,
          django: Callable[[], Any]) -> None:
    """One building step on *query*: from the template of *key* when trusted, else Django's
    (*django*), which teaches or checks the template."""
    plan = None if key is None else builds.get(key)
    if type(plan) is Plan and plan.trusted:
        try:
            replay(plan, query, values)
        except Exception:  # noqa: BLE001 - DjangoPath, or a value Django refuses: Django raises it
            pass
        else:
            counts["built_from_template"] += 1
            return
    counts["built_by_django"] += 1
    if key is None or plan is NOT_ELIGIBLE:
        django()
        return
    before = Before.of(query)
    ours = None
    if plan is not None:  # what the template gives for these values, on a copy of the input
        ours = query.clone()
        try:
            replay(plan, ours, values)
        except Exception:  # noqa: BLE001 - as above
            ours = None
    django()  # Django's exceptions propagate: nothing learnt
    try:
        if plan is None:
            remember(builds, key, learn(query, q, values, before))
            return
        if ours is None:
            return  # these values were Django's: the template is neither confirmed nor refuted
        if same_query(ours, query):
            with lock:
                plan.checked += 1
                plan.trusted = plan.checked >= _TRUST_AFTER
            return
    except DjangoPath:
        pass
    remember(builds, key, NOT_ELIGIBLE)


def _filter_or_exclude_inplace(self: Any, negate: bool, args: Any, kwargs: Any) -> None:
    """Django's ``QuerySet._filter_or_exclude_inplace()``, from a template when it may."""
    if not is_pool_alias(self._db) or PROHIBITED_FILTER_KWARGS.intersection(kwargs):
        return _stock_filter(self, negate, args, kwargs)  # type: ignore[no-any-return]
    query = self._query
    q = Q(*args, **kwargs)
    if negate:
        q = ~q
    values: list[Any] = []
    try:
        key: tuple[Any, ...] | None = ("filter", negate, q_shape(q, values), query_shape(query))
    except DjangoPath:
        key = None
    _step(query, key, values, q, lambda: _stock_filter(self, negate, args, kwargs))
    return None


def _values(self: Any, *fields: Any, **expressions: Any) -> Any:
    """Django's ``QuerySet._values()`` (``values()``, ``values_list()``), from a template when it may."""
    if expressions or not is_pool_alias(self._db):
        return _stock_values(self, *fields, **expressions)
    clone = self._chain()
    clone._fields = fields
    query = clone._query
    try:
        if not all(type(f) is str for f in fields):
            raise DjangoPath
        key: tuple[Any, ...] | None = ("values", fields, query_shape(query))
    except DjangoPath:
        key = None
    _step(query, key, [], None, lambda: query.set_values(fields))
    return clone


# --------------------------------------------------------------------------- #
# Install / uninstall (FAST_LANE)
# --------------------------------------------------------------------------- #


_PATCHED: Final = {"_filter_or_exclude_inplace": _filter_or_exclude_inplace, "_values": _values}


def install() -> None:
    for name, method in _PATCHED.items():
        setattr(QuerySet, name, method)


def uninstall() -> None:
    setattr(QuerySet, "_filter_or_exclude_inplace", _stock_filter)  # noqa: B010
    setattr(QuerySet, "_values", _stock_values)  # noqa: B010


def installed() -> bool:
    return QuerySet.__dict__["_filter_or_exclude_inplace"] is not _stock_filter


def follow_settings(**kwargs: Any) -> None:
    """``ready()`` and the ``setting_changed`` receiver: installed while ``FAST_LANE`` is on
    (with or without ``ASYNC_ORM``: a sync read on a pool alias uses the templates too)."""
    if kwargs.get("setting") not in (None, "READONLY_POOL"):
        return
    try:
        on = app_settings().fast_lane
    except ConfigurationError:
        on = True  # the system check reports the bad setting
    if on:
        install()
    else:
        uninstall()

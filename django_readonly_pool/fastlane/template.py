"""Templates of query-building steps: learnt from Django's build, replayed, checked.

A step (a ``filter()``/``exclude()``, a ``values()``) on a query in a given state
changes the same attributes the same way every time; only a filter's values
differ. :func:`learn` records what Django's build of a step changed: the WHERE
children it added (each lookup built from one of the call's values is a *slot*)
and the other attributes it set. :func:`replay` does the same on another query
of that shape, constructing each slot's lookup with Django's own lookup class and
this call's value; :func:`same_query` compares the result with Django's build of
the same call. :mod:`.build` decides when each runs.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

from django.db import DEFAULT_DB_ALIAS, connections
from django.db.models import Q
from django.db.models.constants import LOOKUP_SEP
from django.db.models.expressions import Col
from django.db.models.lookups import IsNull, Lookup
from django.db.models.sql import Query
from django.db.models.sql.datastructures import BaseTable, Join
from django.db.models.sql.where import AND, WhereNode

from .cache import NOT_ELIGIBLE

__all__ = ["Before", "DjangoPath", "Plan", "copier", "learn", "q_shape", "query_shape", "replay", "same_query"]

_SCALARS: Final = frozenset({int, float, Decimal, str, bool, bytes, datetime.date, datetime.datetime,
                             datetime.time, datetime.timedelta, uuid.UUID})
_SEQUENCES: Final = (list, tuple)


class DjangoPath(Exception):
    """This shape or these values need Django's own building."""


@dataclass(slots=True)
class Plan:
    """A shape's template: the WHERE children the step adds and what else it leaves."""

    # specs: ("slot", i, class, lhs, lookup name), ("leaf", lookup), ("node", conn, neg, specs)
    children: tuple[Any, ...]
    changed: tuple[tuple[str, Any, Callable[[Any], Any]], ...]  # (attribute, template's value, copier)
    empty_is_null: bool  # the default database reads '' as NULL (Oracle): '' takes Django's path
    checked: int = 0  # Django's builds this template matched, after the first
    trusted: bool = False


# What building writes whatever it held before, and what the shape's key does not hold: always
# taken from the template (a filter's join list, the base table's cached alias).
_WRITTEN: Final = frozenset({"_lookup_joins", "base_table"})
# Values Django never changes in place (a Col, a table or a join is replaced, not edited).
_ATOMS: Final = frozenset({str, int, bool, float, type(None), BaseTable, Join, Col})


def _immutable(value: Any) -> bool:
    kind = type(value)
    return kind in _ATOMS or (kind in (tuple, frozenset) and all(_immutable(v) for v in value))


def _same(value: Any) -> Any:
    return value


def copier(value: Any) -> Callable[[Any], Any]:
    """How a template's attribute value is copied for each query (shared when immutable)."""
    if _immutable(value):
        return _same
    kind = type(value)
    if kind in (set, list) and all(_immutable(v) for v in value):
        return kind
    if kind is dict:
        if all(_immutable(v) for v in value.values()):
            return dict
        if all(type(v) is list and all(_immutable(x) for x in v) for v in value.values()):
            return _dict_of_lists
    raise DjangoPath  # something this module does not know how to copy


def _dict_of_lists(value: dict[Any, list[Any]]) -> dict[Any, list[Any]]:
    return {key: list(items) for key, items in value.items()}


# --------------------------------------------------------------------------- #
# Shapes
# --------------------------------------------------------------------------- #


def q_shape(q: Any, values: list[Any]) -> tuple[Any, ...]:
    """The Q tree's shape, its values appended to *values* in order."""
    if type(q) is not Q:
        raise DjangoPath
    parts: list[Any] = [q.connector, q.negated]
    for child in q.children:
        if type(child) is Q:
            parts.append(q_shape(child, values))
            continue
        if type(child) is not tuple or len(child) != 2 or type(child[0]) is not str:
            raise DjangoPath  # an expression
        name, value = child
        kind = type(value)
        if kind in _SEQUENCES:
            if not all(type(v) in _SCALARS for v in value):
                raise DjangoPath
        elif kind not in _SCALARS:
            raise DjangoPath  # None, an expression, a model, a queryset ...
        parts.append((name, kind))
        values.append(value)
    return tuple(parts)


def query_shape(query: Any) -> tuple[Any, ...]:
    """What of the query's state a filter or values() reads; raise DjangoPath for a state
    this module leaves to Django (annotations, extra, filtered relations, GROUP BY, a combinator ...)."""
    if type(query) is not Query:
        raise DjangoPath
    state: Any = query  # Django's private attributes, unknown to its stubs
    where = state.where
    if (state.annotations or state._filtered_relations or state.extra or state.combinator
            or state.group_by is not None or type(where) is not WhereNode or where.connector != AND
            or where.negated):
        raise DjangoPath
    tables: list[tuple[Any, ...]] = []
    table: Any
    for alias, table in state.alias_map.items():
        kind = type(table)
        if kind is BaseTable:
            tables.append((alias, table.table_name, table.table_alias))
        elif kind is Join and table.filtered_relation is None:
            tables.append((alias, table.table_name, table.parent_alias, table.table_alias, table.join_type,
                           table.join_field, table.nullable))
        else:
            raise DjangoPath
    return (state.model, tuple(tables), tuple(state.alias_refcount.items()),
            tuple((t, tuple(a)) for t, a in state.table_map.items()), frozenset(state.used_aliases),
            getattr(query, "alias_cols", True), query.alias_prefix, query.filter_is_sticky)


# --------------------------------------------------------------------------- #
# Learning a template from Django's build
# --------------------------------------------------------------------------- #


def _lookup_target(model: Any, name: str) -> tuple[Any, str]:
    """The field and lookup name of a ``field__lookup`` keyword (no traversal, no transform)."""
    parts = name.split(LOOKUP_SEP)
    if len(parts) > 2:
        raise DjangoPath
    opts = model._meta
    try:
        target = opts.pk if parts[0] == "pk" else opts.get_field(parts[0])
    except Exception:  # noqa: BLE001 - an annotation, a reverse relation, a typo: Django decides
        raise DjangoPath from None
    lookup = parts[1] if len(parts) == 2 else "exact"
    if not getattr(target, "concrete", False) or lookup == "isnull" or target.get_lookup(lookup) is None:
        raise DjangoPath
    return target, lookup


def _names(q: Q, out: list[str]) -> list[str]:
    child: Any
    for child in q.children:
        if type(child) is Q:
            _names(child, out)
        else:
            out.append(child[0])
    return out


def _same_leaf(a: Any, b: Any) -> bool:
    if type(a) is not type(b) or a != b:
        return False
    if type(a.rhs) in _SEQUENCES:
        return type(b.rhs) is type(a.rhs) and [type(v) for v in a.rhs] == [type(v) for v in b.rhs]
    return type(b.rhs) is type(a.rhs)


def _spec(child: Any, targets: list[tuple[Any, str]], values: list[Any], claimed: set[int]) -> Any:
    """How the replay rebuilds *child* (a node or a leaf of the WHERE Django built)."""
    if isinstance(child, WhereNode):
        if type(child) is not WhereNode:
            raise DjangoPath
        return ("node", child.connector, child.negated,
                tuple(_spec(c, targets, values, claimed) for c in child.children))
    if not isinstance(child, Lookup) or type(child.lhs) is not Col:
        raise DjangoPath
    found = [i for i, (target, lookup) in enumerate(targets)
             if child.lhs.target is target and child.lookup_name == lookup
             and _same_leaf(child, type(child)(child.lhs, values[i]))]
    if len(found) == 1 and found[0] not in claimed:
        claimed.add(found[0])
        return ("slot", found[0], type(child), child.lhs, child.lookup_name)
    if not found and isinstance(child, IsNull) and child.rhs is False:
        return ("leaf", child)  # exclude()'s "col IS NOT NULL" of a nullable column
    raise DjangoPath


def learn(query: Any, q: Q | None, values: list[Any], state: Before) -> Plan:
    """The template of Django's step on *query* (*state*: its state before), *q* a filter's."""
    before, saved, children_before = state.attributes, state.containers, state.children
    after = vars(query)
    where = query.where
    if (where is not before["where"] or where.connector != AND or where.negated
            or len(where.children) < len(children_before)
            or any(a is not b for a, b in zip(where.children, children_before, strict=False))):
        raise DjangoPath
    changed = []
    for name, value in after.items():
        if name == "where":
            continue
        old = saved.get(name, before.get(name, NOT_ELIGIBLE))
        if name not in _WRITTEN and (old is value or (name in saved and type(old) is type(value) and old == value)):
            continue
        copy = copier(value)
        changed.append((name, copy(value), copy))
    if set(before) - set(after):
        raise DjangoPath
    targets = [] if q is None else [_lookup_target(query.model, name) for name in _names(q, [])]
    claimed: set[int] = set()
    specs = tuple(_spec(c, targets, values, claimed) for c in where.children[len(children_before):])
    if len(claimed) != len(values):
        raise DjangoPath
    empty_is_null = connections[DEFAULT_DB_ALIAS].features.interprets_empty_strings_as_nulls
    return Plan(specs, tuple(changed), empty_is_null)


# --------------------------------------------------------------------------- #
# Replay
# --------------------------------------------------------------------------- #


def _rebuild(spec: Any, values: list[Any], empty_is_null: bool) -> Any:
    kind = spec[0]
    if kind == "slot":
        cls, lhs = spec[2], spec[3]
        if lhs.get_lookup(spec[4]) is not cls:
            raise DjangoPath  # a lookup registered since (register_lookup()): Django resolves it
        value = values[spec[1]]
        if type(value) in _SEQUENCES:
            if any(v is None for v in value):
                raise DjangoPath
            value = type(value)(value)  # resolve_lookup_value() copies a list or tuple
        leaf = cls(lhs, value)
        rhs = leaf.rhs
        if rhs is None or (empty_is_null and rhs == "") or hasattr(rhs, "resolve_expression"):
            raise DjangoPath  # Django builds another tree (IS NULL) or raises
        if type(rhs) in _SEQUENCES and any(v is None for v in rhs):
            raise DjangoPath
        return leaf
    if kind == "leaf":
        return spec[1]
    return WhereNode.create([_rebuild(s, values, empty_is_null) for s in spec[3]], spec[1], spec[2])


def replay(plan: Plan, query: Any, values: list[Any]) -> None:
    """Add the filter to *query* from *plan*; raise DjangoPath (nothing changed) when these
    values need Django's building."""
    children = [_rebuild(spec, values, plan.empty_is_null) for spec in plan.children]
    if children:
        query.where.children.extend(children)
    for name, value, copy in plan.changed:
        setattr(query, name, copy(value))


# --------------------------------------------------------------------------- #
# Verification
# --------------------------------------------------------------------------- #


def _same_tree(a: Any, b: Any) -> bool:
    if isinstance(a, WhereNode) or isinstance(b, WhereNode):
        return (type(a) is type(b) and a.connector == b.connector and a.negated == b.negated
                and len(a.children) == len(b.children)
                and all(_same_tree(x, y) for x, y in zip(a.children, b.children, strict=True)))
    if isinstance(a, Lookup):
        return _same_leaf(a, b)
    return type(a) is type(b) and (a is b or a == b)  # extra(where=...), an expression: kept as is


def same_query(ours: Any, django: Any) -> bool:
    mine, theirs = vars(ours), vars(django)
    if mine.keys() != theirs.keys():
        return False
    for name, value in theirs.items():
        other = mine[name]
        if name == "where":
            if not _same_tree(other, value):
                return False
        elif other is not value and (type(other) is not type(value) or other != value):
            return False
    return True


@dataclass(slots=True)
class Before:
    """A query's state before Django's step: its attributes, copies of its containers, its WHERE's
    children (a step may change them in place)."""

    attributes: dict[str, Any]
    containers: dict[str, Any]
    children: list[Any]

    @classmethod
    def of(cls, query: Any) -> Before:
        attributes = dict(vars(query))
        containers = {}
        for name, value in attributes.items():
            if type(value) in (dict, set, list):
                try:
                    containers[name] = copier(value)(value)
                except DjangoPath:
                    containers[name] = NOT_ELIGIBLE  # never equal: counts as changed
        return cls(attributes, containers, list(query.where.children))

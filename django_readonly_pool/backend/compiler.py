"""The backend's SQL compilers: PostgreSQL's, with compiled SQL reused per query shape.

``DatabaseOperations.compiler_module`` names this module, Django's public hook
for a backend's compilers. Only ``SQLCompiler.as_sql()`` (reads) changes: it asks
:mod:`django_readonly_pool.compiled` for the query's shape and, when the shape is
trusted, returns its SQL with this query's parameters and leaves the compiler as
Django's ``as_sql()`` would. Every other case compiles with Django (and teaches
the cache). The other compilers are PostgreSQL's own.

``get_converters()`` too: a plain ``JSONField`` (no custom decoder) decodes
``jsonb`` with the C scanner ``json.loads()`` itself ends in, straight away, when
the text is exactly one JSON value (PostgreSQL's output always is); anything else
(whitespace, a BOM, invalid JSON, ``None``, a key transform's value) goes to the
field's own ``from_db_value()``. The same objects, without ``json.loads()``'s
three layers of Python per value (a third of the CPU of 10,000 rows with a JSON
column). Both follow ``READONLY_POOL["FAST_LANE"]``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from django.db.backends.postgresql import compiler as postgresql
from django.db.models import JSONField

from django_readonly_pool import compiled

__all__ = [
    "SQLAggregateCompiler",
    "SQLCompiler",
    "SQLDeleteCompiler",
    "SQLInsertCompiler",
    "SQLUpdateCompiler",
]

SQLAggregateCompiler = postgresql.SQLAggregateCompiler
SQLDeleteCompiler = postgresql.SQLDeleteCompiler
SQLInsertCompiler = postgresql.SQLInsertCompiler
SQLUpdateCompiler = postgresql.SQLUpdateCompiler

_scan_once = json.JSONDecoder().scan_once  # type: ignore[attr-defined]  # json.loads()'s decoder, as json builds its default one
_from_db_value = JSONField.from_db_value


# Per model field (by id, the field pinned beside its converter): built once, not per query.
# A field of no model (an expression's output_field, made per query) is not kept.
_fast_converters: dict[int, tuple[JSONField, Callable[..., Any]]] = {}


def _json_converter(converter: Any) -> Any:
    """*converter*, or the fast equivalent when it is a plain JSONField's from_db_value."""
    field = getattr(converter, "__self__", None)
    if (type(field) is not JSONField or getattr(converter, "__func__", None) is not _from_db_value
            or field.decoder is not None):
        return converter
    known = _fast_converters.get(id(field))
    if known is not None and known[0] is field:
        return known[1]
    fast = _fast_json(converter)
    if getattr(field, "model", None) is not None:
        _fast_converters[id(field)] = (field, fast)
    return fast


def _fast_json(from_db_value: Callable[..., Any]) -> Callable[..., Any]:
    def convert(value: Any, expression: Any, connection: Any) -> Any:
        if type(value) is str:
            try:
                obj, end = _scan_once(value, 0)
            except (StopIteration, ValueError):  # not at a JSON value, invalid: the field decides
                pass
            else:
                if end == len(value):
                    return obj
        return from_db_value(value, expression, connection)

    return convert


class SQLCompiler(postgresql.SQLCompiler):
    def as_sql(self, with_limits: bool = True, with_col_aliases: bool = False) -> tuple[str, Any]:
        found = compiled.shape(self, with_limits, with_col_aliases)
        if found is None:
            return super().as_sql(with_limits, with_col_aliases)
        entry = compiled.lookup(found.key)
        if entry is not None:
            compiled.restore(entry, self)
            return entry.sql, found.params
        before = dict(vars(self))
        sql, params = super().as_sql(with_limits, with_col_aliases)
        compiled.learn(found, self, before, sql, params)
        return sql, params

    def get_converters(self, expressions: Any) -> dict[int, tuple[list[Any], Any]]:
        converters: dict[int, tuple[list[Any], Any]] = super().get_converters(expressions)
        if compiled.installed():
            for position, (functions, expression) in converters.items():
                converters[position] = ([_json_converter(f) for f in functions], expression)
        return converters

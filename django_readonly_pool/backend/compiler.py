"""The backend's SQL compilers: PostgreSQL's, with compiled SQL reused per query shape.

``DatabaseOperations.compiler_module`` names this module, Django's public hook
for a backend's compilers. Only ``SQLCompiler.as_sql()`` (reads) changes: it asks
:mod:`django_readonly_pool.compiled` for the query's shape and, when the shape is
trusted, returns its SQL with this query's parameters and leaves the compiler as
Django's ``as_sql()`` would. Every other case compiles with Django (and teaches
the cache). The other compilers are PostgreSQL's own.
"""

from __future__ import annotations

from typing import Any

from django.db.backends.postgresql import compiler as postgresql

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

"""Exceptions raised by django-readonly-pool.

Each exception subclasses the Django (or psycopg_pool) base that callers already
catch, so existing ``except`` clauses keep working:

* configuration problems are :class:`django.core.exceptions.ImproperlyConfigured`;
* run-time database problems are :class:`django.db.utils.OperationalError` (what
  Django raises when a server cannot be reached), so views that already handle
  ``OperationalError`` handle a pool timeout or an unavailable replica too;
* misuse of the read-only alias (a write, a transaction) is
  :class:`django.db.utils.NotSupportedError`.

No message ever contains a password: messages are built from the masked
:class:`~django_readonly_pool.conf.ConnectionTarget`, never from settings dicts.
"""

from __future__ import annotations

from collections.abc import Sequence

from django.core.exceptions import ImproperlyConfigured
from django.db.utils import NotSupportedError, OperationalError

__all__ = [
    "ConfigurationError",
    "ConfigurationWarning",
    "PoolExhausted",
    "PoolUnavailable",
    "PrewarmFailed",
    "QueryTimeout",
    "ReadOnlyAliasError",
    "ReadOnlyPoolError",
    "ReplicaUnavailable",
]


class ReadOnlyPoolError(Exception):
    """Marker base class: every exception of this package also inherits it."""


class ConfigurationError(ReadOnlyPoolError, ImproperlyConfigured):
    """One or more configuration values are invalid.

    ``problems`` lists every problem found, so that a bad environment is
    reported in one go rather than one variable per restart.
    """

    def __init__(self, problems: Sequence[str], *, source: str = "configuration") -> None:
        self.problems = tuple(problems)
        count = len(self.problems)
        noun = "problem" if count == 1 else "problems"
        lines = [f"django-readonly-pool: {count} {noun} in the {source}:"]
        lines.extend(f"  - {problem}" for problem in self.problems)
        super().__init__("\n".join(lines))


class ConfigurationWarning(UserWarning):
    """A configuration value is suspicious (a near miss of a variable name ...)."""


class PoolUnavailable(ReadOnlyPoolError, OperationalError):
    """The read pool cannot serve a connection (base of the run-time errors)."""


class PoolExhausted(PoolUnavailable):
    """Every connection stayed busy for the whole checkout timeout."""


class PrewarmFailed(PoolUnavailable):
    """The pool could not open ``POOL_SIZE`` connections within the deadline."""


class ReplicaUnavailable(PoolUnavailable):
    """The replica is marked down and the router is configured to fail fast."""


class QueryTimeout(PoolUnavailable):
    """A statement exceeded ``QUERY_TIMEOUT``; its connection was discarded."""


class ReadOnlyAliasError(ReadOnlyPoolError, NotSupportedError):
    """A write or a transaction was attempted on a read-only pool alias."""

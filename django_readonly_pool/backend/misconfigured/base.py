"""``ENGINE: "django_readonly_pool.backend.misconfigured"``: the aliases of a bad environment.

When a management command starts with invalid ``FIDES__DATABASE__*`` values,
:func:`~django_readonly_pool.databases_from_env` returns aliases of this
engine instead of raising, so that Django can start and report the problems
through its system checks (``readonly_pool.E007``) and
``check_readonly_pool`` can print them (exit code 2). Anything that would use
the database raises the same :class:`~django_readonly_pool.errors.ConfigurationError`
that lists every problem.
"""

from __future__ import annotations

from typing import Any, NoReturn

from django.core.exceptions import ImproperlyConfigured
from django.db.backends.dummy import base as dummy

from django_readonly_pool.conf import deferred_error

__all__ = ["DatabaseWrapper"]


def _refuse(*args: Any, **kwargs: Any) -> NoReturn:
    error = deferred_error()
    if error is None:  # pragma: no cover - the engine is only set with an error
        raise ImproperlyConfigured("the FIDES__DATABASE__* environment is invalid")
    raise error


class DatabaseWrapper(dummy.DatabaseWrapper):
    display_name = "misconfigured (see the FIDES__DATABASE__* problems)"
    _cursor = _refuse
    ensure_connection = _refuse
    _commit = _refuse

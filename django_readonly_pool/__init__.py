"""django-readonly-pool: Django reads on a pre-warmed psycopg AsyncConnectionPool."""

from __future__ import annotations

from .conf import databases_from_env

__all__ = ["databases_from_env"]

"""Django's adapters, with ``timestamptz`` parsed by psycopg's C loader.

Django loads every ``timestamptz`` through a subclass of psycopg's *Python*
``TimestamptzLoader`` (``psycopg_any.BaseTzLoader``: parse, then set Django's
``tzinfo``), so each value goes through a regular expression even when psycopg's
C extension (``psycopg[binary]`` or ``psycopg[c]``) is installed: a third of the
client CPU of reading 10,000 rows with one datetime column.

:func:`adapters` returns a copy of Django's adapters map whose ``timestamptz``
loader parses with the loader psycopg itself registers (the C one, when there is
one) and then does what Django's does, ``.replace(tzinfo=<Django's timezone>)``:
the same value, the same ``tzinfo`` object. psycopg's test suite holds its C and
Python loaders to the same results. Without the C extension the map is Django's,
unchanged.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import psycopg
from psycopg import abc
from psycopg.adapt import AdaptersMap, Loader
from psycopg.pq import Format
from psycopg.types.datetime import TimestamptzLoader as PythonTimestamptzLoader

__all__ = ["adapters"]

TIMESTAMPTZ_OID = psycopg.adapters.types["timestamptz"].oid


@lru_cache(maxsize=16)
def adapters(template: AdaptersMap) -> AdaptersMap:
    """*template* (Django's ``get_adapters_template()``, itself cached) with the fast loader."""
    django_loader = template.get_loader(TIMESTAMPTZ_OID, Format.TEXT)
    native = psycopg.adapters.get_loader(TIMESTAMPTZ_OID, Format.TEXT)
    if (native is None or issubclass(native, PythonTimestamptzLoader)  # no C extension
            or django_loader is None or not hasattr(django_loader, "timezone")):
        return template
    tz = django_loader.timezone
    parser: type[abc.Loader] = native

    class TimestamptzLoader(Loader):
        # Django compares it (create_cursor) to decide whether to register its own.
        timezone = tz

        def __init__(self, oid: int, context: Any = None) -> None:
            super().__init__(oid, context)
            # The session's TimeZone, read from the connection, as psycopg's loader does.
            self._parse = parser(oid, context).load
            # When psycopg's loader already gives Django's tzinfo object (a UTC session and
            # USE_TZ, Django's own setting), the replace() is a no-op: psycopg calls the C
            # parser straight away, no Python frame per value.
            try:
                same = self._parse(b"2000-01-01 00:00:00+00").tzinfo is tz
            except Exception:  # noqa: BLE001 - no shortcut, the general path below
                same = False
            if same:
                self.load = self._parse  # type: ignore[method-assign]

        def load(self, data: Any) -> Any:
            return self._parse(data).replace(tzinfo=tz)

    fast = AdaptersMap(template)
    fast.register_loader(TIMESTAMPTZ_OID, TimestamptzLoader)
    return fast

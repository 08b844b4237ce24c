"""The timestamptz loader of the pool's connections gives exactly Django's values.

Both loaders read the same values from the real replica, over connections in
several session time zones; the values, their ``tzinfo`` objects and the errors
must be the same.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import psycopg
import pytest
from django.db import connections
from django.db.backends.postgresql.psycopg_any import get_adapters_template
from psycopg.pq import Format

from django_readonly_pool.backend.adapters import TIMESTAMPTZ_OID, adapters
from django_readonly_pool.conf import OPTIONS_KEY
from django_readonly_pool.dispatch import run
from tests.conftest import arun

pytestmark = pytest.mark.usefixtures("db_access")

VALUES = [
    "2026-12-01 14:40:42.123456+00", "2026-03-29 01:30:00+01", "2026-11-01 01:30:00-05",
    "1970-01-01 00:00:00+00", "0001-01-02 00:00:00+00", "9999-12-30 23:59:59.999999+00",
    "1900-06-15 12:00:00+05:30", "2000-02-29 23:59:59.5-09:30", "1847-12-01 00:00:00+00",
]
ZONES = ["UTC", "America/Chicago", "Asia/Kolkata", "Australia/Lord_Howe", "Europe/London"]


def _conninfo() -> dict[str, Any]:
    params = dict(connections["readonly"].get_connection_params())
    for key in ("context", "cursor_factory", "prepare_threshold", OPTIONS_KEY):
        params.pop(key, None)
    return params


def _read(context: psycopg.adapt.AdaptersMap, zone: str, sql: str) -> list[Any]:
    with psycopg.connect(**_conninfo(), context=context, autocommit=True) as conn:
        conn.execute(f"SET TimeZone = '{zone}'")
        return [row[0] for row in conn.execute(sql).fetchall()]


def _values_sql() -> str:
    return "SELECT v::timestamptz FROM (VALUES " + ", ".join(f"('{v}')" for v in VALUES) + ") AS t (v)"


@pytest.mark.parametrize("use_tz", [True, False])
@pytest.mark.parametrize("zone", ZONES)
def test_the_same_values_and_tzinfo_as_djangos_loader(use_tz: bool, zone: str) -> None:
    template = get_adapters_template(use_tz, dt.UTC if use_tz else None)
    fast = adapters(template)
    assert fast.get_loader(TIMESTAMPTZ_OID, Format.TEXT) is not template.get_loader(TIMESTAMPTZ_OID, Format.TEXT)
    django_values = _read(template, zone, _values_sql())
    ours = _read(fast, zone, _values_sql())
    assert ours == django_values
    assert [v.tzinfo for v in ours] == [v.tzinfo for v in django_values]  # the same objects
    assert all((v.tzinfo is dt.UTC) if use_tz else (v.tzinfo is None) for v in ours)


@pytest.mark.parametrize("value", ["infinity", "-infinity", "4713-01-01 00:00:00+00 BC"])
def test_what_django_cannot_load_fails_the_same_way(value: str) -> None:
    template = get_adapters_template(True, dt.UTC)
    sql = f"SELECT '{value}'::timestamptz"
    with pytest.raises(psycopg.DataError) as django_error:
        _read(template, "UTC", sql)
    with pytest.raises(psycopg.DataError) as ours:
        _read(adapters(template), "UTC", sql)
    assert type(ours.value) is type(django_error.value)


def test_the_pool_reads_datetimes_as_the_sync_orm_does() -> None:
    sql = _values_sql()

    def read() -> list[Any]:
        with connections["readonly"].cursor() as cursor:
            cursor.execute(sql)
            return [row[0] for row in cursor.fetchall()]

    sync = read()  # Django's sync connection (its pool) to the replica
    through_pool = arun(run(read))
    assert through_pool == sync and [v.tzinfo for v in through_pool] == [v.tzinfo for v in sync]
    loader = connections["readonly"].get_connection_params()["context"].get_loader(TIMESTAMPTZ_OID, Format.TEXT)
    assert loader.__module__ == "django_readonly_pool.backend.adapters"


@pytest.mark.parametrize("zone", ["UTC", "America/Chicago"])
def test_a_utc_session_calls_psycopgs_parser_directly(zone: str) -> None:
    # USE_TZ and a UTC session (what Django sets up): psycopg's loader gives Django's
    # tzinfo already, so no Python frame is added per value; other zones keep the replace().
    template = get_adapters_template(True, dt.UTC)
    with psycopg.connect(**_conninfo(), context=adapters(template), autocommit=True) as conn:
        conn.execute(f"SET TimeZone = '{zone}'")
        cur = conn.execute("SELECT now()")
        loader = cur._tx.get_loader(TIMESTAMPTZ_OID, Format.TEXT)
        assert (loader.load == loader._parse) is (zone == "UTC")
        assert cur.fetchone()[0].tzinfo is dt.UTC

"""Every system check id fires on the configuration it describes (and only then)."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.conf import settings
from django.core import checks
from django.test import override_settings

from django_readonly_pool.checks import check_configuration

MIDDLEWARE = "django_readonly_pool.middleware.ReadOnlyPoolMiddleware"
ROUTER = "django_readonly_pool.router.ReadOnlyRouter"


def ids(**overrides: Any) -> set[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Overriding setting DATABASES can lead to unexpected behavior"
        with override_settings(**overrides):
            return {m.id for m in check_configuration() if m.id}


@contextmanager
def databases() -> Iterator[dict[str, Any]]:
    yield copy.deepcopy(settings.DATABASES)


def test_the_test_settings_are_clean() -> None:
    assert ids() == set()


def test_registered_with_django() -> None:
    assert check_configuration in checks.registry.registry.get_checks()


def test_E001_bad_readonly_pool_setting() -> None:
    assert "readonly_pool.E001" in ids(READONLY_POOL={"FALLBACK": "sometimes"})


def test_E002_bad_pool_options() -> None:
    with databases() as dbs:
        dbs["readonly"]["OPTIONS"]["readonly_pool"]["max_overflow"] = -1
        assert "readonly_pool.E002" in ids(DATABASES=dbs)


def test_E003_readonly_alias_missing_or_other_engine() -> None:
    assert "readonly_pool.E003" in ids(READONLY_POOL={"READONLY_ALIASES": ["nope"], "TESTS_READ_PRIMARY": False})
    assert "readonly_pool.E003" in ids(READONLY_POOL={"READONLY_ALIASES": ["default"], "TESTS_READ_PRIMARY": False})


def test_E004_primary_missing_or_read_only() -> None:
    assert "readonly_pool.E004" in ids(READONLY_POOL={"PRIMARY": "writer", "READONLY_ALIASES": ["readonly"]})
    assert "readonly_pool.E004" in ids(READONLY_POOL={"PRIMARY": "readonly", "READONLY_ALIASES": ["readonly"]})


def test_E005_conn_max_age() -> None:
    with databases() as dbs:
        dbs["readonly"]["CONN_MAX_AGE"] = 60
        assert "readonly_pool.E005" in ids(DATABASES=dbs)


def test_W001_router_missing() -> None:
    assert "readonly_pool.W001" in ids(DATABASE_ROUTERS=[])


def test_W002_no_pool_alias() -> None:
    with databases() as dbs:
        dbs = {"default": dbs["default"]}
        assert "readonly_pool.W002" in ids(DATABASES=dbs)


def test_W003_skip_rollback_without_autocommit() -> None:
    with databases() as dbs:
        dbs["readonly"]["OPTIONS"]["readonly_pool"].update(pool_skip_rollback=True, autocommit=False)
        assert "readonly_pool.W003" in ids(DATABASES=dbs)
        dbs["readonly"]["OPTIONS"]["readonly_pool"]["autocommit"] = True
        assert "readonly_pool.W003" not in ids(DATABASES=dbs)


def test_W004_no_replica_configured() -> None:
    with databases() as dbs:
        dbs["readonly"]["OPTIONS"]["readonly_pool"]["replica_configured"] = False
        assert "readonly_pool.W004" in ids(DATABASES=dbs)


def test_W005_prewarm_timeout_below_connect_timeout() -> None:
    with databases() as dbs:
        dbs["readonly"]["OPTIONS"]["readonly_pool"].update(prewarm=True, prewarm_timeout=1, connect_timeout=10)
        assert "readonly_pool.W005" in ids(DATABASES=dbs)


def test_W006_middleware_missing() -> None:
    assert "readonly_pool.W006" in ids(MIDDLEWARE=[])
    assert "readonly_pool.W006" not in ids(MIDDLEWARE=[], READONLY_POOL={"STICKY_SECONDS": 0})


def test_W007_not_a_test_mirror() -> None:
    with databases() as dbs:
        dbs["readonly"]["TEST"] = {"MIRROR": None}
        assert "readonly_pool.W007" in ids(DATABASES=dbs)


@pytest.mark.parametrize("check_id", [
    "E001", "E002", "E003", "E004", "E005", "W001", "W002", "W003", "W004", "W005", "W006", "W007",
])
def test_every_id_is_documented(check_id: str) -> None:
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert f"readonly_pool.{check_id}" in readme
    import django_readonly_pool.checks as module

    assert f"readonly_pool.{check_id}" in (module.__doc__ or "")

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


# -- a bad environment, from the command line: the list, no traceback ---------------- #

BAD_ENV = {"FIDES__DATABASE__PORT": "54x", "FIDES__DATABASE__ASYNC_READONLY_DATABASE_PREWARM": "maybe",
           "FIDES__DATABASE__READONLY_PASSWORD": "Sup3r$ecret!"}


def _run(*args: str, **env: str) -> Any:
    import os
    import subprocess
    import sys

    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", **env})


@pytest.mark.parametrize("command", ["check", "migrate", "showmigrations"])
def test_management_commands_list_the_problems_without_a_traceback(command: str) -> None:
    out = _run("-m", "django", command, **BAD_ENV)
    text = out.stdout + out.stderr
    assert out.returncode == 1, text
    assert "Traceback" not in text
    assert "readonly_pool.E007" in text and "FIDES__DATABASE__PORT='54x'" in text
    assert "PREWARM='maybe'" in text and "Sup3r$ecret!" not in text
    assert len(text.splitlines()) < 20, text  # a short list, not a wall


def test_a_server_start_prints_the_problems_alone() -> None:
    """An ASGI server importing the settings: the list, no traceback, nothing served."""
    out = _run("-m", "uvicorn", "example_project.asgi:application", "--port", "0", **BAD_ENV,
               DJANGO_SETTINGS_MODULE="example_project.settings", FIDES__DATABASE__SERVER="127.0.0.1")
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert "Traceback" not in text and "FIDES__DATABASE__PORT='54x'" in text, text
    assert text.splitlines()[0].startswith("django-readonly-pool: 2 problems in the environment")
    assert "Sup3r$ecret!" not in text


def test_the_traceback_on_request() -> None:
    out = _run("-c", "import django; django.setup()", **BAD_ENV, READONLY_POOL_TRACEBACK="1")
    assert "Traceback" in out.stderr and "ConfigurationError" in out.stderr


def test_a_near_miss_of_a_variable_warns() -> None:
    out = _run("-m", "django", "check", FIDES__DATABASE__READONLY_SERVR="replica.internal",
               FIDES__DATABASE__API_ENGINE_POOL_SIZE="20")  # another program's variable: silent
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert "readonly_pool.W009" in text and "did you mean FIDES__DATABASE__READONLY_SERVER?" in text
    assert "API_ENGINE_POOL_SIZE" not in text


def test_near_misses_and_the_python_warning() -> None:
    from django_readonly_pool import databases_from_env
    from django_readonly_pool.conf import near_misses
    from django_readonly_pool.errors import ConfigurationWarning

    assert near_misses({"FIDES__DATABASE__READONLY_SERVR": "x"})
    assert near_misses({"FIDES__DATABASE__SERVRE": "x", "FIDES__DATABASE__CELERY_POOL": "x"}) == [
        "FIDES__DATABASE__SERVRE is not a variable of django-readonly-pool (did you mean "
        "FIDES__DATABASE__SERVER?); it is ignored"]
    import os

    os.environ["FIDES__DATABASE__READONLY_PASWORD"] = "x"
    try:
        with pytest.warns(ConfigurationWarning, match="READONLY_PASSWORD"):
            databases_from_env()
    finally:
        del os.environ["FIDES__DATABASE__READONLY_PASWORD"]

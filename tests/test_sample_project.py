"""A user's project keeps its own test suite passing with the router installed.

tests/sample_project is an ordinary project (databases_from_env(), the router,
the middleware) with plain Django TestCase tests and pytest-django tests, sync
and async. Its suites run here, in subprocesses, against the real primary and
replica, with the default settings and with read-your-writes pins off (so only
the test-mirror redirection makes the reads see the test's data). With that
redirection off as well, the TestCase suite must fail: the check can fail.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SAMPLE = Path(__file__).parent / "sample_project"

pytestmark = pytest.mark.slow


def run(args: list[str], **extra_env: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "PYTEST_"))}
    env.update({"FIDES__DATABASE__DB": "sample", **extra_env})
    return subprocess.run([sys.executable, *args], cwd=SAMPLE, env=env, capture_output=True, text=True,
                          timeout=300, check=False)


@pytest.mark.parametrize("knobs", [{}, {"SAMPLE_NO_PINS": "1"}], ids=["defaults", "no-pins"])
def test_django_testcase_suite_passes(knobs: dict[str, str], topology: object) -> None:
    result = run(["manage.py", "test", "sample", "--noinput", "-v", "2"], **knobs)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Ran 5 tests" in result.stderr and "OK" in result.stderr


@pytest.mark.parametrize("knobs", [{}, {"SAMPLE_NO_PINS": "1"}], ids=["defaults", "no-pins"])
def test_pytest_django_suite_passes(knobs: dict[str, str], topology: object) -> None:
    result = run(["-m", "pytest", "-q", "-p", "no:cacheprovider"], **knobs)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "8 passed" in result.stdout  # 5 TestCase tests + 3 pytest-style


def test_without_the_mirror_redirection_reads_miss_test_data(topology: object) -> None:
    # (no fallback either: a replica that has not replayed the new test database yet
    # would send the reads to the primary, which sees the test's data)
    result = run(["manage.py", "test", "sample", "--noinput"], SAMPLE_NO_PINS="1", SAMPLE_NO_TEST_REDIRECT="1",
                 SAMPLE_NO_FALLBACK="1")
    assert result.returncode != 0
    assert "FAILED" in result.stderr
    # reads went to the replica's copy of the test database, which cannot see
    # the test's uncommitted rows (which tests fail depends on timing)
    assert any(name in result.stderr for name in (
        "test_sync_read_sees_setup_data", "test_async_read_sees_setup_data", "test_async_write_then_read",
        "test_sync_write_then_read"))


@pytest.mark.parametrize("where", ["replica", "primary"])
def test_tests_that_read_from_the_replica(where: str, topology: object) -> None:
    """The documented recipe (django_readonly_pool.testing.replica_reads, and the pytest
    marker), with the alias on the real replica and, without a replica, on the primary's
    test database itself: the test runner then drops it with the health monitor and the
    pools let go (no "being accessed by other users")."""
    knobs = {"SAMPLE_NO_TEST_REDIRECT": "1"}
    if where == "primary":
        knobs.update(FIDES__DATABASE__READONLY_SERVER="", FIDES__DATABASE__READONLY_PORT="")
    django_style = run(["manage.py", "test", "sample.replica_tests", "--noinput", "-v", "2"], **knobs)
    assert django_style.returncode == 0, django_style.stdout + django_style.stderr
    assert "Ran 2 tests" in django_style.stderr and "being accessed by other users" not in django_style.stderr
    pytest_style = run(["-m", "pytest", "-q", "-p", "no:cacheprovider", "replica_pytest.py"], **knobs)
    assert pytest_style.returncode == 0, pytest_style.stdout + pytest_style.stderr
    assert "2 passed" in pytest_style.stdout

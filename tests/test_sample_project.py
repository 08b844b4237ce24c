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
    result = run(["manage.py", "test", "sample", "--noinput"], SAMPLE_NO_PINS="1", SAMPLE_NO_TEST_REDIRECT="1")
    assert result.returncode != 0
    assert "FAILED" in result.stderr
    # reads went to the replica's copy of the test database, which cannot see
    # the test's uncommitted rows (which tests fail depends on timing)
    assert any(name in result.stderr for name in (
        "test_sync_read_sees_setup_data", "test_async_read_sees_setup_data", "test_async_write_then_read",
        "test_sync_write_then_read"))

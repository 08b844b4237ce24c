"""Django's own tests of the models' (async) API pass with this app installed.

Django's source distribution carries its test suite. This downloads the one of
the installed Django (once, into ``.cache/``), and runs ``runtests.py`` on the
test apps below with ``django_readonly_pool`` installed, its router, and a pool
alias mirroring ``default``, against the suite's primary.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
import textwrap
from pathlib import Path

import django
import pytest

from django_readonly_pool.testing.topology import Topology

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
APPS = ["basic", "update_only_fields", "async", "get_earliest_or_latest", "model_fields"]

SETTINGS = textwrap.dedent('''
    """runtests.py settings: Django's suite with django_readonly_pool installed."""
    import sys

    from django_readonly_pool import databases_from_env

    # runtests.py replaces INSTALLED_APPS with its own list: add the app to it.
    _runtests = sys.modules.get("__main__")
    if hasattr(_runtests, "ALWAYS_INSTALLED_APPS"):
        _runtests.ALWAYS_INSTALLED_APPS.append("django_readonly_pool")

    DATABASES = databases_from_env()
    DATABASES["other"] = {**DATABASES["default"], "TEST": {"NAME": "test_django_suite_other"}}
    DATABASE_ROUTERS = ["django_readonly_pool.router.ReadOnlyRouter"]
    SECRET_KEY = "django_tests_secret_key"
    PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
    USE_TZ = False  # as Django's own test settings (tests/test_sqlite.py)
''')


def django_tests() -> Path:
    """Django's ``tests/`` directory for the installed version (downloaded once)."""
    version = django.__version__
    target = ROOT / ".cache" / f"django-{version}-tests"
    if (target / "runtests.py").exists():
        return target
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                              f"django=={version}", "-d", tmp], capture_output=True, text=True, timeout=300,
                             check=False)
        archives = list(Path(tmp).glob("*.tar.gz"))
        if out.returncode != 0 or not archives:
            pytest.skip(f"Django {version}'s source distribution could not be downloaded: {out.stderr[-300:]}")
        prefix = archives[0].name.removesuffix(".tar.gz") + "/tests/"
        with tarfile.open(archives[0]) as archive:
            members = [m for m in archive.getmembers() if m.name.startswith(prefix)]
            for member in members:
                member.name = member.name[len(prefix):]
            target.mkdir(parents=True, exist_ok=True)
            archive.extractall(target, members=members, filter="data")
    return target


def test_djangos_own_tests_pass_with_the_app_installed(topology: Topology, tmp_path: Path) -> None:
    tests = django_tests()
    (tmp_path / "django_suite_settings.py").write_text(SETTINGS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    env.update(topology.environ())
    env["FIDES__DATABASE__DB"] = "django_suite"  # its test databases apart from this suite's
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(ROOT)])
    out = subprocess.run([sys.executable, "runtests.py", *APPS, "--settings=django_suite_settings", "--parallel=1",
                          "--noinput", "-v", "1"], cwd=tests, env=env, capture_output=True, text=True, timeout=900,
                         check=False)
    report = out.stdout[-3000:] + out.stderr[-6000:]
    assert out.returncode == 0, report
    assert "OK" in out.stderr, report
    ran = next((line for line in out.stderr.splitlines() if line.startswith("Ran ")), "")
    assert int(ran.split()[1]) > 300, report

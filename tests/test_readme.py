"""A newcomer's project, wired up exactly as the README says, works as a whole.

``django-admin startproject``, then the README's settings lines and its
``asgi.py`` (taken from the README itself, as a whole file), then migrate,
``check_readonly_pool`` and uvicorn serving a request through the pool.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from django_readonly_pool.testing.topology import Topology, free_port

pytestmark = pytest.mark.slow
README = Path(__file__).resolve().parents[1] / "README.md"


def readme_block(marker: str) -> str:
    """The README's code block whose first line contains *marker*."""
    for block in re.findall(r"```python\n(.*?)```", README.read_text(), re.S):
        if marker in block.splitlines()[0]:
            return str(block)
    raise AssertionError(f"no README block starting with {marker!r}")


def test_the_readme_wiring_serves_reads_through_the_pool(topology: Topology, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    env["FIDES__DATABASE__DB"] = "newcomer"
    if not topology.primary.sql("SELECT 1 FROM pg_database WHERE datname = 'newcomer'", dbname="postgres"):
        topology.primary.sql("CREATE DATABASE newcomer", dbname="postgres")
    topology.wait_for_replay()
    subprocess.run([sys.executable, "-m", "django", "startproject", "mysite", str(tmp_path)], check=True, env=env)
    site = tmp_path / "mysite"
    settings_lines = readme_block("# settings.py")
    assert "databases_from_env()" in settings_lines and "DATABASE_ROUTERS" in settings_lines
    with (site / "settings.py").open("a") as f:  # the README's lines, the "..." being what is there
        f.write(textwrap.dedent('''
            from django_readonly_pool import databases_from_env

            INSTALLED_APPS = [*INSTALLED_APPS, "django_readonly_pool"]
            DATABASES = databases_from_env()
            DATABASE_ROUTERS = ["django_readonly_pool.router.ReadOnlyRouter"]
            MIDDLEWARE = [*MIDDLEWARE, "django_readonly_pool.middleware.ReadOnlyPoolMiddleware"]
        '''))
    (site / "asgi.py").write_text(readme_block("# asgi.py"))  # the whole file, as the README gives it
    (site / "views.py").write_text(textwrap.dedent('''
        from django.contrib.auth.models import Group
        from django.http import JsonResponse

        async def groups(request):
            names = [g.name async for g in Group.objects.order_by("name")]
            group = await Group.objects.aget(name="readers")
            return JsonResponse({"names": names, "read_from": group._state.db})
    '''))
    (site / "urls.py").write_text(textwrap.dedent('''
        from django.urls import path
        from mysite import views

        urlpatterns = [path("groups/", views.groups)]
    '''))
    manage = [sys.executable, str(tmp_path / "manage.py")]
    subprocess.run([*manage, "migrate", "-v", "0"], check=True, env=env, cwd=tmp_path)
    subprocess.run([*manage, "shell", "-c", "from django.contrib.auth.models import Group; "
                    "Group.objects.get_or_create(name='readers')"], check=True, env=env, cwd=tmp_path)
    topology.wait_for_replay()
    check = subprocess.run([*manage, "check_readonly_pool"], env=env, cwd=tmp_path, capture_output=True, text=True,
                           check=False)
    assert check.returncode == 0 and "Overall: healthy" in check.stdout, check.stdout + check.stderr

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "uvicorn", "mysite.asgi:application", "--port", str(port)],
                              env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/groups/", timeout=10)
                break
            except httpx.TransportError:
                assert server.poll() is None and time.monotonic() < deadline, server.stdout.read() if server.stdout else ""
                time.sleep(0.2)
        assert response.status_code == 200, response.text
        assert response.json() == {"names": ["readers"], "read_from": "readonly"}
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(30)

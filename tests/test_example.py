"""The example project, driven over real HTTP (uvicorn, lifespan), as the README runs it."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from django_readonly_pool.testing.topology import Topology, free_port

ROOT = Path(__file__).parents[1]
pytestmark = pytest.mark.slow


def start(env: dict[str, str], port: int) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "example_project", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_ready(proc: subprocess.Popen[str], port: int) -> str:
    lines = []
    deadline = time.monotonic() + 120
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "Application startup complete" in line:
            return "".join(lines)
    proc.kill()
    raise AssertionError("the example did not start:\n" + "".join(lines))


def exercise(base: str) -> dict[str, object]:
    with httpx.Client(base_url=base, timeout=30) as client:
        before = client.get("/health/").json()["aliases"]["readonly"]["statements"]
        books = client.get("/books/").json()["books"]
        assert len(books) == 20 and {b["read_from"] for b in books} == {"readonly"}
        detail = client.get(f"/books/{books[0]['id']}/").json()
        assert detail["read_from"] == "readonly" and isinstance(detail["reviews"], list)
        assert {b["read_from"] for b in client.get("/sync/books/").json()["books"]} == {"readonly"}
        assert client.get("/stats/").json()["books"] == 500
        write = client.post(f"/books/{books[0]['id']}/reviews/", json={"stars": 4})
        assert write.status_code == 201 and write.json()["read_from"] == "default"
        assert client.get(f"/books/{books[0]['id']}/").json()["read_from"] == "default"  # pinned by cookie
        health = client.get("/health/")
        assert health.status_code == 200
        entry = health.json()["aliases"]["readonly"]
        assert entry["prewarmed"] is True and entry["replica"]["status"] in ("up", "unknown")
        assert entry["statements"] >= before + 4  # the pages read through the pool
        metrics = client.get("/metrics").text
        assert 'readonly_pool_statements_total{alias="readonly"}' in metrics
        assert client.get("/books/999999/").status_code == 404
        assert client.post(f"/books/{books[0]['id']}/reviews/", content=b"{not json").status_code == 400
        assert client.post(f"/books/{books[0]['id']}/reviews/", json={"stars": 9}).status_code == 400
        assert client.post("/books/999999/reviews/", json={"stars": 3}).status_code == 404
        return entry


@contextlib.contextmanager
def killed_on_failure(proc: subprocess.Popen[str]) -> Iterator[None]:
    """A failing assertion must not leave the example (and its throwaway servers) running."""
    try:
        yield
    except BaseException:
        proc.send_signal(signal.SIGINT)  # its own cleanup stops the servers it started
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    return out


def test_main_job_with_throwaway_servers(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FIDES__", "READONLY_POOL_TEST", "DJANGO_"))}
    port = free_port()
    proc = start(env, port)
    with killed_on_failure(proc):
        startup = wait_ready(proc, port)
        assert "starting a throwaway primary + replica + PgBouncer" in startup
        assert "Overall: healthy" in startup and "connection pooler in front: yes" in startup
        assert f"http://127.0.0.1:{port}/" in startup
        base = re.search(r"primary\s+127\.0\.0\.1:(\d+)", startup)
        assert base is not None
        exercise(f"http://127.0.0.1:{port}")
    out = stop(proc)
    assert "Stopped the throwaway servers." in out
    assert "Not Found: /books/999999/" in out and "Bad Request" in out  # logged, as 4xx warnings
    assert "is down" not in out  # the monitor stopped before the servers did
    # nothing left listening on the throwaway primary's port
    with pytest.raises(OSError):
        import socket

        socket.create_connection(("127.0.0.1", int(base.group(1))), 1).close()


def test_main_job_with_given_servers(topology: Topology) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    env["FIDES__DATABASE__DB"] = "example"  # keep the suite's own databases apart
    env["FIDES__DATABASE__ASYNC_READONLY_DATABASE_PREWARM"] = "true"  # the environment is honoured
    topology.primary.sql("CREATE DATABASE example", dbname="postgres") if not topology.primary.sql(
        "SELECT 1 FROM pg_database WHERE datname = 'example'", dbname="postgres") else None
    port = free_port()
    proc = start(env, port)
    with killed_on_failure(proc):
        startup = wait_ready(proc, port)
        assert "throwaway" not in startup and "Overall: healthy" in startup
        exercise(f"http://127.0.0.1:{port}")
    assert "Stopped the throwaway servers." not in stop(proc)
    assert topology.primary.is_running() and topology.replica.is_running()


def test_a_failed_prewarm_is_reported_once(topology: Topology) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    env["FIDES__DATABASE__DB"] = "example"
    env["FIDES__DATABASE__READONLY_PORT"] = str(free_port())  # nothing listens there
    env["FIDES__DATABASE__ASYNC_READONLY_DATABASE_PREWARM"] = "true"
    env["FIDES__DATABASE__ASYNC_READONLY_DATABASE_PREWARM_TIMEOUT"] = "3"
    port = free_port()
    proc = start(env, port)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "Application startup failed" in out
    # once in check_readonly_pool's report, once as the server's reason not to start
    assert out.count("prewarm of the read-only pool 'readonly' failed") == 2, out

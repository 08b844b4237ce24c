"""ASGI requests: no thread hop when a request needs none, sync views still cleaned up."""

from __future__ import annotations

import concurrent.futures
from typing import Any

import pytest
from django.core.handlers.asgi import ASGIHandler

from tests.conftest import arun
from tests.views import CAPTURED

pytestmark = pytest.mark.usefixtures("seeded", "db_access")


async def asgi_get(handler: ASGIHandler, path: str) -> tuple[int, bytes]:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "headers": [],
             "client": ("127.0.0.1", 1234), "server": ("127.0.0.1", 80)}
    sent: list[dict[str, Any]] = []
    messages = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        import asyncio

        await asyncio.Event().wait()  # no disconnect during the request
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await handler(scope, receive, send)
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], body


def count_executors(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    created: list[int] = []
    original = concurrent.futures.ThreadPoolExecutor.__init__

    def counting(self: Any, *args: Any, **kwargs: Any) -> None:
        created.append(1)
        original(self, *args, **kwargs)

    monkeypatch.setattr(concurrent.futures.ThreadPoolExecutor, "__init__", counting)
    return created


def test_async_pool_request_creates_no_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    handler = ASGIHandler()

    async def main() -> list[tuple[int, bytes]]:
        await asgi_get(handler, "/async-pool")  # warm up (pool opens)
        created.clear()
        return [await asgi_get(handler, "/async-pool") for _ in range(5)]

    created = count_executors(monkeypatch)
    responses = arun(main())
    assert {status for status, _ in responses} == {200}
    assert created == []  # no per-request executor thread: no hop


def test_sync_view_connections_are_still_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    handler = ASGIHandler()
    CAPTURED.clear()
    created = count_executors(monkeypatch)

    status, _ = arun(asgi_get(handler, "/sync-default"))
    assert status == 200
    assert created  # the sync view ran in the request's thread
    conn = CAPTURED["psycopg_connection"]
    assert conn is not None and conn.closed  # closed at request_finished, as Django does

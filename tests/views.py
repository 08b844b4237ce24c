"""Views used by the routing tests (sync and async)."""

from __future__ import annotations

from django.db.models import F
from django.http import HttpRequest, JsonResponse

from tests.testapp.models import Note


def incr(request: HttpRequest, pk: int) -> JsonResponse:
    Note.objects.filter(pk=pk).update(counter=F("counter") + 1)
    return JsonResponse({"ok": True})


def read(request: HttpRequest, pk: int) -> JsonResponse:
    note = Note.objects.get(pk=pk)
    return JsonResponse({"counter": note.counter, "db": note._state.db})


def incr_and_read(request: HttpRequest, pk: int) -> JsonResponse:
    Note.objects.filter(pk=pk).update(counter=F("counter") + 1)
    note = Note.objects.get(pk=pk)
    return JsonResponse({"counter": note.counter, "db": note._state.db})


async def aincr(request: HttpRequest, pk: int) -> JsonResponse:
    await Note.objects.filter(pk=pk).aupdate(counter=F("counter") + 1)
    return JsonResponse({"ok": True})


async def aread(request: HttpRequest, pk: int) -> JsonResponse:
    note = await Note.objects.aget(pk=pk)
    return JsonResponse({"counter": note.counter, "db": note._state.db})


async def aincr_and_read(request: HttpRequest, pk: int) -> JsonResponse:
    await Note.objects.filter(pk=pk).aupdate(counter=F("counter") + 1)
    note = await Note.objects.aget(pk=pk)
    return JsonResponse({"counter": note.counter, "db": note._state.db})


CAPTURED: dict[str, object] = {}


def sync_read_default(request: HttpRequest) -> JsonResponse:
    from django.db import connection

    count = Note.objects.using("default").count()
    CAPTURED["psycopg_connection"] = connection.connection
    return JsonResponse({"count": count})


async def async_read_pool(request: HttpRequest) -> JsonResponse:
    from tests.testapp.models import Book

    return JsonResponse({"count": await Book.objects.acount()})

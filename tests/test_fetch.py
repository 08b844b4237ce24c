"""``async for`` over a trusted shape: rows read from the event loop, Django's results.

Every read here is compared with Django's own (the sync ORM with this package's
compiler, templates and instance building off), instance by instance: its class,
the order and values of its ``__dict__`` and of its state's, and what
``select_related()`` cached; the statistics prove which path ran.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.conf import settings
from django.db import connections, models
from django.test import override_settings

from django_readonly_pool import fastlane
from tests.conftest import arun, djangos_compiler
from tests.test_materialise import state
from tests.testapp.models import Author, Book, Review

pytestmark = pytest.mark.usefixtures("seeded", "db_access")


@pytest.fixture(autouse=True)
def _cold() -> Iterator[None]:
    fastlane.clear()
    with override_settings(READONLY_POOL={**settings.READONLY_POOL, "FAST_LANE": True}):
        yield
    fastlane.clear()


def full(obj: Any) -> Any:
    if not isinstance(obj, models.Model):
        return obj
    return state(obj), [(name, full(value)) for name, value in obj._state.fields_cache.items()]


def compare(make: Callable[[], Any], *, fetched: bool, times: int = 4) -> None:
    """Iterate *make()* *times* times (the shape is trusted after Django's second compilation):
    every answer equals Django's; the later ones were fetched from the loop when *fetched*."""
    async def main() -> tuple[list[Any], list[int]]:
        answers, counts = [], []
        for _ in range(times):
            before = fastlane.stats()["fetched"]
            answers.append([full(o) async for o in make()])
            counts.append(fastlane.stats()["fetched"] - before)
        return answers, counts

    answers, counts = arun(main())
    with djangos_compiler():
        expected = [full(o) for o in make()]
    assert answers == [expected] * times
    assert counts == ([0, 0] + [1] * (times - 2) if fetched else [0] * times)


READONLY = "readonly"


@pytest.mark.parametrize("make", [
    lambda: Book.objects.using(READONLY).order_by("pk")[:7],
    lambda: Book.objects.using(READONLY).filter(pages__gt=100).order_by("-published", "pk")[:20],
    lambda: Book.objects.using(READONLY).select_related("author").order_by("pk")[:5],
    lambda: Review.objects.using(READONLY).select_related("book__author").order_by("pk")[:5],
    lambda: Book.objects.using(READONLY).annotate(tag=models.Value("x")).order_by("pk")[:5],
    lambda: Book.objects.using(READONLY).only("title", "price").order_by("pk")[:5],
    lambda: Book.objects.using(READONLY).defer("data", "keywords").order_by("pk")[:5],
    lambda: Author.objects.using(READONLY).filter(name__startswith="nobody"),  # no rows
    lambda: Book.objects.using(READONLY).extra(select={"one": "1"}).order_by("pk")[:3],
    lambda: Book.objects.using(READONLY).filter(pk__gt=3).order_by("pk").values_list("pk", "title", "price")[:9],
    lambda: Book.objects.using(READONLY).order_by("pk").values_list("published", "data", "author__name")[:5],
    lambda: Book.objects.using(READONLY).order_by("-pk").values_list("data", flat=True)[:5],
    lambda: Book.objects.using(READONLY).filter(pages__gt=10**9).values_list("pk", flat=True),
], ids=["plain", "filtered", "select_related", "nested", "annotated", "only", "defer", "empty", "extra-select",
        "values_list", "values_list-converted", "flat", "flat-empty"])
def test_trusted_shapes_are_fetched_with_djangos_instances(make: Callable[[], Any]) -> None:
    compare(make, fetched=True)


@pytest.mark.parametrize("make", [
    lambda: Book.objects.using(READONLY).prefetch_related("tags").order_by("pk")[:3],
    lambda: Book.objects.using(READONLY).values("pk", "title").order_by("pk")[:3],
    lambda: Book.objects.using(READONLY).values_list("pk", "title", named=True).order_by("pk")[:3],
    lambda: Book.objects.using(READONLY).annotate(twice=models.F("pages") * 2).order_by("pk")[:3],
    lambda: Book.objects.using(READONLY).order_by("title").distinct("title")[:3],
], ids=["prefetch", "values", "named", "untrusted-shape", "distinct-on"])
def test_what_djangos_iterable_does_more_takes_the_bridge(make: Callable[[], Any]) -> None:
    compare(make, fetched=False)


def test_a_related_managers_known_objects_take_the_bridge() -> None:
    author = Author.objects.using(READONLY).order_by("pk")[1]

    async def main() -> list[Any]:
        out = []
        for _ in range(4):
            books = [b async for b in author.books.using(READONLY).order_by("pk")]
            out.append(([state(b) for b in books], all(b.author is author for b in books)))
        return out

    before = fastlane.stats()["fetched"]
    got = arun(main())
    assert fastlane.stats()["fetched"] == before
    with djangos_compiler():
        expected = [state(b) for b in author.books.using(READONLY).order_by("pk")]
    assert got == [(expected, True)] * 4


def test_an_execute_wrapper_sees_every_statement() -> None:
    seen: list[str] = []

    def hook(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        seen.append(sql)
        return execute(sql, params, many, context)

    def make() -> Any:
        return Book.objects.using(READONLY).order_by("pk")[:3]

    compare(make, fetched=True)
    with connections[READONLY].execute_wrapper(hook):
        compare(make, fetched=False, times=1)
    assert len(seen) == 1


class _OwnFetch(models.QuerySet["Book"]):
    def _fetch_all(self) -> None:
        super()._fetch_all()
        for book in self._result_cache or []:
            book.seen = True


def test_a_queryset_that_fetches_its_own_way_keeps_it() -> None:
    def make() -> Any:
        return _OwnFetch(model=Book, using=READONLY).order_by("pk")[:3]

    async def main() -> list[bool]:
        out = []
        for _ in range(4):
            out.append(all(getattr(b, "seen", False) for b in [b async for b in make()]))
        return out

    assert arun(main()) == [True] * 4


def test_fast_lane_off_fetches_nothing() -> None:
    with override_settings(READONLY_POOL={**settings.READONLY_POOL, "FAST_LANE": False}):
        compare(lambda: Book.objects.using(READONLY).order_by("pk")[:3], fetched=False)

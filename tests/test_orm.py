"""The async ORM dispatch: which calls take the bridge, and Django's answer either way."""

from __future__ import annotations

import warnings
from typing import Any

import django
import pytest
from django.db.models import Prefetch
from django.utils import deprecation

from django_readonly_pool import orm, use_primary
from tests.conftest import arun
from tests.test_equivalence import norm
from tests.testapp.models import Book, Note, Review

pytestmark = pytest.mark.usefixtures("seeded", "db_access")


def first_pk() -> int:
    return Book.objects.using("default").order_by("pk").values_list("pk", flat=True)[0]


# -- a Prefetch on another alias ------------------------------------------------------- #


def test_bridged_only_when_every_read_is_on_a_pool_alias() -> None:
    on_default = Prefetch("reviews", queryset=Review.objects.using("default"))
    nested = Prefetch("reviews", queryset=Review.objects.prefetch_related(
        Prefetch("book", queryset=Book.objects.using("default"))))
    assert orm.bridged("readonly")
    assert orm.bridged("readonly", ("reviews", Prefetch("reviews", queryset=Review.objects.using("readonly"))))
    assert not orm.bridged("readonly", (on_default,))
    assert not orm.bridged("readonly", (nested,))
    assert not orm.bridged("default")


def test_a_prefetch_on_another_alias_gives_djangos_answer() -> None:
    pk = first_pk()

    def qs() -> Any:
        return Book.objects.using("readonly").prefetch_related(
            Prefetch("reviews", queryset=Review.objects.using("default").order_by("pk")))

    async def main() -> list[Any]:
        return [
            norm(await qs().aget(pk=pk)),
            norm(await qs().filter(pk__lte=pk + 5).afirst()),
            norm([b async for b in qs().filter(pk__lte=pk + 5)]),
            norm([b async for b in qs().filter(pk__lte=pk + 5).aiterator(chunk_size=2)]),
        ]

    expected = [
        norm(qs().get(pk=pk)),
        norm(qs().filter(pk__lte=pk + 5).first()),
        norm(list(qs().filter(pk__lte=pk + 5))),
        norm(list(qs().filter(pk__lte=pk + 5).iterator(chunk_size=2))),
    ]
    assert arun(main()) == expected


# -- aiterator() reads no further than asked ---------------------------------------------- #


def _with_a_bad_third_row() -> Any:
    """Row 3 holds a date psycopg cannot load (before year 1)."""
    third = Book.objects.using("default").order_by("pk").values_list("pk", flat=True)[2]
    return Book.objects.using("readonly").order_by("pk").extra(
        select={"when": "CASE WHEN testapp_book.id = %s THEN '0044-03-15 BC'::date ELSE '2000-01-01'::date END"},
        select_params=[third])


@pytest.mark.parametrize("chunk_size", [1, 2])
def test_aiterator_reads_no_further_than_asked(chunk_size: int) -> None:
    qs = _with_a_bad_third_row()
    sync = qs.iterator(chunk_size=chunk_size)
    expected = norm([next(sync), next(sync)])
    with pytest.raises(Exception, match=r"B\.C\.|BC|year"):  # Django (psycopg) fails on row 3 ...
        next(sync)

    async def main() -> tuple[Any, int]:
        from django_readonly_pool.pool import registry

        stream = qs.aiterator(chunk_size=chunk_size)
        taken = [await anext(stream), await anext(stream)]
        await stream.aclose()
        pool = registry.ready("readonly")
        assert pool is not None
        return norm(taken), pool.in_use

    got, in_use = arun(main())
    assert got == expected and in_use == 0  # ... and so does nothing here: two rows, connection back


def test_aiterator_still_reports_a_bad_row_it_reaches() -> None:
    qs = _with_a_bad_third_row()

    async def main() -> None:
        async for _ in qs.aiterator(chunk_size=2):
            pass

    with pytest.raises(Exception, match=r"B\.C\.|BC|year"):
        arun(main())


# -- what works on the pool works on the primary too -------------------------------------- #


def test_values_list_aiterator_works_where_reads_fall_back() -> None:
    expected = list(Book.objects.using("default").order_by("pk").values_list("pk", "title").iterator(chunk_size=7))

    async def main() -> list[list[Any]]:
        explicit = [r async for r in Book.objects.using("default").order_by("pk").values_list("pk", "title")
                    .aiterator(chunk_size=7)]
        with use_primary():  # what a fallback to the primary does to routing
            routed = [r async for r in Book.objects.order_by("pk").values_list("pk", "title").aiterator(chunk_size=7)]
        return [explicit, routed]

    assert arun(main()) == [expected, expected]


def test_djangos_own_aiterator_cannot_do_that() -> None:
    """Why the package keeps its aiterator() for non-pool aliases too."""
    from django.core.exceptions import SynchronousOnlyOperation

    async def main() -> None:
        [r async for r in Book.objects.using("default").values_list("pk").aiterator()]

    orm.uninstall()
    try:
        with pytest.raises(SynchronousOnlyOperation):
            arun(main())
    finally:
        orm.install()


# -- Django's own methods for writes: warnings name your code ---------------------------- #


@pytest.mark.skipif(django.VERSION >= (6, 0), reason="the deprecation ended with Django 6.0")
def test_a_deprecation_warning_of_asave_names_the_caller() -> None:
    note = Note.objects.create(text="warned")

    async def main() -> None:
        await note.asave(False, False, "default", None)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        arun(main())
    found = [w for w in caught if issubclass(w.category, deprecation.RemovedInDjango60Warning)]
    assert found and found[0].filename == __file__, [(w.filename, str(w.message)) for w in caught]
    note.delete()


def test_async_write_methods_are_djangos_own() -> None:
    from django.db import models
    from django.db.models.query import QuerySet

    for name in ("acreate", "aupdate", "adelete", "abulk_create", "aget_or_create"):
        assert getattr(QuerySet, name).__code__.co_filename.endswith("django/db/models/query.py"), name
    for name in ("asave", "adelete"):
        assert getattr(models.Model, name).__code__.co_filename.endswith("django/db/models/base.py"), name

"""The async path returns exactly what Django's sync ORM returns, types included.

Each case is a pair: a sync ORM call and its async twin. The sync one runs on
Django's own sync connection to the replica; the async one goes through the
bridge and the async pool. Both results are normalised to (type, value) trees
and compared, directly to the replica and through PgBouncer.
"""

from __future__ import annotations

import datetime as dt
import decimal
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from django.contrib.postgres.aggregates import ArrayAgg, StringAgg
from django.db import models
from django.db.models import (
    Avg,
    Case,
    Count,
    Exists,
    F,
    Max,
    Min,
    OuterRef,
    Prefetch,
    Q,
    Subquery,
    Sum,
    Value,
    When,
)
from django.db.models.functions import ExtractHour, Lower, TruncDay, TruncMonth

from django_readonly_pool.bridge import in_bridge
from tests.conftest import arun, djangos_compiler
from tests.testapp.models import Author, Book, Review, Tag

pytestmark = pytest.mark.usefixtures("seeded", "db_access")


def norm(value: Any, depth: int = 0) -> Any:
    """A comparable (type, value) tree; instances compared field by field."""
    if isinstance(value, models.Model):
        fields = tuple(
            (f.attname, norm(getattr(value, f.attname))) for f in value._meta.concrete_fields
            if f.attname in value.__dict__
        )
        if depth >= 2:  # back-references of prefetched objects: fields are enough
            return ("model", type(value).__name__, fields)
        related = tuple(sorted((k, norm(v, depth + 1)) for k, v in value._state.fields_cache.items()))
        prefetched = tuple(sorted(
            (k, norm(list(v), depth + 1))
            for k, v in getattr(value, "_prefetched_objects_cache", {}).items()
        ))
        extra = tuple(sorted(
            (k, norm(v, depth + 1)) for k, v in value.__dict__.items()
            if not k.startswith("_") and k not in {f.attname for f in value._meta.concrete_fields}
        ))
        return ("model", type(value).__name__, value._state.db is not None, fields, related, prefetched, extra)
    if isinstance(value, dict):
        return ("dict", tuple(sorted((str(k), norm(v, depth)) for k, v in value.items())))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(norm(v, depth) for v in value))
    if isinstance(value, dt.datetime):
        return ("datetime", value.isoformat(), str(value.tzinfo))
    if isinstance(value, decimal.Decimal):
        return ("Decimal", str(value))
    if isinstance(value, memoryview):
        return ("memoryview", bytes(value))
    if hasattr(value, "lower") and hasattr(value, "upper") and hasattr(value, "bounds"):
        return (type(value).__name__, norm(value.lower), norm(value.upper), value.bounds)
    return (type(value).__name__, value)


async def alist(qs: Any) -> list[Any]:
    return [item async for item in qs]


def book_ids() -> list[int]:
    return list(Book.objects.using("default").values_list("pk", flat=True)[:12])


Pair = tuple[str, Callable[[str], Any], Callable[[str], Awaitable[Any]]]

CASES: list[Pair] = [
    ("aget pk", lambda a: Book.objects.using(a).get(pk=book_ids()[3]),
     lambda a: Book.objects.using(a).aget(pk=book_ids()[3])),
    ("aget unique field", lambda a: Book.objects.using(a).get(isbn=9_780_000_000_000 + 5 * 7919),
     lambda a: Book.objects.using(a).aget(isbn=9_780_000_000_000 + 5 * 7919)),
    ("aget pk as string", lambda a: Book.objects.using(a).get(pk=str(book_ids()[2])),
     lambda a: Book.objects.using(a).aget(pk=str(book_ids()[2]))),
    ("aget id__exact", lambda a: Book.objects.using(a).get(id__exact=book_ids()[1]),
     lambda a: Book.objects.using(a).aget(id__exact=book_ids()[1])),
    ("aget uuid", lambda a: Author.objects.using(a).get(uuid=Author.objects.using("default").first().uuid),
     lambda a: Author.objects.using(a).aget(uuid=Author.objects.using("default").first().uuid)),
    ("aget fk attname + bool", lambda a: _exc(lambda: Book.objects.using(a).get(
        author_id=Author.objects.using("default").first().pk, genre="novel", in_print=True)),
     lambda a: _aexc(Book.objects.using(a).aget(
         author_id=Author.objects.using("default").first().pk, genre="novel", in_print=True))),
    ("aget datetime", lambda a: Book.objects.using(a).get(published=Book.objects.using("default").get(pk=book_ids()[4]).published),
     lambda a: Book.objects.using(a).aget(published=Book.objects.using("default").get(pk=book_ids()[4]).published)),
    ("aget decimal", lambda a: Book.objects.using(a).get(price=Book.objects.using("default").get(pk=book_ids()[5]).price, pk=book_ids()[5]),
     lambda a: Book.objects.using(a).aget(price=Book.objects.using("default").get(pk=book_ids()[5]).price, pk=book_ids()[5])),
    ("aget no match", lambda a: _exc(lambda: Book.objects.using(a).get(isbn=1)),
     lambda a: _aexc(Book.objects.using(a).aget(isbn=1))),
    ("aget bad value", lambda a: _exc(lambda: Book.objects.using(a).get(pk="abc")),
     lambda a: _aexc(Book.objects.using(a).aget(pk="abc"))),
    ("aget out of range", lambda a: _exc(lambda: Book.objects.using(a).get(pk=2**70)),
     lambda a: _aexc(Book.objects.using(a).aget(pk=2**70))),
    ("aget many (21 cap)", lambda a: _exc(lambda: Review.objects.using(a).get(stars=3)),
     lambda a: _aexc(Review.objects.using(a).aget(stars=3))),
    ("afirst", lambda a: Book.objects.using(a).first(), lambda a: Book.objects.using(a).afirst()),
    ("alast ordered", lambda a: Book.objects.using(a).order_by("price").last(),
     lambda a: Book.objects.using(a).order_by("price").alast()),
    ("afirst empty", lambda a: Book.objects.using(a).filter(pages__lt=0).first(),
     lambda a: Book.objects.using(a).filter(pages__lt=0).afirst()),
    ("acount", lambda a: Book.objects.using(a).count(), lambda a: Book.objects.using(a).acount()),
    ("acount filtered", lambda a: Review.objects.using(a).filter(stars__gte=4).count(),
     lambda a: Review.objects.using(a).filter(stars__gte=4).acount()),
    ("aexists true", lambda a: Book.objects.using(a).filter(in_print=True).exists(),
     lambda a: Book.objects.using(a).filter(in_print=True).aexists()),
    ("aexists false", lambda a: Book.objects.using(a).filter(title="nope").exists(),
     lambda a: Book.objects.using(a).filter(title="nope").aexists()),
    ("aaggregate", lambda a: Book.objects.using(a).aggregate(Sum("price"), Avg("pages"), Min("published"), Max("rating")),
     lambda a: Book.objects.using(a).aaggregate(Sum("price"), Avg("pages"), Min("published"), Max("rating"))),
    ("aaggregate distinct", lambda a: Review.objects.using(a).aggregate(n=Count("book", distinct=True)),
     lambda a: Review.objects.using(a).aaggregate(n=Count("book", distinct=True))),
    ("aaggregate empty", lambda a: Book.objects.using(a).filter(pages__lt=0).aggregate(Sum("price"), c=Count("pk")),
     lambda a: Book.objects.using(a).filter(pages__lt=0).aaggregate(Sum("price"), c=Count("pk"))),
    ("ain_bulk", lambda a: Book.objects.using(a).in_bulk(book_ids()),
     lambda a: Book.objects.using(a).ain_bulk(book_ids())),
    ("ain_bulk field", lambda a: Book.objects.using(a).in_bulk([9_780_000_000_000, 9_780_000_000_000 + 7919], field_name="isbn"),
     lambda a: Book.objects.using(a).ain_bulk([9_780_000_000_000, 9_780_000_000_000 + 7919], field_name="isbn")),
    ("acontains", lambda a: Book.objects.using(a).filter(genre="novel").contains(Book.objects.using("default").get(pk=book_ids()[0])),
     lambda a: Book.objects.using(a).filter(genre="novel").acontains(Book.objects.using("default").get(pk=book_ids()[0]))),
    ("aearliest", lambda a: Book.objects.using(a).earliest("published"), lambda a: Book.objects.using(a).aearliest("published")),
    ("alatest", lambda a: Review.objects.using(a).latest("created", "pk"), lambda a: Review.objects.using(a).alatest("created", "pk")),
    ("async for", lambda a: list(Book.objects.using(a).all()), lambda a: alist(Book.objects.using(a).all())),
    ("values", lambda a: list(Book.objects.using(a).values()), lambda a: alist(Book.objects.using(a).values())),
    ("values_list flat", lambda a: list(Book.objects.using(a).values_list("title", flat=True)),
     lambda a: alist(Book.objects.using(a).values_list("title", flat=True))),
    ("values_list named", lambda a: list(Author.objects.using(a).values_list("name", "uuid", "ip", named=True)),
     lambda a: alist(Author.objects.using(a).values_list("name", "uuid", "ip", named=True))),
    ("values of every type", lambda a: list(Book.objects.using(a).values_list(
        "price", "published", "rating", "data", "keywords", "sales", "available", "reading_time", "cover", "starts_at", "isbn")),
     lambda a: alist(Book.objects.using(a).values_list(
         "price", "published", "rating", "data", "keywords", "sales", "available", "reading_time", "cover", "starts_at", "isbn"))),
    ("select_related", lambda a: list(Book.objects.using(a).select_related("author")[:20]),
     lambda a: alist(Book.objects.using(a).select_related("author")[:20])),
    ("prefetch_related", lambda a: list(Book.objects.using(a).prefetch_related("tags", "reviews")[:15]),
     lambda a: alist(Book.objects.using(a).prefetch_related("tags", "reviews")[:15])),
    ("Prefetch queryset", lambda a: list(Author.objects.using(a).prefetch_related(
        Prefetch("books", queryset=Book.objects.filter(in_print=True).order_by("-price"), to_attr="cheap"))),
     lambda a: alist(Author.objects.using(a).prefetch_related(
         Prefetch("books", queryset=Book.objects.filter(in_print=True).order_by("-price"), to_attr="cheap")))),
    ("annotate count", lambda a: list(Book.objects.using(a).annotate(n=Count("reviews")).order_by("-n", "pk")[:10]),
     lambda a: alist(Book.objects.using(a).annotate(n=Count("reviews")).order_by("-n", "pk")[:10])),
    ("annotate subquery", lambda a: list(Book.objects.using(a).annotate(
        last=Subquery(Review.objects.filter(book=OuterRef("pk")).order_by("-created").values("created")[:1])).values("pk", "last")),
     lambda a: alist(Book.objects.using(a).annotate(
         last=Subquery(Review.objects.filter(book=OuterRef("pk")).order_by("-created").values("created")[:1])).values("pk", "last"))),
    ("Exists filter", lambda a: list(Author.objects.using(a).filter(Exists(Book.objects.filter(author=OuterRef("pk"), pages__gt=1500)))),
     lambda a: alist(Author.objects.using(a).filter(Exists(Book.objects.filter(author=OuterRef("pk"), pages__gt=1500))))),
    ("JSON key lookup", lambda a: list(Book.objects.using(a).filter(data__i__gt=20).values_list("pk", "data__a")),
     lambda a: alist(Book.objects.using(a).filter(data__i__gt=20).values_list("pk", "data__a"))),
    ("JSON nested author meta", lambda a: list(Author.objects.using(a).filter(meta__nested__ok=True).values("meta")),
     lambda a: alist(Author.objects.using(a).filter(meta__nested__ok=True).values("meta"))),
    ("array contains", lambda a: list(Book.objects.using(a).filter(keywords__contains=["k1"])),
     lambda a: alist(Book.objects.using(a).filter(keywords__contains=["k1"]))),
    ("range contains", lambda a: list(Book.objects.using(a).filter(sales__contains=25).values("pk", "sales")),
     lambda a: alist(Book.objects.using(a).filter(sales__contains=25).values("pk", "sales"))),
    ("inet filter", lambda a: list(Author.objects.using(a).filter(ip__startswith="10.0.").values_list("ip", flat=True)),
     lambda a: alist(Author.objects.using(a).filter(ip__startswith="10.0.").values_list("ip", flat=True))),
    ("uuid filter", lambda a: list(Book.objects.using(a).filter(author__uuid=Author.objects.using("default").first().uuid)),
     lambda a: alist(Book.objects.using(a).filter(author__uuid=Author.objects.using("default").first().uuid))),
    ("order nulls last", lambda a: list(Book.objects.using(a).order_by(F("rating").desc(nulls_last=True), "-pk").values_list("pk", flat=True)),
     lambda a: alist(Book.objects.using(a).order_by(F("rating").desc(nulls_last=True), "-pk").values_list("pk", flat=True))),
    ("slice", lambda a: list(Book.objects.using(a).order_by("title")[5:15]),
     lambda a: alist(Book.objects.using(a).order_by("title")[5:15])),
    ("distinct", lambda a: list(Book.objects.using(a).values("genre").distinct().order_by("genre")),
     lambda a: alist(Book.objects.using(a).values("genre").distinct().order_by("genre"))),
    ("dates", lambda a: list(Book.objects.using(a).dates("published", "year")),
     lambda a: alist(Book.objects.using(a).dates("published", "year"))),
    ("datetimes in TIME_ZONE", lambda a: list(Book.objects.using(a).datetimes("published", "month")),
     lambda a: alist(Book.objects.using(a).datetimes("published", "month"))),
    ("TruncDay ExtractHour", lambda a: list(Book.objects.using(a).annotate(d=TruncDay("published"), h=ExtractHour("published")).values("d", "h")),
     lambda a: alist(Book.objects.using(a).annotate(d=TruncDay("published"), h=ExtractHour("published")).values("d", "h"))),
    ("group by month", lambda a: list(Review.objects.using(a).annotate(m=TruncMonth("created")).values("m").annotate(n=Count("pk")).order_by("m")),
     lambda a: alist(Review.objects.using(a).annotate(m=TruncMonth("created")).values("m").annotate(n=Count("pk")).order_by("m"))),
    ("F arithmetic", lambda a: list(Book.objects.using(a).annotate(double=F("price") * 2, per_page=F("price") / F("pages")).values("double", "per_page")),
     lambda a: alist(Book.objects.using(a).annotate(double=F("price") * 2, per_page=F("price") / F("pages")).values("double", "per_page"))),
    ("Case When", lambda a: list(Book.objects.using(a).annotate(size=Case(When(pages__gt=1000, then=Value("long")), default=Value("short"))).values_list("size", flat=True)),
     lambda a: alist(Book.objects.using(a).annotate(size=Case(When(pages__gt=1000, then=Value("long")), default=Value("short"))).values_list("size", flat=True))),
    ("Q objects", lambda a: list(Book.objects.using(a).filter(Q(genre="poetry") | ~Q(in_print=True), Q(pages__gt=100))),
     lambda a: alist(Book.objects.using(a).filter(Q(genre="poetry") | ~Q(in_print=True), Q(pages__gt=100)))),
    ("escaped LIKE", lambda a: list(Book.objects.using(a).filter(title__contains="%")),
     lambda a: alist(Book.objects.using(a).filter(title__contains="%"))),
    ("icontains unicode", lambda a: list(Author.objects.using(a).filter(name__icontains="ZOË")),
     lambda a: alist(Author.objects.using(a).filter(name__icontains="ZOË"))),
    ("aiterator", lambda a: list(Book.objects.using(a).order_by("pk").iterator(chunk_size=7)),
     lambda a: alist(Book.objects.using(a).order_by("pk").aiterator(chunk_size=7))),
    ("aiterator prefetch", lambda a: list(Book.objects.using(a).prefetch_related("tags").iterator(chunk_size=9)),
     lambda a: alist(Book.objects.using(a).prefetch_related("tags").aiterator(chunk_size=9))),
    ("aiterator values", lambda a: list(Review.objects.using(a).values_list("pk", "body").iterator(chunk_size=500)),
     lambda a: alist(Review.objects.using(a).values_list("pk", "body").aiterator(chunk_size=500))),
    ("raw", lambda a: list(Book.objects.using(a).raw("SELECT id, title, price FROM testapp_book WHERE pages > %s ORDER BY id", [500])),
     lambda a: alist(Book.objects.using(a).raw("SELECT id, title, price FROM testapp_book WHERE pages > %s ORDER BY id", [500]))),
    ("union", lambda a: list(Book.objects.using(a).filter(pages__lt=300).values_list("pk").union(Book.objects.using(a).filter(pages__gt=1800).values_list("pk")).order_by("pk")),
     lambda a: alist(Book.objects.using(a).filter(pages__lt=300).values_list("pk").union(Book.objects.using(a).filter(pages__gt=1800).values_list("pk")).order_by("pk"))),
    ("reverse FK manager", lambda a: Author.objects.using(a).get(pk=Author.objects.using("default").first().pk).books.count(),
     lambda a: _reverse_fk_count(a)),  # noqa: PLW0108 - defined below
    ("m2m filter", lambda a: list(Tag.objects.using(a).filter(books__genre="essay").distinct()),
     lambda a: alist(Tag.objects.using(a).filter(books__genre="essay").distinct())),
    ("postgres aggregates", lambda a: Book.objects.using(a).aggregate(t=StringAgg("title", ", ", order_by="title"), p=ArrayAgg("pages", order_by="pk")),
     lambda a: Book.objects.using(a).aaggregate(t=StringAgg("title", ", ", order_by="title"), p=ArrayAgg("pages", order_by="pk"))),
    ("only defer", lambda a: list(Book.objects.using(a).only("title", "price").defer("price")),
     lambda a: alist(Book.objects.using(a).only("title", "price").defer("price"))),
    ("Lower annotation", lambda a: list(Author.objects.using(a).annotate(low=Lower("name")).values_list("low", flat=True)),
     lambda a: alist(Author.objects.using(a).annotate(low=Lower("name")).values_list("low", flat=True))),
    ("DoesNotExist", lambda a: _exc(lambda: Book.objects.using(a).get(pk=-1)),
     lambda a: _aexc(Book.objects.using(a).aget(pk=-1))),
    ("MultipleObjectsReturned", lambda a: _exc(lambda: Book.objects.using(a).get(genre="novel")),
     lambda a: _aexc(Book.objects.using(a).aget(genre="novel"))),
]


async def _reverse_fk_count(alias: str) -> int:
    author = await Author.objects.using(alias).aget(pk=(await Author.objects.using("default").afirst()).pk)
    return await author.books.acount()


def _exc(fn: Callable[[], Any]) -> str:
    try:
        fn()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return "no exception"


async def _aexc(awaitable: Awaitable[Any]) -> str:
    try:
        await awaitable
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return "no exception"


def test_there_are_enough_cases() -> None:
    assert len(CASES) >= 40


@pytest.mark.parametrize("fast_lane", [True, False], ids=["fast-lane", "no-fast-lane"])
@pytest.mark.parametrize("alias", ["readonly", "readonly_bouncer"])
def test_async_results_equal_sync_results(alias: str, fast_lane: bool) -> None:
    from django.test import override_settings

    from django_readonly_pool import compiled, fastlane

    with override_settings(READONLY_POOL={"TESTS_READ_PRIMARY": False, "READONLY_ALIASES": ["readonly"],
                                          "FAST_LANE": fast_lane}):
        fastlane.clear()
        before, shapes_before = fastlane.stats()["hits"], compiled.stats()["hits"]
        _compare_all(alias)
        _compare_all(alias)  # the second round hits the cached shapes
        _compare_all(alias)
        hits, shape_hits = fastlane.stats()["hits"] - before, compiled.stats()["hits"] - shapes_before
    # The fast lane (aget, acount, aexists) and the compiled-SQL cache both at work, or neither.
    assert (hits >= 10) if fast_lane else (hits == 0), fastlane.stats()
    assert (shape_hits >= 20) if fast_lane else (shape_hits == 0), compiled.stats()


def _compare_all(alias: str) -> None:
    mismatches = []
    for name, sync_fn, async_fn in CASES:
        with djangos_compiler():
            expected = norm(sync_fn(alias))
        got = norm(arun(async_fn(alias)))
        if got != expected:
            mismatches.append(f"{name}:\n  sync:  {expected!r:.600}\n  async: {got!r:.600}")
    assert not mismatches, "\n".join(mismatches)


def test_results_equal_the_primary() -> None:
    # The replica serves the primary's data: spot-check a few through the bridge.
    for name, sync_fn, async_fn in CASES[:20]:
        assert norm(sync_fn("default")) == norm(arun(async_fn("readonly"))), name


def test_async_reads_run_on_the_event_loop_thread() -> None:
    seen: list[tuple[int, bool]] = []

    def hook(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        seen.append((threading.get_ident(), in_bridge()))
        return execute(sql, params, many, context)

    pk = book_ids()[0]

    async def main() -> int:
        from django.db import connections

        with connections["readonly"].execute_wrapper(hook):
            await Book.objects.aget(pk=pk)
            await Book.objects.acount()
            [b async for b in Book.objects.all()[:3]]
        return threading.get_ident()

    loop_thread = arun(main())
    assert len(seen) == 3
    assert all(ident == loop_thread and bridged for ident, bridged in seen)


def test_router_sends_plain_async_reads_to_the_pool() -> None:
    async def main() -> tuple[str | None, str | None]:
        book = await Book.objects.afirst()
        author = await Author.objects.filter(pk=book.author_id).afirst()
        return book._state.db, author._state.db

    assert arun(main()) == ("readonly", "readonly")


@pytest.mark.parametrize("alias", ["readonly", "readonly_bouncer"])
def test_contrib_postgres_types_load_as_on_sync_connections(alias: str, topology: Any) -> None:
    """hstore and citext[] come back as Django's sync connections return them
    (django.contrib.postgres registers their loaders on each connection)."""
    from django.contrib.postgres.fields import ArrayField, HStoreField
    from django.contrib.postgres.signals import get_citext_oids, get_hstore_oids
    from django.db import connections
    from django.db.models.expressions import RawSQL
    from django.test import override_settings

    with connections["default"].cursor() as cursor:
        cursor.execute("CREATE EXTENSION IF NOT EXISTS hstore; CREATE EXTENSION IF NOT EXISTS citext")
    topology.wait_for_replay()
    get_hstore_oids.cache_clear()  # Django caches "no such type" per alias
    get_citext_oids.cache_clear()
    for conn in connections.all(initialized_only=True):
        conn.close()

    def query(a: str) -> Any:
        return Book.objects.using(a).annotate(
            h=RawSQL("'a=>1, b=>NULL, \"c d\"=>\"é\"'::hstore", (), output_field=HStoreField()),
            c=RawSQL("ARRAY['X', 'y']::citext[]", (), output_field=ArrayField(models.TextField())),
        ).values_list("h", "c")

    with override_settings(READONLY_POOL={"TESTS_READ_PRIMARY": False, "READONLY_ALIASES": ["readonly"]}):
        expected = query(alias).first()
        got = arun(query(alias).afirst())
    assert expected == ({"a": "1", "b": None, "c d": "é"}, ["X", "y"])
    assert got == expected

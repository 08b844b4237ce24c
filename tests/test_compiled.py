"""The compiled-SQL cache sends Django's statement, whatever the cache was warmed with.

Each case warms a shape with some values (three calls: two compiles by Django,
then trusted), then runs a probe whose values could tempt a wrong cache: the
statement sent (SQL and parameters, types included) and the answer must be
those of Django's own compiler for the probe. The real replica answers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
from django.conf import settings
from django.db import connections, models
from django.db.models import Count, F, Q, Value
from django.db.models.lookups import Exact
from django.test import override_settings

from django_readonly_pool import compiled, fastlane
from tests.conftest import arun, djangos_compiler
from tests.test_equivalence import norm
from tests.testapp.models import Author, Book

pytestmark = pytest.mark.usefixtures("seeded", "db_access")

ALIAS = "readonly"
Make = Callable[[Any], Awaitable[Any]]  # value -> an awaitable answer


@pytest.fixture(autouse=True)
def _fast_lane_on() -> Iterator[None]:
    with override_settings(READONLY_POOL={**settings.READONLY_POOL, "FAST_LANE": True}):
        compiled.clear()
        fastlane.clear()
        yield


def books() -> Any:
    return Book.objects.using(ALIAS)


async def sent(make: Make, value: Any) -> tuple[Any, list[tuple[str, tuple[Any, ...]]]]:
    """The answer, and every statement sent with its parameters (types kept)."""
    statements: list[tuple[str, tuple[Any, ...]]] = []

    def hook(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        statements.append((sql, tuple((type(p), p) for p in params or ())))
        return execute(sql, params, many, context)

    with connections[ALIAS].execute_wrapper(hook):
        try:
            answer = norm(await make(value))
        except Exception as exc:
            answer = f"{type(exc).__name__}: {exc}"
    return answer, statements


def djangos(make: Make, value: Any) -> tuple[Any, list[Any]]:
    with djangos_compiler():
        fastlane.clear()
        return arun(sent(make, value))


def warmed_then(make: Make, warm: list[Any], probe: Any) -> tuple[Any, list[Any]]:
    async def main() -> tuple[Any, list[Any]]:
        for value in warm:
            for _ in range(3):
                await sent(make, value)
        return await sent(make, probe)

    return arun(main())


async def listed(qs: Any) -> list[Any]:
    return [x async for x in qs]


CASES: dict[str, tuple[Make, list[Any], Any]] = {
    # True/False change the SQL itself ("WHERE in_print" / "WHERE NOT in_print").
    "bool": (lambda v: listed(books().filter(in_print=v).order_by("pk")), [True], False),
    "bool then int": (lambda v: listed(books().filter(pages=v).order_by("pk")), [True], 1),
    # __in: the number of placeholders follows the distinct non-None values.
    "in, more values": (lambda v: listed(books().filter(pk__in=v).order_by("pk")), [[1, 2]], [1, 2, 3]),
    "in, duplicates and None": (lambda v: listed(books().filter(pk__in=v).order_by("pk")), [[1, 2]], [3, 3, None]),
    "in, empty": (lambda v: listed(books().filter(pk__in=v)), [[1, 2]], []),
    "in, only None": (lambda v: listed(books().filter(pk__in=v)), [[1]], [None]),
    # An integer out of the column's range: Django sends no WHERE (or no query at all).
    "lt overflow": (lambda v: listed(books().filter(pages__lt=v).order_by("pk")), [100], 2**40),
    "gt overflow": (lambda v: listed(books().filter(pages__gt=v).order_by("pk")), [100], 2**40),
    "exact overflow": (lambda v: listed(books().filter(pages=v)), [100], -(2**40)),
    # None makes another lookup (IS NULL); LIKE escapes the value's wildcards.
    "exact None": (lambda v: listed(books().filter(rating=v).order_by("pk")), [4.5], None),
    "contains wildcards": (lambda v: listed(books().filter(title__contains=v)), ["a"], "50%_\\"),
    "icontains": (lambda v: listed(books().filter(title__icontains=v).order_by("pk")), ["a"], "TH"),
    "range": (lambda v: listed(books().filter(pages__range=v).order_by("pk")), [(1, 100)], (100, 1000)),
    "isnull": (lambda v: listed(books().filter(rating__isnull=v).order_by("pk")), [True], False),
    # Values of other types for the same column.
    "decimal as str": (lambda v: listed(books().filter(price__lt=v).order_by("pk")), [Decimal("20")], "30.5"),
    "float for an integer": (lambda v: listed(books().filter(pages__lt=v).order_by("pk")), [300], 300.5),
    "a model for a foreign key": (lambda v: listed(books().filter(author=v).order_by("pk")), [1],
                                  Author(pk=2)),
    # Structure around the values.
    "exclude": (lambda v: listed(books().exclude(rating__gt=v).order_by("pk")), [3.0], 4.0),
    "or": (lambda v: listed(books().filter(Q(pages__lt=v) | Q(rating__gt=4)).order_by("pk")), [200], 400),
    "slice": (lambda v: listed(books().order_by("pk")[v:v + 2]), [0], 2),
    "select_related": (lambda v: books().select_related("author").aget(pk=v), [1], 2),
    "values_list": (lambda v: listed(books().filter(pk__gte=v).order_by("pk").values_list("title", "pk")), [1], 3),
    "only": (lambda v: listed(books().only("title").filter(pk__lte=v).order_by("pk")), [2], 4),
    "across a join": (lambda v: listed(books().filter(author__name=v).order_by("pk")), ["x"], "Ann"),
    "reverse join": (lambda v: listed(Author.objects.using(ALIAS).filter(books__pages__gt=v).order_by("pk")),
                     [10], 300),
    "F on the right": (lambda v: listed(books().filter(pages__gt=F("pk") + v).order_by("pk")), [1], 2),
    "count": (lambda v: books().filter(pages__lt=v).acount(), [100], 400),
    "count, sliced": (lambda v: books().order_by("pk")[:v].acount(), [1], 3),
    "count, distinct": (lambda v: books().filter(pages__gt=v).values("author").distinct().acount(), [1], 100),
    "count, annotated": (lambda v: books().annotate(n=Value(v)).acount(), [1], 2),
    "exists": (lambda v: books().filter(pages__gt=v).aexists(), [1], 10**6),
    "exists, empty in": (lambda v: books().filter(pk__in=v).aexists(), [[1]], []),
    "aggregate": (lambda v: books().filter(pages__gt=v).aaggregate(n=Count("pk")), [1], 300),
    "extra where": (lambda v: listed(books().extra(where=[f"pages > {int(v)}"]).order_by("pk")), [1], 300),
    "none()": (lambda v: listed(books().filter(pages__gt=v).none()), [1], 2),
}


@pytest.mark.parametrize("name", list(CASES))
def test_the_statement_is_djangos_for_the_probe(name: str) -> None:
    make, warm, probe = CASES[name]
    expected = djangos(make, probe)
    compiled.clear()
    fastlane.clear()
    assert warmed_then(make, warm, probe) == expected


def test_every_case_also_runs_cold() -> None:
    for name, (make, _, probe) in CASES.items():
        compiled.clear()
        fastlane.clear()
        assert arun(sent(make, probe)) == djangos(make, probe), name


FAST_GETS = {"select_related"}
SERVED = ["select_related", "values_list", "only", "across a join", "reverse join", "exclude", "or",
          "contains wildcards", "range", "decimal as str", "a model for a foreign key",
          "count, annotated"]
SCALARS = ["count", "exists", "count, distinct"]  # the fast lane: no compiler at all once trusted


@pytest.mark.parametrize("name", SERVED + SCALARS)
def test_reads_people_write_are_served_from_the_cache(name: str) -> None:
    make, warm, probe = CASES[name]
    before, fast_before = compiled.stats()["hits"], fastlane.stats()["hits"]
    warmed_then(make, warm, probe)
    # The third warm call and the probe: served from a trusted shape (the fast lane's own, for
    # count()/exists() and aget(), select_related() included: no compilation at all).
    if name in SCALARS or name in FAST_GETS:
        assert fastlane.stats()["hits"] - fast_before >= 2
    else:
        assert compiled.stats()["hits"] - before >= 2


def test_count_and_exists_send_one_statement_cold_and_warm() -> None:
    for method in ("acount", "aexists"):
        async def call(v: Any, method: str = method) -> Any:
            return await getattr(books().filter(pages__gt=v), method)()

        for n in range(5):
            answer, statements = arun(sent(call, n))
            assert len(statements) == 1, (method, n, statements)
            assert answer == djangos(call, n)[0]
    assert fastlane.stats()["hits"] >= 4


def test_a_shape_is_trusted_only_after_two_compiles_by_django() -> None:
    def make(v: Any) -> Awaitable[Any]:
        return listed(books().filter(pages__gt=v).order_by("pk")[:3])

    hits = compiled.stats()["hits"]
    arun(sent(make, 0))
    arun(sent(make, 1))
    assert compiled.stats()["hits"] == hits  # two compiles by Django
    arun(sent(make, 2))
    assert compiled.stats()["hits"] == hits + 1


def test_an_attribute_it_does_not_know_takes_djangos_path() -> None:
    # What a later Django (or a third-party app) might set on a Query.
    def make(v: Any) -> Awaitable[Any]:
        qs = books().filter(pk=v).order_by("pk")
        qs.query.some_future_attribute = v  # type: ignore[attr-defined]
        return listed(qs)

    before = compiled.stats()
    warmed_then(make, [1], 2)
    after = compiled.stats()
    assert after["hits"] == before["hits"]
    assert after["ineligible"] >= before["ineligible"] + 4


class NotExact(Exact):
    """A custom lookup subclassing Django's: its SQL is not Django's Exact's."""

    lookup_name = "notexact"

    def as_sql(self, compiler: Any, connection: Any) -> tuple[str, Any]:
        sql, params = super().as_sql(compiler, connection)
        return f"NOT ({sql})", params


def test_a_custom_lookup_is_not_trusted() -> None:
    models.IntegerField.register_lookup(NotExact)
    try:
        make: Make = lambda v: listed(books().filter(pages__notexact=v).order_by("pk"))  # noqa: E731
        expected = djangos(make, 300)
        compiled.clear()
        before = compiled.stats()["hits"]
        assert warmed_then(make, [100], 300) == expected
        assert compiled.stats()["hits"] == before
    finally:
        models.IntegerField._unregister_lookup(NotExact)  # type: ignore[attr-defined]


def test_fast_lane_off_turns_it_off() -> None:
    with override_settings(READONLY_POOL={**settings.READONLY_POOL, "FAST_LANE": False}):
        assert not compiled.installed()
        before = compiled.stats()["hits"]
        make, warm, probe = CASES["slice"]
        warmed_then(make, warm, probe)
        assert compiled.stats()["hits"] == before
    assert compiled.installed()


def test_the_sync_orm_on_a_pool_alias_uses_it_too() -> None:
    before = compiled.stats()["hits"]
    for n in range(4):
        with djangos_compiler():
            expected = list(books().filter(pages__gt=n * 50).order_by("pk").values_list("pk", flat=True))
        assert list(books().filter(pages__gt=n * 50).order_by("pk").values_list("pk", flat=True)) == expected
    assert compiled.stats()["hits"] > before

"""``filter()``/``exclude()``/``values()`` built from a template give Django's query, value after value.

Each shape is warmed with three values (Django builds them: the first teaches the
template, the next two must match it) and then probed with others, built from the
template; every probe's query is compared with the one Django builds for the same
call (its SQL and parameters, its WHERE tree, its join bookkeeping) and its rows
with Django's.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
from django.conf import settings
from django.db.models import F, Q, QuerySet
from django.test import override_settings

from django_readonly_pool import fastlane
from django_readonly_pool.fastlane import build
from tests.conftest import arun, djangos_compiler
from tests.testapp.models import Author, Book

pytestmark = pytest.mark.usefixtures("seeded", "db_access")

UTC = dt.UTC


@pytest.fixture(autouse=True)
def _cold() -> Iterator[None]:
    fastlane.clear()
    with override_settings(READONLY_POOL={**settings.READONLY_POOL, "FAST_LANE": True}):
        yield
    fastlane.clear()


def books() -> Any:
    return Book.objects.using("readonly")


def _state(qs: QuerySet[Any]) -> dict[str, Any]:
    query = qs.query
    sql, params = query.get_compiler(using=qs.db).as_sql()
    return {
        "sql": sql, "params": [(type(p), p) for p in params], "where": query.where,
        "leaves": _leaves(query.where), "attributes": sorted(vars(query)),
        **{name: getattr(query, name) for name in (
            "alias_map", "alias_refcount", "table_map", "used_aliases", "values_select", "select",
            "default_cols", "selected", "select_related", "deferred_loading")},
    }


def _leaves(node: Any) -> list[Any]:
    """Each WHERE leaf as (class, column, prepared value with its type)."""
    out: list[Any] = []
    for child in getattr(node, "children", ()):
        if hasattr(child, "children"):
            out.append((type(child).__name__, child.connector, child.negated, _leaves(child)))
        else:
            rhs = child.rhs
            typed = [(type(v), v) for v in rhs] if isinstance(rhs, (list, tuple)) else (type(rhs), rhs)
            out.append((type(child), getattr(child.lhs, "target", None), typed))
    return out


def _rows(qs: QuerySet[Any]) -> Any:
    try:
        return [getattr(row, "pk", row) for row in qs]
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


def check(make: Callable[[Any], QuerySet[Any]], warm: list[Any], probes: list[Any], *,
          from_template: bool = True) -> None:
    """Warm *make*'s shape with *warm*, then each probe equals Django's own build."""
    for value in warm:
        make(value)
    for value in probes:
        before = fastlane.stats()["built_from_template"]
        ours = make(value)
        used = fastlane.stats()["built_from_template"] - before
        with djangos_compiler():
            theirs = make(value)
        assert _state(ours) == _state(theirs), value
        assert _rows(ours) == _rows(theirs), value
        assert bool(used) is from_template, (value, used)


def test_a_shape_is_built_by_django_until_its_template_matched_twice() -> None:
    counts = []
    for price in range(5):
        before = fastlane.stats()
        books().filter(price__lt=Decimal(price))
        after = fastlane.stats()
        counts.append((after["built_by_django"] - before["built_by_django"],
                       after["built_from_template"] - before["built_from_template"]))
    assert counts == [(1, 0), (1, 0), (1, 0), (0, 1), (0, 1)]


WARM3 = [1, 2, 3]


@pytest.mark.parametrize(("make", "warm", "probes"), [
    (lambda v: books().filter(price__lt=v), [Decimal(5), Decimal("7.5"), Decimal(9)],
     [Decimal("12.25"), Decimal(0), Decimal("1e3")]),
    (lambda v: books().filter(title__icontains=v), ["a", "b", "c"], ["%", "_x", "Book 00", "o'clock"]),
    (lambda v: books().filter(pk__in=v), [[1], [1, 2], [3, 4, 5]], [[2], [7, 8, 9, 10], [10**6]]),
    (lambda v: books().filter(pk__in=v), [(1,), (1, 2), (3,)], [(4, 5), (6,)]),
    (lambda v: books().exclude(rating__gt=v), [1.0, 2.0, 3.0], [4.5, 0.0]),
    (lambda v: books().filter(published__gte=v),
     [dt.datetime(2000, 1, d, tzinfo=UTC) for d in (1, 2, 3)], [dt.datetime(2001, 5, 5, 12, tzinfo=UTC)]),
    (lambda v: books().filter(Q(pages__lt=v) | Q(in_print=False)), [10, 20, 30], [100, 250]),
    (lambda v: books().filter(author_id=v), WARM3, [3, 4]),
    (lambda v: books().filter(author=v), WARM3, [3, 4]),
    (lambda v: books().filter(isbn__range=(v, v + 10)), WARM3, [5, 10**12]),
    (lambda v: books().filter(reading_time__gt=v), [dt.timedelta(minutes=m) for m in (1, 2, 3)],
     [dt.timedelta(hours=1)]),
    (lambda v: books().filter(starts_at__lt=v), [dt.time(h) for h in (1, 2, 3)], [dt.time(12, 30)]),
    (lambda v: books().filter(in_print=v), [True, False, True], [False, True]),
    (lambda v: books().filter(pages__gt=v).exclude(title__startswith=str(v)).filter(price__lte=Decimal(v)),
     [1, 2, 3], [40, 50]),
    (lambda v: books().filter(pages__gt=v).order_by("-published").values_list("id", "title", "author__name")[:5],
     [1, 2, 3], [40, 50]),
    (lambda v: books().filter(title__gt=v).values(), ["a", "b", "c"], ["B", "Book 01"]),
    (lambda v: books().values("pk", "price").filter(pages__lt=v), [10, 20, 30], [300]),
    (lambda v: books().filter(author__name__gt=v).filter(pages__gt=len(v)), ["a", "b", "c"], ["author 1", "z"]),
], ids=lambda value: "" if callable(value) or isinstance(value, list) else str(value))
def test_templates_build_djangos_query(make: Callable[[Any], QuerySet[Any]], warm: list[Any],
                                        probes: list[Any]) -> None:
    check(make, warm, probes)


def test_uuid_values() -> None:
    uuids = list(Author.objects.using("default").values_list("uuid", flat=True)[:4])
    check(lambda v: Author.objects.using("readonly").filter(uuid=v), uuids[:3], [uuids[3], uuid.uuid4()])


def test_a_queryset_whose_alias_the_router_chooses_is_built_by_django() -> None:
    # A related manager of an instance read from the pool reads there too, but its queryset
    # names no alias until it runs: it may still be used to write (update(), delete()).
    author = Author.objects.using("readonly").order_by("pk")[2]
    check(lambda v: author.books.filter(pages__gt=v), [1, 2, 3], [100, 10**9], from_template=False)


# -- values for which Django builds another tree take its path ------------------- #


@pytest.mark.parametrize(("make", "warm", "value"), [
    (lambda v: books().filter(title=v), ["x", "y", "z"], lambda: None),  # IS NULL
    (lambda v: books().filter(rating__gt=v), [1.0, 2.0, 3.0], lambda: None),  # Django refuses None
    (lambda v: books().exclude(pk__in=v), [[1], [2, 3], [4]], lambda: [1, None]),  # IN ... OR IS NULL
    (lambda v: books().filter(pages__lt=v), [1, 2, 3], lambda: F("isbn")),  # an expression
    (lambda v: books().filter(pages__lt=v), ["1", "2", "3"], lambda: "abc"),  # Django refuses it
    (lambda v: books().filter(genre=v), ["a", "b", "c"], lambda: Book.Genre.NOVEL),  # a str subclass
    (lambda v: books().filter(pk__in=v), [[1], [2], [3]], lambda: iter([1, 2])),  # an iterator
], ids=["none-exact", "none-gt", "none-in-exclude", "expression", "refused", "choices", "iterator"])
def test_values_that_change_the_tree_take_djangos_path(make: Callable[[Any], QuerySet[Any]], warm: list[Any],
                                                        value: Callable[[], Any]) -> None:
    for sample in warm:
        make(sample)

    def answer() -> Any:
        try:
            qs = make(value())
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        return _state(qs), _rows(qs)

    before = fastlane.stats()["built_from_template"]
    ours = answer()
    assert fastlane.stats()["built_from_template"] == before
    with djangos_compiler():
        assert ours == answer()


def test_a_model_instance_value_takes_djangos_path() -> None:
    author = Author.objects.using("readonly").order_by("pk")[1]
    check(lambda v: books().filter(author=v), [Author.objects.using("readonly").order_by("pk")[0]] * 3,
          [author], from_template=False)


# -- only pool aliases, only with the fast lane ------------------------------------ #


def test_other_aliases_are_built_by_django() -> None:
    before = fastlane.stats()
    for price in range(5):
        list(Book.objects.using("default").filter(price__lt=Decimal(price)).values_list("pk", flat=True))
        Book.objects.filter(price__lt=Decimal(price))  # no alias chosen yet: Django's
    after = fastlane.stats()
    assert (after["built_from_template"], after["built_by_django"]) == (
        before["built_from_template"], before["built_by_django"])


def test_fast_lane_off_restores_djangos_methods() -> None:
    assert build.installed()
    with override_settings(READONLY_POOL={**settings.READONLY_POOL, "FAST_LANE": False}):
        assert not build.installed()
        before = fastlane.stats()
        for price in range(5):
            books().filter(price__lt=Decimal(price))
        assert fastlane.stats()["built_by_django"] == before["built_by_django"]
    assert build.installed()


def test_prohibited_keywords_raise_djangos_error() -> None:
    for _ in range(4):
        books().filter(pages=1)
    with pytest.raises(TypeError, match="_connector"):
        books().filter(pages=1, _connector="OR")


def test_async_reads_of_templated_querysets_equal_the_sync_orm() -> None:
    async def main() -> list[Any]:
        out = []
        for pages in (10, 20, 30, 40, 50):
            qs = books().filter(pages__gt=pages).exclude(in_print=False).order_by("pk")
            out.append(([b.pk async for b in qs], await qs.acount(), await qs.aexists(),
                        [row async for row in qs.values_list("pk", "title")[:3]]))
        return out

    got = arun(main())
    assert fastlane.stats()["built_from_template"] > 0
    with djangos_compiler():
        expected = []
        for pages in (10, 20, 30, 40, 50):
            qs = Book.objects.using("readonly").filter(pages__gt=pages).exclude(in_print=False).order_by("pk")
            expected.append(([b.pk for b in qs], qs.count(), qs.exists(), list(qs.values_list("pk", "title")[:3])))
    assert got == expected


def test_a_lookup_registered_later_is_djangos() -> None:
    from django.db.models import CharField
    from django.db.models.lookups import Exact
    from django.test.utils import register_lookup

    class Shouting(Exact):
        lookup_name = "exact"

        def get_prep_lookup(self) -> Any:
            return str(super().get_prep_lookup()).upper()

    make = lambda v: books().filter(title=v)  # noqa: E731
    check(make, ["a", "b", "c"], ["Book 000 %_"])  # trusted and used
    with register_lookup(CharField, Shouting):
        check(make, [], ["Book 001", "book 002"], from_template=False)

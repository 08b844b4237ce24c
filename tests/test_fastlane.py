"""The fast lane gives Django's answer, whatever order its cache was warmed in.

Each defect of issue 12 has a test here, run with the cache warmed in both
orders; every async answer is compared with Django's sync ORM on the same alias.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from django.conf import settings
from django.db import connections
from django.test import override_settings

from django_readonly_pool import fastlane
from tests.conftest import arun
from tests.test_equivalence import _aexc, _exc, norm
from tests.testapp.models import Author, Book, Review

pytestmark = pytest.mark.usefixtures("seeded", "db_access")


@pytest.fixture(autouse=True)
def _cold_cache() -> Iterator[None]:
    fastlane.clear()
    with override_settings(READONLY_POOL={**settings.READONLY_POOL, "FAST_LANE": True}):
        yield
    fastlane.clear()


def pks() -> list[int]:
    return list(Book.objects.using("default").order_by("pk").values_list("pk", flat=True))


def in_order(calls: list[tuple[Callable[[], Any], Callable[[], Awaitable[Any]]]]) -> None:
    """Run each async call after the ones before it (warming the cache), compare with sync."""
    async def main() -> list[Any]:
        out = []
        for _, call in calls:
            try:
                out.append(norm(await call()))
            except Exception as exc:
                out.append(f"{type(exc).__name__}: {exc}")
        return out

    got = arun(main())
    expected = []
    for call, _ in calls:
        try:
            expected.append(norm(call()))
        except Exception as exc:
            expected.append(f"{type(exc).__name__}: {exc}")
    assert got == expected


def shapes_in_both_orders(a: tuple[Any, Any], b: tuple[Any, Any]) -> None:
    for order in ([a, b, a, b], [b, a, b, a]):
        fastlane.clear()
        in_order(order)


# -- 1. extra(tables=...) --------------------------------------------------------- #


def test_extra_tables_do_not_share_the_plain_shape() -> None:
    pk = pks()[4]
    plain = (lambda: Book.objects.using("readonly").get(pk=pk),
             lambda: Book.objects.using("readonly").aget(pk=pk))
    cross = (lambda: _exc(lambda: Book.objects.using("readonly").extra(tables=["testapp_tag"]).get(pk=pk)),
             lambda: _aexc(Book.objects.using("readonly").extra(tables=["testapp_tag"]).aget(pk=pk)))
    assert "MultipleObjectsReturned" in cross[0]()
    shapes_in_both_orders(plain, cross)


# -- 2. the queryset's class ---------------------------------------------------------- #


def test_a_queryset_class_that_overrides_filter_gets_its_own_answer() -> None:
    out_of_print = Book.objects.using("default").filter(in_print=False).values_list("pk", flat=True)[0]
    plain = (lambda: Book.objects.using("readonly").get(pk=out_of_print),
             lambda: Book.objects.using("readonly").aget(pk=out_of_print))
    custom = (lambda: _exc(lambda: Book.in_print_only.using("readonly").get(pk=out_of_print)),
              lambda: _aexc(Book.in_print_only.using("readonly").aget(pk=out_of_print)))
    assert "DoesNotExist" in custom[0]()
    shapes_in_both_orders(plain, custom)


def test_a_queryset_class_that_only_adds_methods_keeps_the_fast_lane() -> None:
    pk = pks()[2]
    before = fastlane.stats()["hits"]
    in_order([(lambda: Book.shelf.using("readonly").get(pk=pk), lambda: Book.shelf.using("readonly").aget(pk=pk))] * 3)
    assert fastlane.stats()["hits"] - before == 2


# -- 3. values Django answers without a query --------------------------------------- #

OUT_OF_RANGE = [2**63, -(2**63) - 1, "99999999999999999999", 1e20, -1e20]


@pytest.mark.parametrize("value", OUT_OF_RANGE, ids=repr)
@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
def test_out_of_range_values_are_does_not_exist_without_a_query(value: Any, warm: bool) -> None:
    sent: list[str] = []

    def hook(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        sent.append(sql)
        return execute(sql, params, many, context)

    ids = pks()

    async def main() -> str:
        if warm:
            await Book.objects.using("readonly").aget(pk=ids[0])
            await Book.objects.using("readonly").aget(pk=ids[1])
        sent.clear()
        with connections["readonly"].execute_wrapper(hook):
            return await _aexc(Book.objects.using("readonly").aget(pk=value))

    got = arun(main())
    assert got == _exc(lambda: Book.objects.using("readonly").get(pk=value))
    assert got.startswith("DoesNotExist") and sent == []  # Django sends nothing either


def test_compiler_internal_exceptions_never_escape() -> None:
    from django.core.exceptions import EmptyResultSet, FullResultSet

    async def main() -> list[BaseException | None]:
        out: list[BaseException | None] = []
        for value in OUT_OF_RANGE:
            try:
                await Book.objects.using("readonly").aget(pk=value)
            except Exception as exc:
                out.append(exc)
        return out

    for exc in arun(main()):
        assert not isinstance(exc, (EmptyResultSet, FullResultSet)), exc


@pytest.mark.parametrize("value", ["7", 7.0, "abc", 7.5, True], ids=repr)
def test_values_of_other_types_are_prepared_as_django_does(value: Any) -> None:
    ids = pks()
    target = ids[6]
    value = {"7": str(target), 7.0: float(target), 7.5: target + 0.5}.get(value, value)  # type: ignore[call-overload]
    warm = (lambda: Book.objects.using("readonly").get(pk=ids[0]), lambda: Book.objects.using("readonly").aget(pk=ids[0]))
    call = (lambda: _exc(lambda: norm(Book.objects.using("readonly").get(pk=value))),
            lambda: _aexc(_norm_async(Book.objects.using("readonly").aget(pk=value))))
    shapes_in_both_orders(warm, call)


async def _norm_async(awaitable: Awaitable[Any]) -> Any:
    return norm(await awaitable)


# -- 8. a foreign key's attname is a plain column ------------------------------------- #


def test_a_foreign_key_attname_takes_the_fast_lane() -> None:
    book = Book.objects.using("default").order_by("pk")[3]
    calls = [(lambda: Book.objects.using("readonly").get(author_id=book.author_id, isbn=book.isbn),
              lambda: Book.objects.using("readonly").aget(author_id=book.author_id, isbn=book.isbn))] * 3
    calls.append((lambda: _exc(lambda: Book.objects.using("readonly").get(author_id=book.author_id)),
                  lambda: _aexc(Book.objects.using("readonly").aget(author_id=book.author_id))))
    calls.append((lambda: _exc(lambda: Book.objects.using("readonly").get(author_id=2**70)),
                  lambda: _aexc(Book.objects.using("readonly").aget(author_id=2**70))))
    before = fastlane.stats()["hits"]
    in_order(calls)
    assert fastlane.stats()["hits"] - before >= 3


def test_a_related_managers_queryset_keeps_its_filter() -> None:
    author = Author.objects.using("default").order_by("pk")[1]
    other = Book.objects.using("default").exclude(author=author).values_list("pk", flat=True)[0]
    mine = author.books.values_list("pk", flat=True)[0]

    async def main() -> list[str]:
        readonly_author = await Author.objects.using("readonly").aget(pk=author.pk)
        out = []
        for pk in (mine, other, mine):
            out.append(await _aexc(_norm_async(readonly_author.books.aget(pk=pk))))
        return out

    got = arun(main())
    readonly_author = Author.objects.using("readonly").get(pk=author.pk)
    assert got == [_exc(lambda pk=pk: norm(readonly_author.books.get(pk=pk))) for pk in (mine, other, mine)]
    assert got[1].startswith("DoesNotExist")


# -- a trusted shape runs on the event loop when Django's wrapper adds nothing ------ #


def _answer(call: Callable[[], Any]) -> Any:
    try:
        return norm(call())
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


def _warm_then(calls: list[Callable[[], Awaitable[Any]]]) -> tuple[list[Any], int]:
    """Run *calls* in order: their answers, and how many ran straight from the event loop."""
    async def main() -> tuple[list[Any], int]:
        out = []
        before = fastlane.stats()["direct"]
        for call in calls:
            try:
                out.append(norm(await call()))
            except Exception as exc:
                out.append(f"{type(exc).__name__}: {exc}")
        return out, fastlane.stats()["direct"] - before

    return arun(main())


def test_cached_reads_skip_the_bridge_and_give_djangos_answer() -> None:
    ids = pks()
    book = Book.objects.using("default").get(pk=ids[5])
    readonly = Book.objects.using("readonly")
    calls = [lambda pk=pk: readonly.aget(pk=pk) for pk in ids[:4]]
    calls += [lambda: readonly.filter(author_id=book.author_id).acount()] * 3
    calls += [lambda: readonly.filter(title=book.title).aexists()] * 3
    calls += [lambda: readonly.aget(pk=-1), lambda: readonly.aget(author_id=book.author_id)] * 2
    got, direct = _warm_then(calls)
    sync = [lambda pk=pk: readonly.get(pk=pk) for pk in ids[:4]]
    sync += [lambda: readonly.filter(author_id=book.author_id).count()] * 3
    sync += [lambda: readonly.filter(title=book.title).exists()] * 3
    sync += [lambda: readonly.get(pk=-1), lambda: readonly.get(author_id=book.author_id)] * 2
    assert got == [_answer(call) for call in sync]
    # aget(pk=): learnt on its first call, then direct (3, and both pk=-1); acount()/aexists():
    # trusted after Django's two calls (1 each); aget(author_id=): learnt, then direct (1).
    assert direct == 3 + 1 + 1 + 2 + 1
    assert "DoesNotExist" in got[-2] and "MultipleObjectsReturned" in got[-1]


def test_execute_wrappers_and_logged_queries_see_every_cached_read() -> None:
    pk = pks()[1]
    readonly = Book.objects.using("readonly")
    seen: list[str] = []

    def hook(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        seen.append(sql)
        return execute(sql, params, many, context)

    async def main() -> tuple[int, int]:
        for _ in range(3):  # trusted and served directly
            await readonly.aget(pk=pk)
            await readonly.filter(pk__gt=pk).acount()
        before = fastlane.stats()["direct"]
        with connections["readonly"].execute_wrapper(hook):
            await readonly.aget(pk=pk)
            await readonly.filter(pk__gt=pk).acount()
        connection = connections["readonly"]  # as assertNumQueries does, without its connect
        connection.force_debug_cursor = True
        connection.queries_log.clear()
        try:
            await readonly.aget(pk=pk)
            await readonly.filter(pk__gt=pk).aexists()
        finally:
            connection.force_debug_cursor = False
        return fastlane.stats()["direct"] - before, len(connection.queries_log)

    direct, logged = arun(main())
    assert direct == 0
    assert len(seen) == 2 and logged == 2


def test_a_direct_read_raises_djangos_exception() -> None:
    from django.db import DataError

    readonly = Book.objects.using("readonly")
    title = Book.objects.using("default").values_list("title", flat=True)[0]

    async def main() -> tuple[list[str], int]:
        before = fastlane.stats()["direct"]
        for _ in range(2):
            await readonly.filter(title=title).aexists()
            await readonly.aget(title=title)
        out = [await _aexc(readonly.filter(title="a\x00b").aexists()),
               await _aexc(readonly.aget(title="a\x00b"))]
        return out, fastlane.stats()["direct"] - before

    got, direct = arun(main())
    assert direct == 3  # aget's second warm-up call, then both reads below
    for answer in got:
        assert answer.startswith("DataError"), answer
    with pytest.raises(DataError):
        readonly.filter(title="a\x00b").exists()


def test_an_exact_lookup_registered_later_is_djangos() -> None:
    from django.db.models import CharField
    from django.db.models.lookups import Exact
    from django.test.utils import register_lookup

    class Insensitive(Exact):
        lookup_name = "exact"

        def get_db_prep_lookup(self, value: Any, connection: Any) -> Any:
            return ("%s", [str(value).upper()])

        def as_sql(self, compiler: Any, connection: Any) -> Any:
            lhs, lhs_params = self.process_lhs(compiler, connection)
            rhs, rhs_params = self.process_rhs(compiler, connection)
            return f"UPPER({lhs}) = {rhs}", [*lhs_params, *rhs_params]

    title = Book.objects.using("default").order_by("pk").values_list("title", flat=True)[3]
    readonly = Book.objects.using("readonly")
    in_order([(lambda: readonly.get(title=title), lambda: readonly.aget(title=title))] * 3)
    with register_lookup(CharField, Insensitive):
        lower = title.lower()
        in_order([(lambda: _exc(lambda: norm(readonly.get(title=lower))),
                   lambda: _aexc(_norm_async(readonly.aget(title=lower))))])
        assert "no exception" in _exc(lambda: readonly.get(title=lower))  # the custom lookup matched


# -- select_related().aget(): the fast lane with Django's related populators -------- #


@pytest.mark.filterwarnings("ignore:Calling select_related\\(\\) with no arguments")  # Django 6.1
@pytest.mark.parametrize("make", [
    lambda: Book.objects.using("readonly").select_related("author"),
    lambda: Book.objects.using("readonly").select_related(),
    lambda: Review.objects.using("readonly").select_related("book__author"),
    lambda: Review.objects.using("readonly").select_related("book"),
], ids=["fk", "all", "nested", "one-level"])
def test_select_related_aget_takes_the_fast_lane_with_djangos_answer(make: Callable[[], Any]) -> None:
    model = make().model
    ids = list(model.objects.using("default").order_by("pk").values_list("pk", flat=True)[:5])
    calls = [(lambda pk=pk: make().get(pk=pk), lambda pk=pk: make().aget(pk=pk)) for pk in ids]
    calls += [(lambda: _exc(lambda: make().get(pk=-1)), lambda: _aexc(make().aget(pk=-1)))]
    before = fastlane.stats()
    in_order(calls)
    after = fastlane.stats()
    assert after["hits"] - before["hits"] == len(ids)  # the first call teaches the shape
    assert after["direct"] - before["direct"] == len(ids)


def test_select_related_shapes_do_not_mix() -> None:
    pk = pks()[3]
    readonly = Book.objects.using("readonly")
    plain = (lambda: readonly.get(pk=pk), lambda: readonly.aget(pk=pk))
    related = (lambda: readonly.select_related("author").get(pk=pk),
               lambda: readonly.select_related("author").aget(pk=pk))
    shapes_in_both_orders(plain, related)

    async def cached() -> list[bool]:
        book = await readonly.select_related("author").aget(pk=pk)
        other = await readonly.aget(pk=pk)
        return [Book.author.is_cached(book), Book.author.is_cached(other)]

    assert arun(cached()) == [True, False]

"""Generated querysets: the async path gives Django's answer, whatever the order.

For each seed, a few hundred random querysets over the test schema (every field
type, foreign keys both ways, many-to-many, custom QuerySet classes, ``extra()``,
slicing, ``values()``, ``select_related``, prefetches on another alias ...) each
end in a random read (``aget`` with values of every type, ``afirst``, ``acount``,
``aexists``, ``async for``, ``aiterator``, ``ain_bulk``, ``aaggregate``). Every
one runs through Django's sync ORM and through the async path: with the fast
lane on (its cache warmed in one random order, then hit in another) and off.
Results are compared as (type, value) trees, exceptions by type and message.

This is the regression net of the fast lane and of the bridge: a shape the fast
lane would answer differently from Django shows here as a mismatch.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest
from django.conf import settings
from django.db.models import Avg, Count, Max, Prefetch, Sum
from django.test import override_settings

from django_readonly_pool import compiled, fastlane
from tests.conftest import arun, djangos_compiler
from tests.test_equivalence import norm
from tests.testapp.models import Author, Book, Review, Tag

pytestmark = pytest.mark.usefixtures("seeded", "db_access")

SEEDS = [20261201, 7, 4711]
PER_SEED = 300
ALIAS = "readonly"


@dataclass
class Spec:
    model: type[Any]
    manager: str
    steps: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = field(default_factory=list)
    terminal: tuple[str, tuple[Any, ...], dict[str, Any]] = ("list", (), {})

    def queryset(self) -> Any:
        qs = getattr(self.model, self.manager).using(ALIAS)
        for name, args, kwargs in self.steps:
            qs = qs[args[0]:args[1]] if name == "slice" else getattr(qs, name)(*args, **kwargs)
        return qs

    def __repr__(self) -> str:
        steps = "".join(f".{n}{a!r}{kw!r}" for n, a, kw in self.steps)
        return f"{self.model.__name__}.{self.manager}{steps} -> {self.terminal}"


class Values:
    """Values of the seed data, and values around and beyond them."""

    def __init__(self) -> None:
        db = "default"
        self.book = list(Book.objects.using(db).order_by("pk"))
        self.author = list(Author.objects.using(db).order_by("pk"))
        self.review_pks = list(Review.objects.using(db).order_by("pk").values_list("pk", flat=True))
        self.tags = list(Tag.objects.using(db).order_by("pk"))

    def int_like(self, rng: random.Random, real: list[int]) -> Any:
        pick = rng.random()
        if pick < 0.55:
            return rng.choice(real)
        return rng.choice([
            max(real) + 1000, -1, 0, 2**63, -(2**63) - 1, 2**31, str(rng.choice(real)),
            "99999999999999999999", "abc", 1e20, float(rng.choice(real)), rng.choice(real) + 0.5,
            Decimal(rng.choice(real)), True, " 7 ",
        ])


def _book_lookup(rng: random.Random, v: Values) -> dict[str, Any]:
    book = rng.choice(v.book)
    choices: list[tuple[str, Any]] = [
        ("pk", v.int_like(rng, [b.pk for b in v.book])),
        ("id__exact", v.int_like(rng, [b.pk for b in v.book])),
        ("isbn", v.int_like(rng, [b.isbn for b in v.book])),
        ("title", rng.choice([book.title, "nope", book.title.upper()])),
        ("genre", rng.choice(["novel", "essay", "poetry", "drama"])),
        ("in_print", rng.choice([True, False])),
        ("author_id", v.int_like(rng, [a.pk for a in v.author])),
        ("pages", v.int_like(rng, [b.pages for b in v.book])),
        ("price", rng.choice([book.price, Decimal("0.00"), str(book.price), float(book.price)])),
        ("published", rng.choice([book.published, book.published.replace(tzinfo=dt.UTC)])),
        ("rating", rng.choice([book.rating, 1.5, None])),
        ("author", rng.choice([a.pk for a in v.author])),
        ("author__name", rng.choice(v.author).name),
        ("pages__gt", rng.randint(0, 2000)),
        ("pk__in", rng.sample([b.pk for b in v.book], 3)),
        ("rating__isnull", rng.choice([True, False])),
        ("title__icontains", rng.choice(["book 0", "%", "_", "BOOK"])),
        ("tags__name", rng.choice(v.tags).name),
        ("reviews__stars__gte", rng.randint(1, 5)),
    ]
    return dict(rng.sample(choices, rng.choice([1, 1, 1, 2, 2, 3])))


def _author_lookup(rng: random.Random, v: Values) -> dict[str, Any]:
    author = rng.choice(v.author)
    choices: list[tuple[str, Any]] = [
        ("pk", v.int_like(rng, [a.pk for a in v.author])),
        ("uuid", rng.choice([author.uuid, str(author.uuid), "not-a-uuid"])),
        ("name", rng.choice([author.name, "nobody"])),
        ("born", author.born),
        ("ip", rng.choice([author.ip, "10.0.1.3", "::1"])),
        ("books__genre", rng.choice(["novel", "essay"])),
    ]
    return dict(rng.sample(choices, rng.choice([1, 1, 2])))


def _review_lookup(rng: random.Random, v: Values) -> dict[str, Any]:
    choices: list[tuple[str, Any]] = [
        ("pk", v.int_like(rng, v.review_pks)),
        ("stars", v.int_like(rng, [1, 2, 3, 4, 5])),
        ("book_id", v.int_like(rng, [b.pk for b in v.book])),
        ("book__genre", "poetry"),
    ]
    return dict(rng.sample(choices, rng.choice([1, 1, 2])))


def _tag_lookup(rng: random.Random, v: Values) -> dict[str, Any]:
    return {rng.choice(["pk", "name"]): rng.choice([t.pk for t in v.tags] + [t.name for t in v.tags] + [-3])}


LOOKUPS = {Book: _book_lookup, Author: _author_lookup, Review: _review_lookup, Tag: _tag_lookup}
ORDERING = {Book: ["title", "-price", "published", "pages", "author__name", "rating"], Author: ["name", "-born"],
            Review: ["-stars", "created", "book__title"], Tag: ["-name"]}
RELATED = {Book: ["author"], Review: ["book", "book__author"], Author: [], Tag: []}
PREFETCH = {Book: ["tags", "reviews"], Author: ["books"], Review: ["book__tags"], Tag: ["books"]}
VALUES = {Book: ["title", "price", "published", "data", "keywords", "author__name"], Author: ["name", "uuid", "meta"],
          Review: ["stars", "body", "book__title"], Tag: ["name"]}


def _step(rng: random.Random, model: type[Any], v: Values) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
    kind = rng.choice(["filter", "filter", "exclude", "order_by", "select_related", "prefetch_related",
                       "prefetch_other_alias", "only", "defer", "distinct", "extra_tables", "extra_where",
                       "extra_select", "annotate", "values", "values_list", "slice", "all", "reverse"])
    if kind in ("filter", "exclude"):
        return kind, (), LOOKUPS[model](rng, v)
    if kind == "order_by":
        return kind, (rng.choice(ORDERING[model]), "pk"), {}  # pk last: no ties between the two runs
    if kind == "select_related":
        return kind, tuple(rng.sample(RELATED[model], min(len(RELATED[model]), 1))), {}
    if kind == "prefetch_related":
        return kind, (rng.choice(PREFETCH[model]),), {}
    if kind == "prefetch_other_alias":
        target = {Book: ("reviews", Review), Author: ("books", Book), Review: ("book", Book), Tag: ("books", Book)}
        name, related = target[model]
        return "prefetch_related", (Prefetch(name, queryset=related.objects.using("default")),), {}
    if kind == "only":
        return kind, (rng.choice(VALUES[model][:2]),), {}
    if kind == "defer":
        return kind, (rng.choice(VALUES[model][:2]),), {}
    if kind == "extra_tables":
        return "extra", (), {"tables": ["testapp_tag"]}
    if kind == "extra_where":
        return "extra", (), {"where": [f"{model._meta.db_table}.id > %s"], "params": [rng.randint(0, 40)]}
    if kind == "extra_select":
        return "extra", (), {"select": {"one": "1"}}
    if kind == "annotate":
        counted = {Book: "reviews", Author: "books", Review: "book__tags", Tag: "books"}[model]
        return kind, (), {"n": Count(counted)}
    if kind == "values":
        return kind, tuple(rng.sample(VALUES[model], min(2, len(VALUES[model])))), {}
    if kind == "values_list":
        return kind, tuple(rng.sample(VALUES[model], 1)), {"flat": rng.choice([True, False])}
    if kind == "slice":
        start = rng.randint(0, 5)
        return kind, (start, start + rng.randint(1, 30)), {}
    return kind, (), {}


def _terminal(rng: random.Random, model: type[Any], v: Values) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
    kind = rng.choice(["get", "get", "get", "get", "first", "count", "exists", "list", "list", "iterator",
                       "in_bulk", "aggregate", "last"])
    if kind == "get":
        kwargs = LOOKUPS[model](rng, v)
        if rng.random() < 0.6:  # mostly what web code writes: one or two exact columns
            exact = {k: val for k, val in kwargs.items() if "__" not in k or k.endswith("__exact")}
            kwargs = exact or {"pk": v.int_like(rng, [1, 2, 3])}
        return kind, (), kwargs
    if kind == "iterator":
        return kind, (rng.choice([1, 2, 7, 100]), rng.choice([1, 3, 1000])), {}
    if kind == "in_bulk":
        ids = {Book: [b.pk for b in v.book], Author: [a.pk for a in v.author], Review: v.review_pks,
               Tag: [t.pk for t in v.tags]}[model]
        return kind, (rng.sample(ids, 3),), {}
    if kind == "aggregate":
        return kind, (), {"n": Count("pk"), "m": Max("pk"),
                          **({"s": Sum("pages"), "a": Avg("price")} if model is Book else {})}
    return kind, (), {}


def generate(seed: int, v: Values) -> list[Spec]:
    rng = random.Random(seed)
    specs = []
    for _ in range(PER_SEED):
        model = rng.choice([Book, Book, Book, Author, Review, Tag])
        manager = rng.choice(["objects", "objects", "in_print_only", "shelf"]) if model is Book else "objects"
        steps = []
        for _ in range(rng.choice([0, 0, 0, 0, 1, 1, 2, 3])):
            steps.append(_step(rng, model, v))
            if steps[-1][0] == "annotate":  # GROUP BY drops Meta.ordering: no order to compare
                steps.append(("order_by", ("pk",), {}))
        specs.append(Spec(model, manager, steps, _terminal(rng, model, v)))
    return specs


def run_sync(spec: Spec) -> Any:
    try:
        qs = spec.queryset()
        name, args, kwargs = spec.terminal
        if name == "list":
            return norm(list(qs))
        if name == "iterator":
            chunk, take = args
            out = []
            for item in qs.iterator(chunk_size=chunk):
                out.append(item)
                if len(out) >= take:
                    break
            return norm(out)
        return norm(getattr(qs, name)(*args, **kwargs))
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


async def run_async(spec: Spec) -> Any:
    try:
        qs = spec.queryset()
        name, args, kwargs = spec.terminal
        if name == "list":
            return norm([item async for item in qs])
        if name == "iterator":
            chunk, take = args
            out = []
            stream = qs.aiterator(chunk_size=chunk)
            try:
                async for item in stream:
                    out.append(item)
                    if len(out) >= take:
                        break
            finally:
                await stream.aclose()
            return norm(out)
        return norm(await getattr(qs, "a" + name)(*args, **kwargs))
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


def _async_pass(specs: list[Spec]) -> list[Any]:
    async def main() -> list[Any]:
        return [await run_async(spec) for spec in specs]

    return arun(main())


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_generated_querysets_give_djangos_answer(seed: int) -> None:
    values = Values()
    specs = generate(seed, values)
    with djangos_compiler():
        expected = {id(spec): run_sync(spec) for spec in specs}
    rng = random.Random(seed + 1)
    mismatches: list[str] = []

    def check(label: str, order: list[Spec]) -> None:
        for spec, got in zip(order, _async_pass(order), strict=True):
            if got != expected[id(spec)]:
                mismatches.append(f"[{label}] {spec!r}\n  sync:  {expected[id(spec)]!r:.400}\n  async: {got!r:.400}")

    with override_settings(READONLY_POOL={**settings.READONLY_POOL, "FAST_LANE": True}):
        fastlane.clear()
        before, shapes_before = fastlane.stats(), compiled.stats()
        check("fast lane, cold cache", rng.sample(specs, len(specs)))
        check("fast lane, warm cache", rng.sample(specs, len(specs)))
        check("fast lane, warm cache again", rng.sample(specs, len(specs)))
        after, shapes_after = fastlane.stats(), compiled.stats()
    with override_settings(READONLY_POOL={**settings.READONLY_POOL, "FAST_LANE": False}):
        check("no fast lane", rng.sample(specs, len(specs)))
    assert not mismatches, f"{len(mismatches)} mismatches:\n" + "\n".join(mismatches[:20])
    # The net catches the fast lane at work, not only Django's path.
    assert after["hits"] - before["hits"] >= 20, after
    assert after["ineligible"] - before["ineligible"] >= 20, after
    # ... querysets iterated straight from the event loop ...
    assert after["fetched"] - before["fetched"] >= 5, after
    # ... the filter()/values() templates: querysets built from them ...
    assert after["built_from_template"] - before["built_from_template"] >= 20, after
    # ... and the compiled-SQL cache: shapes reused, and shapes it leaves to Django.
    assert shapes_after["hits"] - shapes_before["hits"] >= 20, shapes_after
    assert shapes_after["ineligible"] - shapes_before["ineligible"] >= 5, shapes_after

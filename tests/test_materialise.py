"""Rows read on the pool become the same instances as Django's ``from_db()`` makes.

Instances built on the fast path are compared with Django's own (the sync ORM with
this package's compiler and instance building off: ``djangos_compiler()``), attribute by
attribute (the order of the instance's and of its ``_state``'s ``__dict__``
included); a model that customises anything the fast path would skip must be
built by Django (``Model.__init__`` runs, counted with ``sys.setprofile``).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.conf import settings
from django.db import models
from django.db.models import DEFERRED
from django.db.models.signals import post_init, pre_init
from django.test import override_settings

from django_readonly_pool import bridge, materialise
from tests.conftest import arun, djangos_compiler
from tests.testapp.models import Author, Book

pytestmark = pytest.mark.usefixtures("seeded", "db_access")


class BuiltBook(Book):
    """A proxy whose __init__ does something: Django must build it."""

    class Meta:
        proxy = True
        app_label = "testapp"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.built = True


class LoadedBook(Book):
    """A proxy with its own from_db."""

    class Meta:
        proxy = True
        app_label = "testapp"

    @classmethod
    def from_db(cls, db: Any, field_names: Any, values: Any, **kwargs: Any) -> Any:
        obj = super().from_db(db, field_names, values, **kwargs)
        obj.loaded = True
        return obj


class Upload(models.Model):
    """A FileField's descriptor has a __set__ of its own."""

    document = models.FileField()

    class Meta:
        managed = False
        app_label = "testapp"


class Mixin:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)


class MixedBook(Book, Mixin):
    class Meta:
        proxy = True
        app_label = "testapp"


@contextmanager
def counting_inits() -> Iterator[list[int]]:
    """How many times Model.__init__ runs in this thread (the bridge included)."""
    count = [0]
    code = models.Model.__init__.__code__
    previous = sys.getprofile()

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "call" and frame.f_code is code:
            count[0] += 1

    sys.setprofile(profile)
    try:
        yield count
    finally:
        sys.setprofile(previous)


def state(obj: models.Model) -> tuple[Any, ...]:
    d = dict(obj.__dict__)
    s = d.pop("_state")
    if "_prefetched_objects_cache" in d:
        d["_prefetched_objects_cache"] = {k: [state(x) for x in v]
                                          for k, v in d["_prefetched_objects_cache"].items()}
    state_keys = list(vars(s))  # in order, before fields_cache is read (which makes it)
    return (type(obj), list(d), d, s.db, s.adding, state_keys, dict(s.fields_cache))


async def alist(qs: Any) -> list[Any]:
    return [x async for x in qs]


def test_a_plain_model_is_built_without_init_and_equals_djangos() -> None:
    with djangos_compiler():
        sync = list(Book.objects.using("readonly").order_by("pk"))
    with counting_inits() as inits:
        ours = arun(alist(Book.objects.using("readonly").order_by("pk")))
    assert inits[0] == 0 and ours
    assert [state(o) for o in ours] == [state(o) for o in sync]
    assert materialise.plain(Book)


def test_plain_reads_of_every_kind_equal_djangos() -> None:
    reads = [
        lambda a: Author.objects.using(a).order_by("pk"),
        lambda a: Book.objects.using(a).select_related("author").order_by("-pk")[:5],
        lambda a: Book.objects.using(a).prefetch_related("tags").order_by("pk")[:5],
        lambda a: Book.objects.using(a).annotate(n=models.Count("tags")).order_by("pk")[:5],
    ]
    for read in reads:
        with djangos_compiler():
            sync = list(read("readonly"))
        ours = arun(alist(read("readonly")))
        assert [state(o) for o in ours] == [state(o) for o in sync]
        for a, b in zip(ours, sync, strict=True):
            related = [(k, state(v)) for k, v in a._state.fields_cache.items()]
            assert related == [(k, state(v)) for k, v in b._state.fields_cache.items()]


@pytest.mark.parametrize("model", [BuiltBook, LoadedBook, MixedBook])
def test_a_model_that_customises_construction_is_built_by_django(model: type[Book]) -> None:
    with djangos_compiler():
        sync = list(model.objects.using("readonly").order_by("pk")[:3])
    with counting_inits() as inits:
        ours = arun(alist(model.objects.using("readonly").order_by("pk")[:3]))
    assert inits[0] >= 3
    assert [state(o) for o in ours] == [state(o) for o in sync]
    assert not materialise.plain(model)


def test_a_field_with_its_own_descriptor_is_not_plain() -> None:
    assert not materialise.plain(Upload)


@pytest.mark.parametrize("signal", [pre_init, post_init])
def test_a_receiver_connected_at_run_time_is_honoured(signal: Any) -> None:
    arun(alist(Book.objects.using("readonly")[:2]))  # the plan is cached: receivers still count
    seen: list[Any] = []

    def receiver(sender: Any, **kwargs: Any) -> None:
        seen.append(sender)

    signal.connect(receiver, sender=Book)
    try:
        ours = arun(alist(Book.objects.using("readonly").order_by("pk")[:3]))
    finally:
        signal.disconnect(receiver, sender=Book)
    assert seen == [Book] * 3 and len(ours) == 3
    unrelated: list[Any] = []

    def other(sender: Any, **kwargs: Any) -> None:
        unrelated.append(sender)

    signal.connect(other, sender=Author)
    try:
        with counting_inits() as inits:
            arun(alist(Book.objects.using("readonly")[:3]))
    finally:
        signal.disconnect(other, sender=Author)
    assert inits[0] == 0 and unrelated == []  # a receiver for another model does not count


def test_deferred_fields_are_built_by_django() -> None:
    with djangos_compiler():
        sync = list(Book.objects.using("readonly").only("title").order_by("pk")[:3])
    with counting_inits() as inits:
        ours = arun(alist(Book.objects.using("readonly").only("title").order_by("pk")[:3]))
    assert inits[0] == 3
    assert [state(o) for o in ours] == [state(o) for o in sync]


def test_off_with_the_fast_lane_and_on_other_aliases() -> None:
    with override_settings(READONLY_POOL={**settings.READONLY_POOL, "FAST_LANE": False}):
        assert not materialise.installed()
        with counting_inits() as inits:
            arun(alist(Book.objects.using("readonly")[:3]))
        assert inits[0] == 3
    assert materialise.installed()
    with counting_inits() as inits:
        list(Book.objects.using("default")[:3])  # the primary: Django's from_db
    assert inits[0] == 3
    with counting_inits() as inits:
        sync = list(Book.objects.using("readonly").order_by("pk")[:3])  # a sync read on the pool alias
    assert inits[0] == 0
    with djangos_compiler():
        assert [state(o) for o in sync] == [state(o) for o in Book.objects.using("readonly").order_by("pk")[:3]]


class _Uncomparable:
    """A converted value whose == raises (numpy arrays do, compared with an object)."""

    def __eq__(self, other: object) -> bool:
        raise ValueError("the truth value is ambiguous")

    __hash__ = object.__hash__


def test_a_value_whose_eq_raises_is_never_compared() -> None:
    names = [f.attname for f in Author._meta.concrete_fields]
    odd = _Uncomparable()
    values = [1, odd, *([None] * (len(names) - 2))]

    async def main() -> Any:
        return await bridge.call_in_bridge(lambda: Author.from_db("readonly", names, values), (), {})

    with counting_inits() as inits:
        obj = arun(main())
    assert inits == [0]  # DEFERRED is looked for by identity, as Model.__init__ does
    assert obj.name is odd and obj._state.db == "readonly" and obj._state.adding is False
    with djangos_compiler():
        assert state(obj) == state(Author.from_db("readonly", names, values))


def test_a_deferred_value_is_built_by_django() -> None:
    names = [f.attname for f in Author._meta.concrete_fields]
    values = [1, "Ann", DEFERRED, *([None] * (len(names) - 3))]

    async def main() -> Any:
        return await bridge.call_in_bridge(lambda: Author.from_db("readonly", names, values), (), {})

    with counting_inits() as inits:
        obj = arun(main())
    assert inits == [1]  # Django's from_db(), through Model.__init__
    assert obj.get_deferred_fields() == {names[2]}
    with djangos_compiler():
        assert state(obj) == state(Author.from_db("readonly", names, values))

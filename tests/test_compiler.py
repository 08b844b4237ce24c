"""The backend's compiler: JSON decoded as the field decodes it, every kind of text."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from django.db import connections
from django.db.models import JSONField
from django.db.models.expressions import RawSQL
from django.test import override_settings

from django_readonly_pool import compiled
from django_readonly_pool.backend import compiler
from tests.conftest import arun, djangos_compiler
from tests.testapp.models import Author, Book

pytestmark = pytest.mark.usefixtures("seeded", "db_access")

VALID = [
    '{"a": [1, 2.5, null, true, false], "b": {"c": "d"}}',
    '"just a string"', "123456789012345678901234567890", "1e400", "-0.0", "[]", "{}", "null",
    '"\\u00e9\\ud83d\\ude00 \\" \\\\ /"', "[" * 300 + "]" * 300,
    '{"a": 1, "a": 2}',  # as text: the last key wins, as in json.loads
    '  {"leading": "space"}', '{"trailing": "space"}  ',
]
TEXTS = {"jsonb": VALID, "text": [*VALID, '\ufeff{"bom": 1}', "not json", "nullx", "", '{"unterminated": ']}


class Decoder(json.JSONDecoder):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(object_hook=lambda d: {"decoded": d}, **kwargs)


@pytest.fixture(autouse=True)
def _fast_lane_on() -> Iterator[None]:
    with override_settings(READONLY_POOL={**settings.READONLY_POOL, "FAST_LANE": True}):
        yield


def typed(value: Any) -> Any:
    """The value with every type spelled out (1 and 1.0 and True differ)."""
    if isinstance(value, dict):
        return {k: typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [typed(v) for v in value]
    return (type(value).__name__, repr(value))


def rows(alias: str, field: JSONField[Any], cast: str) -> Any:
    qs = Author.objects.using(alias).order_by("pk")[:1]
    annotations = {f"j{n}": RawSQL(f"%s::{cast}", (text,), output_field=field) for n, text in enumerate(TEXTS[cast])}
    return qs.annotate(**annotations).values(*annotations)


@pytest.mark.parametrize("cast", ["jsonb", "text"])
@pytest.mark.parametrize("decoder", [None, Decoder], ids=["plain", "custom-decoder"])
def test_json_values_are_the_fields_own(cast: str, decoder: Any) -> None:
    field: JSONField[Any] = JSONField(decoder=decoder)
    with djangos_compiler():
        expected = typed(list(rows("readonly", field, cast)))

    async def main() -> Any:
        return [x async for x in rows("readonly", field, cast)]

    assert typed(arun(main())) == expected


def test_json_columns_and_key_transforms() -> None:
    def read() -> Any:
        return (list(Book.objects.using("readonly").order_by("pk").values_list("data", flat=True)),
                list(Author.objects.using("readonly").order_by("pk").values_list("meta__nested", "meta__rank")))

    with djangos_compiler():
        expected = typed(read())

    async def main() -> Any:
        books = [x async for x in Book.objects.using("readonly").order_by("pk").values_list("data", flat=True)]
        authors = [x async for x in Author.objects.using("readonly").order_by("pk").values_list(
            "meta__nested", "meta__rank")]
        return books, authors

    assert typed(arun(main())) == expected
    assert typed(read()) == expected  # the sync ORM on the pool alias too


def test_the_fast_decoder_is_used_only_for_a_plain_json_field() -> None:
    connection = connections["readonly"]
    query = Book.objects.using("readonly").values("data").query
    with override_settings(READONLY_POOL={**settings.READONLY_POOL, "FAST_LANE": False}):
        assert not compiled.installed()
        plain = query.get_compiler(connection=connection)
        plain.setup_query()
        off = plain.get_converters([s[0] for s in plain.select])
    on_compiler = query.get_compiler(connection=connection)
    on_compiler.setup_query()
    on = on_compiler.get_converters([s[0] for s in on_compiler.select])
    (functions_off, _), = off.values()
    (functions_on, _), = on.values()
    assert [getattr(f, "__func__", None) for f in functions_off] == [JSONField.from_db_value]
    assert [f.__qualname__ for f in functions_on] == ["_fast_json.<locals>.convert"]
    custom = JSONField(decoder=Decoder)
    assert compiler._json_converter(custom.from_db_value) == custom.from_db_value


def test_a_model_fields_fast_decoder_is_built_once_an_expressions_is_not_kept() -> None:
    field = Book._meta.get_field("data")
    first = compiler._json_converter(field.from_db_value)
    assert compiler._json_converter(field.from_db_value) is first  # per field, not per query
    assert first('{"a": [1, 2]}', None, None) == {"a": [1, 2]}
    kept = len(compiler._fast_converters)
    loose: JSONField[Any] = JSONField()  # Cast(..., output_field=JSONField()): one per query
    assert compiler._json_converter(loose.from_db_value)("[1]", None, None) == [1]
    assert len(compiler._fast_converters) == kept

"""The project's pytest-django tests (django_db without transaction=True), sync and async."""

import pytest
from sample.models import Item


@pytest.fixture
def setup_item(db: None) -> Item:
    return Item.objects.create(name="fixture")


@pytest.mark.django_db
def test_sync_read_sees_fixture_data(setup_item: Item) -> None:
    assert Item.objects.get(name="fixture").pk == setup_item.pk
    assert Item.objects.count() == 1


@pytest.mark.django_db
def test_sync_write_then_read() -> None:
    Item.objects.create(name="sync")
    assert list(Item.objects.values_list("name", flat=True)) == ["sync"]


@pytest.mark.django_db
@pytest.mark.asyncio
async def test_async_write_then_read() -> None:
    # pytest-django runs async ORM calls on asgiref's executor thread, as
    # without this package: the same behaviour, routed through the router.
    await Item.objects.acreate(name="async")
    assert (await Item.objects.aget(name="async")).name == "async"
    assert await Item.objects.filter(name="async").aexists()

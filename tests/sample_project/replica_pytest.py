"""The pytest form: the readonly_pool_replica marker and fixture (run explicitly)."""

from typing import Any

import pytest
from sample.models import Item


@pytest.mark.readonly_pool_replica
def test_sync_reads_from_the_replica(readonly_pool_replica: Any) -> None:
    Item.objects.create(name="committed")
    readonly_pool_replica.wait_for_replay()
    assert Item.objects.get(name="committed")._state.db == "readonly"


@pytest.mark.readonly_pool_replica
@pytest.mark.asyncio
async def test_async_reads_from_the_replica(readonly_pool_replica: Any) -> None:
    await Item.objects.acreate(name="async-committed")
    await readonly_pool_replica.await_replay()
    item = await Item.objects.aget(name="async-committed")
    assert item._state.db == "readonly"

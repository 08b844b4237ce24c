"""Tests that read from the real replica (run explicitly: they need committed writes)."""

from django.test import TransactionTestCase

from django_readonly_pool.testing import replica_reads
from sample.models import Item


class ReplicaReadTests(TransactionTestCase):
    databases = "__all__"

    def test_sync_reads_from_the_replica(self) -> None:
        with replica_reads() as replica:
            Item.objects.create(name="committed")
            replica.wait_for_replay()
            item = Item.objects.get(name="committed")
            self.assertEqual(item._state.db, "readonly")

    async def test_async_reads_from_the_replica_through_the_pool(self) -> None:
        with replica_reads() as replica:
            await Item.objects.acreate(name="async-committed")
            await replica.await_replay()
            item = await Item.objects.aget(name="async-committed")
            self.assertEqual(item._state.db, "readonly")
            self.assertEqual([i.name async for i in Item.objects.all()], ["async-committed"])

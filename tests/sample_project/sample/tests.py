"""The project's own Django tests: plain TestCase, sync and async, no changes for the router."""

from django.db import router
from django.test import TestCase

from sample.models import Item


class ItemTests(TestCase):
    @classmethod
    def setUpTestData(cls) -> None:
        Item.objects.create(name="from-setup")

    def test_reads_are_routed_to_the_read_only_alias(self) -> None:
        self.assertIn(router.db_for_read(Item), {"readonly", "default"})

    def test_sync_read_sees_setup_data(self) -> None:
        self.assertEqual(Item.objects.get(name="from-setup").name, "from-setup")
        self.assertEqual(Item.objects.count(), 1)

    def test_sync_write_then_read(self) -> None:
        Item.objects.create(name="sync")
        self.assertEqual([i.name for i in Item.objects.all()], ["from-setup", "sync"])

    async def test_async_read_sees_setup_data(self) -> None:
        item = await Item.objects.aget(name="from-setup")
        self.assertEqual(item.name, "from-setup")
        self.assertEqual(await Item.objects.acount(), 1)
        self.assertEqual([i.name async for i in Item.objects.all()], ["from-setup"])

    async def test_async_write_then_read(self) -> None:
        await Item.objects.acreate(name="async")
        self.assertTrue(await Item.objects.filter(name="async").aexists())
        self.assertEqual(await Item.objects.acount(), 2)

"""Unmanaged models over the benchmark tables (created by the harness in SQL)."""

from django.db import models


class ItemColumns(models.Model):
    """The columns of ``bench_item`` (and of the ``bench_item_slow`` view over it)."""

    name = models.CharField(max_length=50)
    price = models.DecimalField(max_digits=10, decimal_places=2)
    created = models.DateTimeField()
    data = models.JSONField()

    class Meta:
        abstract = True


class Item(ItemColumns):
    class Meta:
        managed = False
        db_table = "bench_item"
        app_label = "benchapp"


class SlowItem(ItemColumns):
    """bench_item through a view that makes every row cost 2 ms on the server."""

    class Meta:
        managed = False
        db_table = "bench_item_slow"
        app_label = "benchapp"

"""django-async-backend's models over the benchmark tables (Python 3.12+, Django 6.1)."""

from django.db import models
from django_async_backend.db.models.base import AsyncModelMixin


class DabColumns(AsyncModelMixin, models.Model):
    """The columns of ``bench_item``, as benchmarks.benchapp declares them."""

    name = models.CharField(max_length=50)
    price = models.DecimalField(max_digits=10, decimal_places=2)
    created = models.DateTimeField()
    data = models.JSONField()

    class Meta:
        abstract = True


class DabItem(DabColumns):
    class Meta:
        managed = False
        db_table = "bench_item"
        app_label = "dabapp"


class DabSlowItem(DabColumns):
    class Meta:
        managed = False
        db_table = "bench_item_slow"
        app_label = "dabapp"

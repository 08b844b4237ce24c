"""django-async-backend's models over the benchmark tables (Python 3.12+, Django 6.1).

``async_objects`` is django-async-backend's manager; ``turbo`` is django-turbo-orm's.
"""

from django.db import models
from django_async_backend.db.models.base import AsyncModelMixin
from turbo_orm import AsyncManager


class DabColumns(AsyncModelMixin, models.Model):
    """The columns of ``bench_item``, as benchmarks.benchapp declares them."""

    name = models.CharField(max_length=50)
    price = models.DecimalField(max_digits=10, decimal_places=2)
    created = models.DateTimeField()
    data = models.JSONField()

    objects = models.Manager()
    turbo = AsyncManager()

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



class DabAuthorColumns(AsyncModelMixin, models.Model):
    name = models.CharField(max_length=50)

    objects = models.Manager()
    turbo = AsyncManager()

    class Meta:
        abstract = True


class DabBookColumns(AsyncModelMixin, models.Model):
    """``bench_book`` but its foreign key (declared where its target is)."""

    title = models.CharField(max_length=80)
    price = models.DecimalField(max_digits=10, decimal_places=2)
    published = models.DateField()

    objects = models.Manager()
    turbo = AsyncManager()

    class Meta:
        abstract = True


class DabAuthor(DabAuthorColumns):
    class Meta:
        managed = False
        db_table = "bench_author"
        app_label = "dabapp"


class DabBook(DabBookColumns):
    author = models.ForeignKey(DabAuthor, models.DO_NOTHING, related_name="books")

    class Meta:
        managed = False
        db_table = "bench_book"
        app_label = "dabapp"


class DabSlowAuthor(DabAuthorColumns):
    class Meta:
        managed = False
        db_table = "bench_author_slow"
        app_label = "dabapp"


class DabSlowBook(DabBookColumns):
    author = models.ForeignKey(DabSlowAuthor, models.DO_NOTHING, related_name="books")

    class Meta:
        managed = False
        db_table = "bench_book_slow"
        app_label = "dabapp"

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



class AuthorColumns(models.Model):
    """The columns of ``bench_author``: 500 rows, each with 20 books (W7's prefetch, W3's join)."""

    name = models.CharField(max_length=50)

    class Meta:
        abstract = True


class BookColumns(models.Model):
    """The columns of ``bench_book`` but its foreign key (declared where its target is)."""

    title = models.CharField(max_length=80)
    price = models.DecimalField(max_digits=10, decimal_places=2)
    published = models.DateField()

    class Meta:
        abstract = True


class Author(AuthorColumns):
    class Meta:
        managed = False
        db_table = "bench_author"
        app_label = "benchapp"


class Book(BookColumns):
    author = models.ForeignKey(Author, models.DO_NOTHING, related_name="books")

    class Meta:
        managed = False
        db_table = "bench_book"
        app_label = "benchapp"


class SlowAuthor(AuthorColumns):
    class Meta:
        managed = False
        db_table = "bench_author_slow"
        app_label = "benchapp"


class SlowBook(BookColumns):
    author = models.ForeignKey(SlowAuthor, models.DO_NOTHING, related_name="books")

    class Meta:
        managed = False
        db_table = "bench_book_slow"
        app_label = "benchapp"

"""Models covering the types the async path must return exactly like Django's sync ORM."""

import uuid
from typing import Any

from django.contrib.postgres.fields import ArrayField, DateTimeRangeField, IntegerRangeField
from django.db import models


class Author(models.Model):
    name = models.CharField(max_length=100)
    uuid = models.UUIDField(default=uuid.uuid4, unique=True)
    born = models.DateField(null=True)
    ip = models.GenericIPAddressField(null=True)
    meta = models.JSONField(default=dict)

    class Meta:
        ordering = ["pk"]

    def __str__(self) -> str:
        return self.name


class Tag(models.Model):
    name = models.CharField(max_length=50, unique=True)

    class Meta:
        ordering = ["name"]


class InPrintQuerySet(models.QuerySet["Book"]):
    """Overrides filter(): only books in print. The fast lane must leave it to Django."""

    def filter(self, *args: Any, **kwargs: Any) -> "InPrintQuerySet":
        return super().filter(models.Q(*args, **kwargs), in_print=True)


class ShelfQuerySet(models.QuerySet["Book"]):
    """Adds a method and overrides nothing: the fast lane may take it."""

    def novels(self) -> "ShelfQuerySet":
        return self.filter(genre="novel")


class Book(models.Model):
    class Genre(models.TextChoices):
        NOVEL = "novel"
        ESSAY = "essay"
        POETRY = "poetry"

    author = models.ForeignKey(Author, related_name="books", on_delete=models.CASCADE)
    title = models.CharField(max_length=200)
    genre = models.CharField(max_length=10, choices=Genre.choices, default=Genre.NOVEL)
    price = models.DecimalField(max_digits=10, decimal_places=2)
    published = models.DateTimeField()
    pages = models.IntegerField()
    rating = models.FloatField(null=True)
    in_print = models.BooleanField(default=True)
    tags = models.ManyToManyField(Tag, related_name="books")
    data = models.JSONField(null=True)
    keywords = ArrayField(models.CharField(max_length=30), default=list)
    sales = IntegerRangeField(null=True)
    available = DateTimeRangeField(null=True)
    reading_time = models.DurationField(null=True)
    cover = models.BinaryField(null=True)
    starts_at = models.TimeField(null=True)
    isbn = models.BigIntegerField(unique=True)

    objects = models.Manager()
    in_print_only = InPrintQuerySet.as_manager()
    shelf = ShelfQuerySet.as_manager()

    class Meta:
        ordering = ["pk"]


class Review(models.Model):
    book = models.ForeignKey(Book, related_name="reviews", on_delete=models.CASCADE)
    stars = models.SmallIntegerField()
    body = models.TextField()
    created = models.DateTimeField()

    class Meta:
        ordering = ["pk"]


class Note(models.Model):
    """Written by the tests (routing, read-your-writes); the others are read-only seed data."""

    text = models.CharField(max_length=200)
    counter = models.IntegerField(default=0)
    created = models.DateTimeField(auto_now_add=True)

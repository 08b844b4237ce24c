"""Seed the example's tables (idempotent)."""

import datetime as dt
import random
from decimal import Decimal
from typing import Any

from django.core.management.base import BaseCommand

from example_project.library.models import Author, Book, Review


class Command(BaseCommand):
    help = "Create authors, books and reviews for the example (skipped if there are books)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--books", type=int, default=500)

    def handle(self, *args: Any, **options: Any) -> None:
        if Book.objects.exists():
            self.stdout.write("library already seeded")
            return
        rng = random.Random(42)
        authors = Author.objects.bulk_create(Author(name=f"Author {i}") for i in range(50))
        start = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
        books = Book.objects.bulk_create(
            Book(author=rng.choice(authors), title=f"Book {i}", price=Decimal(rng.randint(100, 9999)) / 100,
                 published=start + dt.timedelta(days=i * 7))
            for i in range(options["books"])
        )
        Review.objects.bulk_create(
            Review(book=rng.choice(books), stars=rng.randint(1, 5), body="seeded") for _ in range(options["books"] * 4)
        )
        self.stdout.write(self.style.SUCCESS(f"seeded {len(authors)} authors, {len(books)} books"))

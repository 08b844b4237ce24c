"""Async reads through the pool, a write with read-your-writes, a sync view."""

from __future__ import annotations

import json
from typing import Any

from django.db.models import Avg, Count
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed, JsonResponse

import django_readonly_pool
from example_project.library.models import Author, Book, Review

INDEX = """<!doctype html><title>django-readonly-pool example</title>
<h1>django-readonly-pool example</h1>
<p>Reads go to the replica through the pre-warmed async pool; writes go to the primary.</p>
<ul>
<li><a href="/books/">/books/</a>: async list (select_related), read through the pool</li>
<li><a href="/books/1/">/books/1/</a>: async detail (prefetch_related)</li>
<li>POST /books/1/reviews/ <code>{"stars": 5}</code>: a write, then a read that must see it</li>
<li><a href="/sync/books/">/sync/books/</a>: a sync view (Django's sync pool)</li>
<li><a href="/stats/">/stats/</a>: several ORM calls in one django_readonly_pool.run()</li>
<li><a href="/health/">/health/</a> and <a href="/metrics">/metrics</a></li>
</ul>"""


def index(request: HttpRequest) -> HttpResponse:
    return HttpResponse(INDEX)


def _book(book: Book) -> dict[str, Any]:
    return {"id": book.pk, "title": book.title, "author": book.author.name, "price": str(book.price),
            "published": book.published.isoformat(), "read_from": book._state.db}


async def book_list(request: HttpRequest) -> JsonResponse:
    books = [_book(b) async for b in Book.objects.select_related("author").order_by("-published", "pk")[:20]]
    return JsonResponse({"books": books})


async def book_detail(request: HttpRequest, pk: int) -> JsonResponse:
    try:
        book = await Book.objects.select_related("author").prefetch_related("reviews").aget(pk=pk)
    except Book.DoesNotExist:
        raise Http404(f"no book {pk}") from None
    reviews = [{"stars": r.stars, "body": r.body} for r in book.reviews.all()]
    return JsonResponse({**_book(book), "reviews": reviews})


async def add_review(request: HttpRequest, pk: int) -> JsonResponse | HttpResponseNotAllowed:
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    try:
        data = json.loads(request.body or b"{}")
        stars, body = int(data.get("stars", 5)), str(data.get("body", ""))
    except (ValueError, TypeError, AttributeError):
        return JsonResponse({"error": 'expected a JSON object such as {"stars": 5, "body": "..."}'}, status=400)
    if not 1 <= stars <= 5:
        return JsonResponse({"error": "stars must be from 1 to 5"}, status=400)
    if not await Book.objects.using("default").filter(pk=pk).aexists():
        raise Http404(f"no book {pk}")
    review = await Review.objects.acreate(book_id=pk, stars=stars, body=body)
    # Read-your-writes: this request wrote, so its reads go to the primary.
    reviews = Review.objects.filter(book_id=pk)
    count = await reviews.acount()
    return JsonResponse({"review": review.pk, "reviews": count, "read_from": reviews.db}, status=201)


def sync_book_list(request: HttpRequest) -> JsonResponse:
    books = [_book(b) for b in Book.objects.select_related("author").order_by("-published", "pk")[:20]]
    return JsonResponse({"books": books})


def _stats() -> dict[str, Any]:
    top = (Author.objects.annotate(n=Count("books")).order_by("-n", "pk").values("name", "n")[:5])
    return {
        "authors": Author.objects.count(),
        "books": Book.objects.count(),
        "average_stars": Review.objects.aggregate(avg=Avg("stars"))["avg"],
        "top_authors": list(top),
    }


async def stats(request: HttpRequest) -> JsonResponse:
    return JsonResponse(await django_readonly_pool.run(_stats))

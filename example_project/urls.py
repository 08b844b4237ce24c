from django.urls import path

from django_readonly_pool import views as pool_views
from example_project.library import views

urlpatterns = [
    path("", views.index),
    path("books/", views.book_list),
    path("books/<int:pk>/", views.book_detail),
    path("books/<int:pk>/reviews/", views.add_review),
    path("sync/books/", views.sync_book_list),
    path("stats/", views.stats),
    path("health/", pool_views.health),
    path("metrics", pool_views.metrics),
]

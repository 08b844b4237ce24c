from django.urls import path

from benchmarks import http_views

urlpatterns = [path("bench/item/<int:pk>/", http_views.item)]

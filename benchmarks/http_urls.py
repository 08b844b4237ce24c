from django.urls import path

from benchmarks import http_views
from example_project.urls import urlpatterns as example_urlpatterns

urlpatterns = [*example_urlpatterns, path("bench/item/<int:pk>/", http_views.item)]

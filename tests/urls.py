from django.urls import path

from tests import views

urlpatterns = [
    path("notes/<int:pk>/incr", views.incr),
    path("notes/<int:pk>", views.read),
    path("notes/<int:pk>/incr-and-read", views.incr_and_read),
    path("anotes/<int:pk>/incr", views.aincr),
    path("anotes/<int:pk>", views.aread),
    path("anotes/<int:pk>/incr-and-read", views.aincr_and_read),
    path("sync-default", views.sync_read_default),
    path("async-pool", views.async_read_pool),
]

from django_readonly_pool import views as pool_views  # noqa: E402

urlpatterns += [
    path("health/", pool_views.health),
    path("metrics", pool_views.metrics),
]

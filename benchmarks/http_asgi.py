"""ASGI application of the HTTP benchmark (ours or stock, by DJANGO_SETTINGS_MODULE)."""

from django.apps import apps
from django.core.asgi import get_asgi_application

application = get_asgi_application()
if apps.is_installed("django_readonly_pool"):
    from django_readonly_pool.asgi import ReadOnlyPoolLifespan

    application = ReadOnlyPoolLifespan(application)

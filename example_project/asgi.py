"""ASGI entry point: Django, with the read pools prewarmed at startup (lifespan)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")

from django_readonly_pool.asgi import ReadOnlyPoolLifespan

application = ReadOnlyPoolLifespan(get_asgi_application())

"""Settings of the example project: every database value comes from FIDES__DATABASE__*."""

import os

from django_readonly_pool import databases_from_env

SECRET_KEY = os.environ.get("EXAMPLE_SECRET_KEY", "example-project-not-for-production")
DEBUG = os.environ.get("EXAMPLE_DEBUG", "") == "1"
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django_readonly_pool",
    "example_project.library",
]
MIDDLEWARE = ["django_readonly_pool.middleware.ReadOnlyPoolMiddleware"]
ROOT_URLCONF = "example_project.urls"
ASGI_APPLICATION = "example_project.asgi.application"

DATABASES = databases_from_env()
# The async path streams iterator() results itself; the sync path needs this
# when the read-only alias goes through PgBouncer in transaction mode.
DATABASES["readonly"]["DISABLE_SERVER_SIDE_CURSORS"] = True
DATABASE_ROUTERS = ["django_readonly_pool.router.ReadOnlyRouter"]
# The demo serves loopback: its health page shows the per-alias details to
# everyone. Leave HEALTH_DETAILS out in production (details for staff only).
READONLY_POOL = {"HEALTH_DETAILS": "always"}

USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "django_readonly_pool": {"handlers": ["console"], "level": "INFO"},
        # 4xx as warnings, 5xx as errors with their traceback (Django logs them only
        # to the console with DEBUG, and mails them otherwise).
        "django.request": {"handlers": ["console"], "level": "WARNING", "propagate": False},
    },
}

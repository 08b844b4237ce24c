"""Settings of the test suite: the FIDES__DATABASE__* variables come from the
topology that the pytest plugin started (or from the environment)."""

import os

from django_readonly_pool import databases_from_env

SECRET_KEY = "tests-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "django.contrib.postgres",
    "django_readonly_pool",
    "tests.testapp",
]
MIDDLEWARE = ["django_readonly_pool.middleware.ReadOnlyPoolMiddleware"]
# What a typical project runs (tests that need sessions, users or CSRF use it).
FULL_MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_readonly_pool.middleware.ReadOnlyPoolMiddleware",
]
ROOT_URLCONF = "tests.urls"
DATABASES = databases_from_env()

# The same replica through PgBouncer (transaction mode), when the topology has one.
_bouncer_port = os.environ.get("READONLY_POOL_TEST_PGBOUNCER_PORT")
if _bouncer_port:
    DATABASES.update(
        databases_from_env(
            {**os.environ, "FIDES__DATABASE__READONLY_PORT": _bouncer_port},
            readonly_alias="readonly_bouncer",
        )
    )
    DATABASES["readonly_bouncer"]["DISABLE_SERVER_SIDE_CURSORS"] = True

DATABASE_ROUTERS = ["django_readonly_pool.router.ReadOnlyRouter"]
READONLY_POOL = {
    # This suite tests the real replica path: no redirection to the primary
    # while Django's test runner mirrors the alias.
    "TESTS_READ_PRIMARY": False,
    "READONLY_ALIASES": ["readonly"],
}
USE_TZ = True
TIME_ZONE = "America/Chicago"  # not UTC, so time zone mistakes show
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "loggers": {"psycopg.pool": {"level": "ERROR"}},
}

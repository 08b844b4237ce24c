"""Django settings of the benchmark process (the harness exports FIDES__DATABASE__*)."""

import os

from django_readonly_pool import databases_from_env

SECRET_KEY = "benchmarks"
INSTALLED_APPS = ["django.contrib.contenttypes", "django_readonly_pool", "benchmarks.benchapp"]
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

DATABASES = databases_from_env()  # "default" (primary) and "readonly" (ours, on the replica)
_replica = {k: v for k, v in DATABASES["readonly"].items() if k not in ("ENGINE", "OPTIONS", "TEST")}
_replica["OPTIONS"] = {}
# Django's stock backend on the same replica: connection per request (CONN_MAX_AGE=0, the default) ...
DATABASES["stock"] = {**_replica, "ENGINE": "django.db.backends.postgresql", "CONN_MAX_AGE": 0}
# ... its built-in pool (OPTIONS["pool"], Django 5.1+) ...
_size = int(os.environ.get("BENCH_POOL_SIZE", "64"))
DATABASES["djpool"] = {**_replica, "ENGINE": "django.db.backends.postgresql", "CONN_MAX_AGE": 0,
                       "OPTIONS": {"pool": {"min_size": _size, "max_size": _size}}}
# ... and a persistent sync connection, the "sync ORM" baseline.
DATABASES["sync"] = {**_replica, "ENGINE": "django.db.backends.postgresql", "CONN_MAX_AGE": None}
LOGGING = {"version": 1, "disable_existing_loggers": False,
           "loggers": {"django_readonly_pool": {"level": "WARNING"}, "psycopg": {"level": "ERROR"}}}
READONLY_POOL = {"READONLY_ALIASES": ["readonly"], "TESTS_READ_PRIMARY": False}

if os.environ.get("BENCH_DAB"):
    # django-async-backend (Python 3.12+, Django 6.1) on the same replica, pooled.
    INSTALLED_APPS += ["django_async_backend", "benchmarks.dabapp"]
    DATABASES["dab"] = {**_replica, "ENGINE": "django_async_backend.db.backends.postgresql",
                        "OPTIONS": {"pool": {"min_size": _size, "max_size": _size}}}
    # django-vpg (Rust driver, deadpool): its sync backend, and its async one through
    # django-async-backend, share one pool.
    DATABASES["vpg"] = {**_replica, "ENGINE": "django_vpg.backend",
                        "OPTIONS": {"pool": {"min_size": _size, "max_size": _size}}}
DATABASE_ROUTERS = ["django_readonly_pool.router.ReadOnlyRouter"]

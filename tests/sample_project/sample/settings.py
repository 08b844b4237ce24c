"""An ordinary project's settings: the package installed the documented way."""

import os

from django_readonly_pool import databases_from_env

SECRET_KEY = "sample-project"
INSTALLED_APPS = ["django.contrib.contenttypes", "django_readonly_pool", "sample"]
MIDDLEWARE = ["django_readonly_pool.middleware.ReadOnlyPoolMiddleware"]
DATABASES = databases_from_env()
DATABASE_ROUTERS = ["django_readonly_pool.router.ReadOnlyRouter"]
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Knobs used by tests/test_sample_project.py to isolate each mechanism.
READONLY_POOL = {}
if os.environ.get("SAMPLE_NO_PINS"):
    READONLY_POOL.update(PIN_AFTER_WRITE=False, STICKY_SECONDS=0)
if os.environ.get("SAMPLE_NO_TEST_REDIRECT"):
    READONLY_POOL["TESTS_READ_PRIMARY"] = False
if os.environ.get("SAMPLE_NO_FALLBACK"):
    READONLY_POOL["FALLBACK"] = "fail"

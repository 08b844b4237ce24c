"""Stock Django: the same replica as a plain PostgreSQL alias, reads routed there."""

from django_readonly_pool import databases_from_env

SECRET_KEY = "benchmarks-stock"
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = ["django.contrib.contenttypes", "benchmarks.benchapp"]
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "benchmarks.http_urls_stock"
DATABASES = databases_from_env()
DATABASES["readonly"] = {**DATABASES["readonly"], "ENGINE": "django.db.backends.postgresql", "OPTIONS": {}}
DATABASE_ROUTERS = ["benchmarks.http_settings_stock.ReplicaRouter"]
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"


class ReplicaRouter:
    """What a project without this package writes: reads to the replica."""

    def db_for_read(self, model: object, **hints: object) -> str:
        return "readonly"

    def db_for_write(self, model: object, **hints: object) -> str:
        return "default"

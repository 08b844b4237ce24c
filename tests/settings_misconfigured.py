"""tests.settings with a read-only alias configured wrongly in settings.py."""

from tests.settings import *  # noqa: F403

DATABASES["readonly"]["OPTIONS"]["readonly_pool"]["pool_size"] = 0  # noqa: F405
DATABASES["readonly"]["OPTIONS"]["readonly_pool"]["prewarm"] = "maybe"  # noqa: F405

"""The example project plus the benchmark endpoint (this package installed)."""

import os

from example_project.settings import *  # noqa: F403

INSTALLED_APPS = [*INSTALLED_APPS, "benchmarks.benchapp"]  # noqa: F405
ROOT_URLCONF = "benchmarks.http_urls"
DEBUG = False
LOGGING = {"version": 1, "disable_existing_loggers": False}
READONLY_POOL = {"SKIP_REQUEST_THREAD_HOP": os.environ.get("BENCH_HTTP_HOP") != "1"}

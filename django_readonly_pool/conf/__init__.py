"""Configuration: ``FIDES__DATABASE__*`` variables, ``DATABASES`` options, ``READONLY_POOL``.

Everything the package reads from the outside is parsed here, once, into frozen
objects, in one module per concept:

* :mod:`.environment`: :func:`databases_from_env`, the reference guide's
  variables turned into ``settings.DATABASES``;
* :mod:`.pool`: :class:`PoolSettings`, the parsed ``OPTIONS["readonly_pool"]``
  of a pool alias, and the table of its settings (:data:`POOL_FIELDS`);
* :mod:`.app`: :class:`AppSettings`, the parsed ``settings.READONLY_POOL``;
* :mod:`.target` and :mod:`.base`: where an alias connects, the names, the
  masking of secrets and libpq's keyword classes.

Precedence, highest first: what ``settings.DATABASES`` says (a value you write
in ``settings.py``, including edits to the dict :func:`databases_from_env`
returned), then the ``FIDES__DATABASE__*`` environment, then the defaults.
Parsing is strict and collects every problem before raising one
:class:`~django_readonly_pool.errors.ConfigurationError` that names each
variable, its value (secrets masked) and what is allowed.
"""

from __future__ import annotations

from .app import REMOVED_SETTINGS, SETTING_NAME, AppSettings, app_settings, reset_app_settings
from .base import (
    ENGINE,
    ENV_PREFIX,
    MASK,
    OPTIONS_KEY,
    POOL_ENV_PREFIX,
    SECRET_KEYS,
    libpq_keywords,
    mask,
    masked_params,
    refused_keyword,
    scrub,
)
from .environment import MISCONFIGURED_ENGINE, databases_from_env, deferred_error, near_misses
from .pool import POOL_FIELDS, PoolField, PoolSettings
from .target import ConnectionTarget

_libpq_keywords = libpq_keywords  # the name the bad-input tests knew

__all__ = [
    "ENGINE",
    "ENV_PREFIX",
    "MASK",
    "MISCONFIGURED_ENGINE",
    "OPTIONS_KEY",
    "POOL_ENV_PREFIX",
    "POOL_FIELDS",
    "REMOVED_SETTINGS",
    "SECRET_KEYS",
    "SETTING_NAME",
    "AppSettings",
    "ConnectionTarget",
    "PoolField",
    "PoolSettings",
    "app_settings",
    "databases_from_env",
    "deferred_error",
    "libpq_keywords",
    "mask",
    "masked_params",
    "near_misses",
    "refused_keyword",
    "reset_app_settings",
    "scrub",
]

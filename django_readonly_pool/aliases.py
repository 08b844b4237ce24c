"""Which database aliases are this package's, and their parsed pool settings.

* a **pool alias** has ``ENGINE: "django_readonly_pool.backend"``;
* the **read aliases** are where the router sends reads: ``READONLY_POOL
  ["READONLY_ALIASES"]``, or every pool alias;
* a **test mirror**: while Django's test runner has set a pool alias up as a
  mirror of another (``TEST["MIRROR"]``, with ``TESTS_READ_PRIMARY``), its reads
  go to the mirrored alias.

Everything here is derived from ``settings.DATABASES`` and ``READONLY_POOL``,
cached, and forgotten when either changes (:func:`forget`, a ``setting_changed``
receiver). Reads look here on every call, so the answers cost dictionary
lookups.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final

from django.db import connections

from .conf import ENGINE, OPTIONS_KEY, AppSettings, PoolSettings, app_settings

__all__ = [
    "activate_test_mirror",
    "forget",
    "is_pool_alias",
    "pool_aliases",
    "pool_settings",
    "read_aliases",
    "test_mirror_of",
    "test_mirrors",
    "test_mirrors_suspended",
    "uses_engine",
]

_engine_of: dict[str, bool] = {}
# alias -> the alias it mirrors in tests (read directly by the router: a dict lookup a read)
test_mirrors: Final[dict[str, str]] = {}
_read: dict[str, Any] = {}  # the cached read aliases and what they were derived from
_settings_of: dict[tuple[str, int], PoolSettings] = {}


def uses_engine(alias: str) -> bool:
    """True when *alias*'s ENGINE is this package's backend."""
    try:
        return _engine_of[alias]
    except KeyError:
        settings_dict = connections.settings.get(alias)
        result = _engine_of[alias] = bool(settings_dict and settings_dict.get("ENGINE") == ENGINE)
        return result


def pool_aliases() -> list[str]:
    """Every alias whose ENGINE is ``django_readonly_pool.backend``."""
    return [alias for alias in connections.settings if uses_engine(alias)]


def is_pool_alias(alias: str | None) -> bool:
    """True when reads on *alias* take the bridge (a pool alias, not mirrored in tests)."""
    if alias is None or alias in test_mirrors:
        return False
    known = _engine_of.get(alias)  # every read asks: the cached answer costs no call
    return uses_engine(alias) if known is None else known


def read_aliases(settings: AppSettings | None = None) -> tuple[str, ...]:
    """Where the router sends reads: ``READONLY_ALIASES``, or every pool alias.

    Cached until the settings object or the set of aliases changes (tests add
    aliases to ``connections.settings`` in place): a read pays two comparisons.
    """
    settings = settings or app_settings()
    databases = connections.settings
    cached = _read.get("cached")
    if cached is None or cached[0] is not settings or cached[1] is not databases or cached[2] != len(databases):
        configured = settings.readonly_aliases
        aliases = configured if configured is not None else tuple(pool_aliases())
        cached = _read["cached"] = (settings, databases, len(databases), aliases)
    result: tuple[str, ...] = cached[3]
    return result


def pool_settings(alias: str, settings_dict: dict[str, Any] | None = None) -> PoolSettings:
    """The parsed ``OPTIONS["readonly_pool"]`` of *alias* (explicit values, then environment),
    from *settings_dict* (default: its entry in ``DATABASES``)."""
    if settings_dict is None:
        settings_dict = connections.settings[alias]
    key = (alias, id(settings_dict))
    parsed = _settings_of.get(key)
    if parsed is None:
        parsed = _settings_of[key] = PoolSettings.from_options(
            settings_dict["OPTIONS"].get(OPTIONS_KEY), alias=alias
        )
    return parsed


def activate_test_mirror(alias: str, mirror: str) -> None:
    """Called when Django's test runner sets *alias* up as a mirror of *mirror*."""
    if app_settings().tests_read_primary:
        test_mirrors[alias] = mirror


def test_mirror_of(alias: str) -> str | None:
    return test_mirrors.get(alias)


@contextmanager
def test_mirrors_suspended() -> Iterator[None]:
    """Reads on pool aliases go to their real servers meanwhile, even in tests that
    mirror them (``TESTS_READ_PRIMARY``): see ``django_readonly_pool.testing.replica_reads``."""
    saved = dict(test_mirrors)
    test_mirrors.clear()
    try:
        yield
    finally:
        test_mirrors.update(saved)


def forget(**kwargs: Any) -> None:
    """``setting_changed`` receiver (and for code that edits ``connections.settings``)."""
    if kwargs.get("setting") in (None, "DATABASES", "READONLY_POOL"):
        _engine_of.clear()
        _read.clear()
        if kwargs.get("setting") != "READONLY_POOL":
            _settings_of.clear()

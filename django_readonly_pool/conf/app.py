"""``settings.READONLY_POOL``: the routing and integration settings, parsed once.

:func:`app_settings` returns the parsed, frozen :class:`AppSettings` (cached;
``setting_changed`` resets it). Unknown keys get a "did you mean", removed keys
say why they went.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from django.conf import settings as django_settings

from django_readonly_pool.errors import ConfigurationError

from .base import suggest

__all__ = ["REMOVED_SETTINGS", "SETTING_NAME", "AppSettings", "app_settings", "reset_app_settings"]

SETTING_NAME: Final = "READONLY_POOL"


@dataclass(frozen=True, slots=True)
class AppSettings:
    """Parsed ``settings.READONLY_POOL`` (every key optional).

    ``ASYNC_ORM``: run Django's async QuerySet reads on pool aliases through the
    bridge (default True; False keeps Django's ``sync_to_async`` everywhere).
    ``PRIMARY``: the alias that takes writes and pinned reads ("default").
    ``READONLY_ALIASES``: the aliases the router sends reads to (default: every
    alias whose ENGINE is ``django_readonly_pool.backend``; several are used
    round-robin).
    ``PIN_AFTER_WRITE``: after a write, the rest of the request or task reads
    from the primary (True).
    ``STICKY_SECONDS``: the middleware pins a client to the primary for this
    long after an unsafe request (15.0; 0 turns the cookie off).
    ``STICKY_COOKIE``: the name of that cookie ("readonly_pool_pin").
    ``FALLBACK``: when the replica is down or too far behind: "primary" (reads
    go to the primary) or "fail" (reads fail fast with ReplicaUnavailable).
    ``HEALTH_CHECK_INTERVAL``: seconds between replica health probes (1.0).
    ``MAX_LAG_SECONDS`` / ``MAX_LAG_BYTES``: replica lag beyond which reads go
    to the primary (None: not checked).
    ``TESTS_READ_PRIMARY``: while Django's test runner has set the alias up as a
    test mirror, reads go to the mirrored alias, so tests see their own
    uncommitted data (True).
    ``SKIP_REQUEST_THREAD_HOP``: under ASGI, close sync connections at the end
    of a request only when the request opened one, instead of hopping to a
    thread for every request (True).
    ``FAST_LANE``: reuse Django's compiled SQL per query shape on pool aliases
    (``aget(**kwargs)``, ``acount()``/``aexists()`` without building the query,
    a trusted shape's statement straight from the event loop), build
    ``filter()``/``exclude()``/``values()`` of querysets bound to a pool alias
    from templates, decode ``jsonb`` with json's C scanner, and build plain
    models' instances without ``Model.__init__`` (True); see
    django_readonly_pool.compiled, .fastlane, .materialise and .backend.compiler.
    ``HEALTH_DETAILS``: who gets the per-alias details of the health view:
    "staff" (active staff users, the default), "always" or "never".
    """

    async_orm: bool = True
    primary: str = "default"
    readonly_aliases: tuple[str, ...] | None = None
    pin_after_write: bool = True
    sticky_seconds: float = 15.0
    sticky_cookie: str = "readonly_pool_pin"
    fallback: str = "primary"
    health_check_interval: float = 1.0
    max_lag_seconds: float | None = None
    max_lag_bytes: int | None = None
    tests_read_primary: bool = True
    skip_request_thread_hop: bool = True
    fast_lane: bool = True
    health_details: str = "staff"

    @classmethod
    def from_setting(cls, value: Any) -> AppSettings:
        if value is None:
            return cls()
        if not isinstance(value, Mapping):
            raise ConfigurationError(
                [f"settings.{SETTING_NAME} must be a dict, not {type(value).__name__}"],
                source="settings",
            )
        problems: list[str] = []
        fields = {f.name.upper(): f.name for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, raw in value.items():
            name = fields.get(str(key))
            where = f"settings.{SETTING_NAME}[{key!r}]"
            if key in REMOVED_SETTINGS:
                problems.append(f"{where} was removed: {REMOVED_SETTINGS[key]}; delete the key")
                continue
            if name is None:
                problems.append(f"{where} is not a setting of django-readonly-pool"
                                + suggest(str(key), fields))
                continue
            checked = _check_app_value(name, raw, where, problems)
            if checked is not _INVALID:
                values[name] = checked
        if problems:
            raise ConfigurationError(problems, source="settings")
        return cls(**values)


_INVALID: Final = object()
REMOVED_SETTINGS: Final = {
    "REUSE_SCRAM_KEYS": "the SCRAM keys it derived were reported by libpq through conn.info.dsn and "
                        "could log in as the role; every login now goes through libpq with the password",
}


def _check_app_value(name: str, raw: Any, where: str, problems: list[str]) -> Any:
    def bad(expected: str) -> object:
        problems.append(f"{where}={raw!r} is not valid: expected {expected}")
        return _INVALID

    if name in ("async_orm", "pin_after_write", "tests_read_primary", "skip_request_thread_hop", "fast_lane"):
        return raw if isinstance(raw, bool) else bad("True or False")
    if name in ("primary", "sticky_cookie"):
        return raw if isinstance(raw, str) and raw else bad("a non-empty string")
    if name == "readonly_aliases":
        if raw is None:
            return None
        if isinstance(raw, (list, tuple)) and raw and all(isinstance(a, str) and a for a in raw):
            return tuple(raw)
        return bad("a non-empty list of aliases, or None")
    if name == "fallback":
        return raw if raw in ("primary", "fail") else bad("'primary' or 'fail'")
    if name == "health_details":
        return raw if raw in ("staff", "always", "never") else bad("'staff', 'always' or 'never'")
    if name in ("sticky_seconds", "health_check_interval"):
        minimum = 0.0 if name == "sticky_seconds" else 0.05
        if isinstance(raw, (int, float)) and not isinstance(raw, bool) and math.isfinite(raw) \
                and minimum <= raw <= 86_400:
            return float(raw)
        return bad(f"a number of seconds from {minimum:g} to 86400")
    if name == "max_lag_seconds":
        if raw is None:
            return None
        if isinstance(raw, (int, float)) and not isinstance(raw, bool) and math.isfinite(raw) and raw > 0:
            return float(raw)
        return bad("a positive number of seconds, or None")
    if name == "max_lag_bytes":
        if raw is None:
            return None
        if isinstance(raw, int) and not isinstance(raw, bool) and raw > 0:
            return raw
        return bad("a positive number of bytes, or None")
    raise AssertionError(name)  # pragma: no cover


_app_settings: AppSettings | None = None


def app_settings() -> AppSettings:
    """The parsed ``settings.READONLY_POOL`` (cached; reset when it changes)."""
    global _app_settings
    if _app_settings is None:
        _app_settings = AppSettings.from_setting(getattr(django_settings, SETTING_NAME, None))
    return _app_settings


def reset_app_settings(**kwargs: Any) -> None:
    """``setting_changed`` receiver: forget the cached settings."""
    global _app_settings
    if kwargs.get("setting") in (None, SETTING_NAME, "DATABASES", "DATABASE_ROUTERS"):
        _app_settings = None

"""System checks (``manage.py check``; also run at ASGI startup by the lifespan).

Errors stop the server from starting; warnings point at risky combinations.

=====================  ========================================================
``readonly_pool.E001``  ``settings.READONLY_POOL`` is invalid
``readonly_pool.E002``  a pool alias's ``OPTIONS["readonly_pool"]`` is invalid
``readonly_pool.E003``  a ``READONLY_ALIASES`` entry is missing or uses another ENGINE
``readonly_pool.E004``  the ``PRIMARY`` alias is missing, or is itself a pool alias
``readonly_pool.E005``  a pool alias has ``CONN_MAX_AGE`` other than 0
``readonly_pool.E006``  a pool alias's ``OPTIONS`` hold a secret libpq would report back
``readonly_pool.E007``  the ``FIDES__DATABASE__*`` environment is invalid (one per problem)
``readonly_pool.W001``  the router is not in ``DATABASE_ROUTERS``
``readonly_pool.W002``  the app is installed but no alias uses its ENGINE
``readonly_pool.W003``  ``POOL_SKIP_ROLLBACK`` without ``AUTOCOMMIT``
``readonly_pool.W004``  no replica configured: the pool alias targets the primary
``readonly_pool.W005``  ``PREWARM_TIMEOUT`` shorter than ``CONNECT_TIMEOUT``
``readonly_pool.W006``  cookie read-your-writes on, but the middleware is missing
``readonly_pool.W007``  a pool alias is not a test mirror
``readonly_pool.W008``  a pool alias's sessions can write (``--database`` only)
``readonly_pool.W009``  a ``FIDES__DATABASE__*`` variable looks like one of ours, misspelt
=====================  ========================================================
"""

from __future__ import annotations

import os
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.db import connections

from .conf import (
    ENGINE,
    OPTIONS_KEY,
    POOL_ENV_PREFIX,
    AppSettings,
    PoolSettings,
    deferred_error,
    near_misses,
    refused_keyword,
)
from .errors import ConfigurationError

__all__ = ["check_configuration"]

ROUTER = "django_readonly_pool.router.ReadOnlyRouter"
MIDDLEWARE = "django_readonly_pool.middleware.ReadOnlyPoolMiddleware"
TAG = "readonly_pool"


ENVIRONMENT_HINT = (
    "Fix the variables listed (the README's settings tables say what each accepts); "
    "python manage.py check_readonly_pool --format json lists them for scripts."
)


@register(TAG)
def check_configuration(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    messages: list[CheckMessage] = [
        Warning(problem, hint="Unset it, or correct its name.", id="readonly_pool.W009")
        for problem in near_misses(os.environ)
    ]
    environment = deferred_error()
    if environment is not None:  # the aliases are placeholders: nothing else to check
        return [*(Error(problem, hint=ENVIRONMENT_HINT, id="readonly_pool.E007")
                  for problem in environment.problems), *messages]
    databases: dict[str, Any] = getattr(settings, "DATABASES", {}) or {}
    try:
        app = AppSettings.from_setting(getattr(settings, "READONLY_POOL", None))
    except ConfigurationError as exc:
        messages.append(Error(
            "settings.READONLY_POOL is invalid: " + "; ".join(exc.problems),
            hint="Fix or remove the keys listed; see the README's settings table.",
            id="readonly_pool.E001",
        ))
        app = AppSettings()

    pool_aliases = [a for a, d in databases.items() if (d or {}).get("ENGINE") == ENGINE]
    for alias in pool_aliases:
        messages.extend(_check_alias(alias, databases[alias]))

    if app.readonly_aliases is not None:
        for alias in app.readonly_aliases:
            if alias not in databases or databases[alias].get("ENGINE") != ENGINE:
                found = "missing from DATABASES" if alias not in databases else (
                    f"uses ENGINE {databases[alias].get('ENGINE')!r}")
                messages.append(Error(
                    f"READONLY_POOL['READONLY_ALIASES'] names {alias!r}, which is {found}.",
                    hint=f"Define DATABASES[{alias!r}] with ENGINE {ENGINE!r} "
                         "(databases_from_env() does), or remove it from READONLY_ALIASES.",
                    id="readonly_pool.E003",
                ))
    if app.primary not in databases:
        messages.append(Error(
            f"READONLY_POOL['PRIMARY'] is {app.primary!r}, which is missing from DATABASES.",
            hint="Name the alias that takes writes (usually 'default').",
            id="readonly_pool.E004",
        ))
    elif databases[app.primary].get("ENGINE") == ENGINE:
        messages.append(Error(
            f"The primary alias {app.primary!r} uses the read-only ENGINE {ENGINE!r}: writes "
            "would be refused.",
            hint="Give the primary Django's PostgreSQL ENGINE and the replica this one.",
            id="readonly_pool.E004",
        ))

    routers = [r if isinstance(r, str) else f"{type(r).__module__}.{type(r).__name__}"
               for r in getattr(settings, "DATABASE_ROUTERS", [])]
    if pool_aliases and ROUTER not in routers:
        messages.append(Warning(
            "django_readonly_pool's router is not installed: reads go to the default alias, "
            "not to the read pool, unless your code uses .using() itself.",
            hint=f"Add {ROUTER!r} to DATABASE_ROUTERS.",
            id="readonly_pool.W001",
        ))
    if not pool_aliases:
        messages.append(Warning(
            "django_readonly_pool is installed but no DATABASES alias uses its ENGINE.",
            hint="Use DATABASES = databases_from_env() or set "
                 f"ENGINE {ENGINE!r} on the replica's alias.",
            id="readonly_pool.W002",
        ))
    middleware = getattr(settings, "MIDDLEWARE", None) or []
    if pool_aliases and ROUTER in routers and app.sticky_seconds > 0 and MIDDLEWARE not in middleware:
        messages.append(Warning(
            "READONLY_POOL['STICKY_SECONDS'] is set but the middleware is not installed: reads "
            "right after a write in an earlier request may not see it (replication lag).",
            hint=f"Add {MIDDLEWARE!r} to MIDDLEWARE, or set STICKY_SECONDS to 0.",
            id="readonly_pool.W006",
        ))
    return messages


def _check_alias(alias: str, settings_dict: dict[str, Any]) -> list[CheckMessage]:
    messages: list[CheckMessage] = []
    options = (settings_dict.get("OPTIONS") or {}).get(OPTIONS_KEY)
    try:
        pool = PoolSettings.from_options(options, alias=alias)
    except ConfigurationError as exc:
        return [Error(
            f"DATABASES[{alias!r}]: invalid pool settings: " + "; ".join(exc.problems),
            hint="Fix the values in settings.py or the FIDES__DATABASE__ASYNC_READONLY_DATABASE_* "
                 "variables; the README lists what each accepts.",
            id="readonly_pool.E002",
        )]
    for key in settings_dict.get("OPTIONS") or {}:
        refusal = refused_keyword(str(key)) if key != OPTIONS_KEY else None
        if refusal is not None:
            messages.append(Error(
                f"DATABASES[{alias!r}]['OPTIONS']: {refusal}.",
                hint="Remove it from OPTIONS (and from FIDES__DATABASE__READONLY_PARAMS).",
                id="readonly_pool.E006",
            ))
    if settings_dict.get("CONN_MAX_AGE", 0) != 0:
        messages.append(Error(
            f"DATABASES[{alias!r}]['CONN_MAX_AGE'] is {settings_dict.get('CONN_MAX_AGE')!r}: "
            "pool aliases take connections from a pool.",
            hint="Set CONN_MAX_AGE to 0 (the default).",
            id="readonly_pool.E005",
        ))
    if pool.pool_skip_rollback and not pool.autocommit:
        messages.append(Warning(
            f"DATABASES[{alias!r}]: POOL_SKIP_ROLLBACK is on but AUTOCOMMIT is off. In the "
            "reference this hands the next borrower an open transaction; here the pool still "
            "rolls it back, so skipping saves nothing.",
            hint=f"Set {POOL_ENV_PREFIX}AUTOCOMMIT=true (recommended with skip-rollback).",
            id="readonly_pool.W003",
        ))
    if not pool.replica_configured:
        messages.append(Warning(
            f"DATABASES[{alias!r}] targets the primary: FIDES__DATABASE__READONLY_SERVER is "
            "not set, so reads use the pool but not a replica.",
            hint="Set FIDES__DATABASE__READONLY_SERVER to a replica (or PgBouncer in front of one).",
            id="readonly_pool.W004",
        ))
    if pool.prewarm and pool.prewarm_timeout < pool.connect_timeout:
        messages.append(Warning(
            f"DATABASES[{alias!r}]: PREWARM_TIMEOUT ({pool.prewarm_timeout:g} s) is shorter than "
            f"CONNECT_TIMEOUT ({pool.connect_timeout} s): prewarm may give up before a slow "
            "connection attempt reports its cause.",
            hint=f"Raise {POOL_ENV_PREFIX}PREWARM_TIMEOUT or lower _CONNECT_TIMEOUT.",
            id="readonly_pool.W005",
        ))
    if not (settings_dict.get("TEST") or {}).get("MIRROR"):
        messages.append(Warning(
            f"DATABASES[{alias!r}] is not a test mirror: `manage.py test` would try to create a "
            "test database on the replica.",
            hint="Set DATABASES[alias]['TEST'] = {'MIRROR': 'default'} (databases_from_env() does).",
            id="readonly_pool.W007",
        ))
    return messages


READ_ONLY_HINT = (
    "Point the alias at a hot standby, or make the role read-only on the server: ALTER ROLE {user} "
    "SET default_transaction_read_only = on. The pool sets it on direct connections; through a "
    "pooler (PgBouncer) only the role's setting reaches the server."
)


@register(TAG, Tags.database)
def check_read_only_sessions(app_configs: Any = None, databases: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """``manage.py check --database ALIAS``: can a session of the pool alias write?"""
    messages: list[CheckMessage] = []
    configured: dict[str, Any] = getattr(settings, "DATABASES", {}) or {}
    for alias in databases or ():
        if (configured.get(alias) or {}).get("ENGINE") != ENGINE:
            continue
        try:
            with connections[alias].cursor() as cursor:
                cursor.execute("SELECT pg_catalog.current_setting('transaction_read_only')")
                (read_only,) = cursor.fetchone()
        except Exception:  # noqa: BLE001 - unreachable servers are check_readonly_pool's business
            continue
        if read_only != "on":
            messages.append(Warning(
                f"DATABASES[{alias!r}]: its sessions can write (transaction_read_only is off): the "
                "read-only guard is then the only thing between a mistaken statement and your data.",
                hint=READ_ONLY_HINT.format(user=configured[alias].get("USER") or "..."),
                id="readonly_pool.W008",
            ))
    return messages

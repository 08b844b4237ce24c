"""``ENGINE: "django_readonly_pool.backend"``: Django's PostgreSQL backend + the pool.

The wrapper is Django's own PostgreSQL ``DatabaseWrapper``; it changes only:

* ``cursor()`` / ``chunked_cursor()``: inside the bridge they return Django's
  cursor wrappers around a :class:`~.cursors.BridgeCursor`, whose I/O awaits the
  async pool; everywhere else they are Django's (and Django's guard against sync
  I/O on the event loop still applies);
* ``make_cursor()`` / ``make_debug_cursor()``: the same wrappers plus a guard
  that refuses writes on this read-only alias;
* ``get_connection_params()``: drops this package's ``OPTIONS["readonly_pool"]``,
  sets libpq's ``connect_timeout``, and loads ``timestamptz`` with psycopg's C
  parser (:mod:`.adapters`: the same values as Django's Python one);
* ``pool``: Django's built-in (sync) psycopg pool, sized from the same settings,
  for sync code (management commands, sync views, WSGI);
* ``pg_version``: known from the pool, so no sync connection is opened on the loop;
* ``get_autocommit()``: refuses ``transaction.atomic()`` on the async path.

:meth:`DatabaseWrapper.make_read_pool` builds the async pool from the same
connection parameters as Django's sync connections (adapters, time zone, role,
client-side binding, ``prepare_threshold=None``), so both return the same values.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from django.apps import apps
from django.core.exceptions import ImproperlyConfigured
from django.db import connections
from django.db.backends.base.base import NO_DB_ALIAS
from django.db.backends.postgresql import base as postgresql
from django.db.backends.postgresql.creation import DatabaseCreation as PostgresCreation
from django.db.backends.postgresql.operations import DatabaseOperations as PostgresOperations
from django.utils.functional import cached_property
from psycopg import AsyncClientCursor, AsyncCursor, sql

from django_readonly_pool.aliases import activate_test_mirror, pool_settings
from django_readonly_pool.bridge import await_only, in_bridge
from django_readonly_pool.conf import OPTIONS_KEY, SECRET_KEYS, ConnectionTarget, PoolSettings, app_settings
from django_readonly_pool.errors import ReadOnlyAliasError
from django_readonly_pool.health import monitor
from django_readonly_pool.pool import ReadPool, SessionSetup, SyncReadPool, registry

from .adapters import adapters
from .cursors import (
    BridgeCursor,
    ReadOnlyCursorDebugWrapper,
    ReadOnlyCursorWrapper,
    StreamingBridgeCursor,
)

__all__ = ["DatabaseWrapper", "pool_connection"]

# Server versions learnt by the pools, by alias (read by pg_version).
_server_versions: dict[str, int] = {}


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class DatabaseCreation(PostgresCreation):
    def set_as_test_mirror(self, primary_settings_dict: dict[str, Any]) -> None:
        super().set_as_test_mirror(primary_settings_dict)
        mirrored = self.connection.settings_dict["TEST"]["MIRROR"]
        activate_test_mirror(self.connection.alias, mirrored)
        _release_before_destroy(mirrored, self.connection.alias)


def _release_before_destroy(mirrored: str, alias: str) -> None:
    """Before the test runner drops the test database that *alias* mirrors, let go of it:
    the health monitor's probe connection and the sync pool would keep it "being accessed
    by other users" (DROP DATABASE fails)."""
    creation = connections[mirrored].creation
    destroy = creation.destroy_test_db
    releases: set[str] = getattr(destroy, "readonly_pool_releases", None) or set()
    releases.add(alias)
    if hasattr(destroy, "readonly_pool_releases"):
        return

    def destroy_test_db(*args: Any, **kwargs: Any) -> Any:
        monitor.stop()
        for name in releases:
            wrapper = connections[name]
            wrapper.close()
            if name in wrapper._connection_pools:  # type: ignore[attr-defined]
                wrapper.close_pool()  # type: ignore[attr-defined]
        return destroy(*args, **kwargs)

    destroy_test_db.readonly_pool_releases = releases  # type: ignore[attr-defined]
    creation.destroy_test_db = destroy_test_db  # type: ignore[method-assign]


class DatabaseOperations(PostgresOperations):
    compiler_module = "django_readonly_pool.backend.compiler"

    def compose_sql(self, sql_text: str, params: Any) -> str:
        if not in_bridge():
            return super().compose_sql(sql_text, params)  # type: ignore[no-any-return]
        # Django's version borrows a sync connection; render literals with the
        # connection's adapters instead (no I/O needed).
        context = cast("DatabaseWrapper", self.connection).get_adapters_context()
        literals = tuple(sql.Literal(p).as_string(context) for p in params or ())
        return sql_text % literals if literals else sql_text


class _AdaptContext:
    """The smallest psycopg AdaptContext: adapters, no connection."""

    __slots__ = ("adapters",)
    connection = None

    def __init__(self, adapters: Any) -> None:
        self.adapters = adapters


class DatabaseWrapper(postgresql.DatabaseWrapper):
    display_name = "PostgreSQL (read-only pool)"
    creation_class = DatabaseCreation
    ops_class = DatabaseOperations

    # -- settings ----------------------------------------------------------- #

    @cached_property
    def readonly_pool_settings(self) -> PoolSettings:
        """The parsed ``OPTIONS["readonly_pool"]`` (explicit values, then environment)."""
        return pool_settings(self.alias, self.settings_dict)

    @property
    def target(self) -> ConnectionTarget:
        return ConnectionTarget.from_settings(self.settings_dict)

    def get_connection_params(self) -> dict[str, Any]:
        params: dict[str, Any] = super().get_connection_params()
        params.pop(OPTIONS_KEY, None)
        params.setdefault("connect_timeout", self.readonly_pool_settings.connect_timeout)
        if "context" in params:
            params["context"] = adapters(params["context"])
        return params

    def get_adapters_context(self) -> _AdaptContext:
        params = super().get_connection_params()
        return _AdaptContext(params["context"])

    # -- sync path: Django's built-in pool, from our settings ---------------- #

    @property
    def pool(self) -> Any:
        if self.alias == NO_DB_ALIAS:
            return None
        pools = self._connection_pools  # type: ignore[attr-defined]
        if self.alias not in pools:
            if "pool" in self.settings_dict["OPTIONS"]:
                return super().pool  # an explicit OPTIONS["pool"] wins
            if self.settings_dict.get("CONN_MAX_AGE", 0) != 0:
                raise ImproperlyConfigured(
                    f"DATABASES[{self.alias!r}]: CONN_MAX_AGE must be 0 with "
                    "django_readonly_pool.backend: connections come from a pool."
                )
            s = self.readonly_pool_settings
            kwargs = self.get_connection_params()
            kwargs["autocommit"] = True  # Django sets it properly later on
            pool = SyncReadPool(
                kwargs=kwargs,
                open=False,
                alias=self.alias,
                fallback=self._primary_sync_pool,
                session=self.session_setup(kwargs),
                reset_sessions=not s.pool_skip_rollback,
                pre_ping=s.pre_ping,
                min_size=s.pool_size,
                max_size=s.max_size,
                timeout=s.checkout_timeout,
                max_lifetime=s.max_lifetime,
                max_idle=max(60.0, s.overflow_idle_timeout),
                reconnect_timeout=86_400.0,
                name=f"readonly-pool-sync[{self.alias}]",
                ping_interval=s.pre_ping_interval,
                check_timeout=s.check_timeout,
            )
            pools.setdefault(self.alias, pool)
        return pools[self.alias]

    def _primary_sync_pool(self) -> SyncReadPool:
        """A small pool on the primary for this alias's sync reads while the replica is
        unavailable (``FALLBACK="primary"``); its connections are read-only on the server."""
        s = self.readonly_pool_settings
        kwargs = connections[app_settings().primary].get_connection_params()
        kwargs["autocommit"] = True
        kwargs.setdefault("connect_timeout", s.connect_timeout)
        return SyncReadPool(
            kwargs=kwargs, open=False, session=self.session_setup(kwargs), reset_sessions=not s.pool_skip_rollback,
            pre_ping=s.pre_ping, min_size=0, max_size=s.max_size, timeout=s.checkout_timeout,
            max_lifetime=s.max_lifetime, max_idle=60.0, reconnect_timeout=86_400.0,
            name=f"readonly-pool-sync[{self.alias}->primary]", ping_interval=s.pre_ping_interval,
            check_timeout=s.check_timeout,
        )

    # -- async path ------------------------------------------------------------ #

    def make_read_pool(self, settings: PoolSettings | None = None, **conninfo: Any) -> ReadPool:
        """A new async :class:`~django_readonly_pool.pool.ReadPool` for this alias.

        *settings* replaces the alias's pool settings and *conninfo* overrides
        connection parameters (``user``, ``application_name`` ...); both default
        to the alias's configuration.
        """
        s = settings or self.readonly_pool_settings
        options = self.settings_dict["OPTIONS"]
        kwargs = self.get_connection_params()
        kwargs.update(conninfo)
        kwargs["cursor_factory"] = (
            AsyncCursor if options.get("server_side_binding") is True else AsyncClientCursor
        )
        kwargs["autocommit"] = s.autocommit
        session = self.session_setup(kwargs)
        alias = self.alias

        def remember(version: int) -> None:
            _server_versions[alias] = version

        target = self.target
        if conninfo:
            target = ConnectionTarget(
                host=str(kwargs.get("host", "")), port=str(kwargs.get("port", "")),
                dbname=str(kwargs.get("dbname", "")), user=str(kwargs.get("user", "")),
            )
        return ReadPool(alias, s, target, kwargs, session, on_server_version=remember,
                        postgres_types=apps.is_installed("django.contrib.postgres"))

    def session_setup(self, connect_kwargs: dict[str, Any]) -> SessionSetup:
        """How a pool connection is made to match Django's own (time zone, role, isolation)."""
        options = self.settings_dict["OPTIONS"]
        isolation = options.get("isolation_level")
        return SessionSetup(
            timezone_name=self.timezone_name,
            assume_role=options.get("assume_role"),
            isolation_level=None if isolation is None else int(isolation),
            secrets=tuple(str(v) for k, v in connect_kwargs.items() if k in SECRET_KEYS and v),
        )

    def cursor(self) -> Any:
        if in_bridge():
            # Django's _prepare_cursor() without its thread check: a bridge cursor opens no
            # sync connection, and the bridge runs on the thread that got this wrapper.
            cursor = BridgeCursor(self.alias)
            if self.queries_logged:
                return ReadOnlyCursorDebugWrapper(cursor, self)
            return ReadOnlyCursorWrapper(cursor, self)
        return super().cursor()

    def chunked_cursor(self) -> Any:
        if in_bridge():
            cursor = StreamingBridgeCursor(self.alias)
            if self.queries_logged:
                return ReadOnlyCursorDebugWrapper(cursor, self)
            return ReadOnlyCursorWrapper(cursor, self)
        return super().chunked_cursor()

    def make_cursor(self, cursor: Any) -> ReadOnlyCursorWrapper:
        return ReadOnlyCursorWrapper(cursor, self)

    def make_debug_cursor(self, cursor: Any) -> ReadOnlyCursorDebugWrapper:
        return ReadOnlyCursorDebugWrapper(cursor, self)

    @cached_property
    def pg_version(self) -> int:
        known = _server_versions.get(self.alias)
        if known is not None:
            return known
        if in_bridge():
            pool = registry.ready(self.alias) or await_only(registry.get(self.alias))
            if pool.server_version is None:
                await_only(pool.putconn(await_only(pool.getconn())))
            assert pool.server_version is not None
            return pool.server_version
        version: int = postgresql.DatabaseWrapper.pg_version.func(self)  # type: ignore[attr-defined]
        _server_versions[self.alias] = version
        return version

    def get_autocommit(self) -> bool:
        if in_bridge() or (self.connection is None and _on_event_loop()):
            raise ReadOnlyAliasError(
                f"transaction.atomic() and other transaction control are not available on the "
                f"read-only alias {self.alias!r} in async code: each read runs on its own pooled "
                "connection. Write in a transaction on 'default'; for several reads from one "
                "snapshot, run sync code (sync_to_async) with atomic(using="
                f"{self.alias!r})."
            )
        return super().get_autocommit()


def pool_connection(alias: str) -> DatabaseWrapper:
    """``connections[alias]``, typed as this backend's wrapper."""
    wrapper = connections[alias]
    if not isinstance(wrapper, DatabaseWrapper):
        raise TypeError(f"DATABASES[{alias!r}] does not use ENGINE 'django_readonly_pool.backend'")
    return wrapper

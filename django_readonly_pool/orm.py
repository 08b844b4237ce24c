"""Django's async ORM on the pool: dispatch of the ``a*`` QuerySet methods.

Every async read of Django's QuerySet (``aget``, ``acount``, ``async for`` ...)
is a ``sync_to_async`` wrapper around its sync twin. A queryset knows the alias
it will read from before it runs (``qs.db`` asks the routers), so each method is
replaced by one that looks at that alias: a pool alias runs the sync twin in the
bridge (on the event loop, on the async pool); any other alias takes Django's
own method, unchanged.

A call takes the bridge only when all its reads go to pool aliases: the
queryset's alias and the alias of every ``Prefetch(queryset=...)`` that names
one (recursively); otherwise Django's own async path runs it, as without this
package. ``aiterator()`` on a non-pool alias (a fallback to the primary, say)
runs each step in ``sync_to_async``, so it can do what it does on the pool
(Django's own cannot stream ``values_list()``).

Installed by the app's ``ready()`` unless ``READONLY_POOL["ASYNC_ORM"]`` is
False; :func:`uninstall` restores Django's methods.

Async *writes* (``acreate``, ``aupdate``, ``Model.asave`` ...) keep Django's own
methods, untouched (their warnings and tracebacks name your code); one aimed at
a pool alias with ``.using()`` is refused by the backend's read-only guard.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable
from itertools import islice
from typing import Any, Final

from asgiref.sync import sync_to_async
from django.db import connections
from django.db import models as dj_models
from django.db import router as dj_router
from django.db.models import query as dj_query
from django.db.models.query import QuerySet, RawQuerySet, prefetch_related_objects

from . import bridge, fastlane
from .conf import ENGINE, app_settings
from .router import _decided

__all__ = [
    "install",
    "installed",
    "is_pool_alias",
    "pool_aliases",
    "uninstall",
]

READ_METHODS: Final = {
    "aget": "get", "afirst": "first", "alast": "last", "acount": "count",
    "aexists": "exists", "aaggregate": "aggregate", "ain_bulk": "in_bulk",
    "acontains": "contains", "aearliest": "earliest", "alatest": "latest",
    "aexplain": "explain",
}

_stock: dict[tuple[object, str], Any] = {}
_engine_of: dict[str, bool] = {}
_test_mirrors: dict[str, str] = {}


# --------------------------------------------------------------------------- #
# Which aliases take the bridge
# --------------------------------------------------------------------------- #


def _uses_engine(alias: str) -> bool:
    try:
        return _engine_of[alias]
    except KeyError:
        settings_dict = connections.settings.get(alias)
        result = _engine_of[alias] = bool(settings_dict and settings_dict.get("ENGINE") == ENGINE)
        return result


def pool_aliases() -> list[str]:
    """Every alias whose ENGINE is ``django_readonly_pool.backend``."""
    return [alias for alias in connections.settings if _uses_engine(alias)]


def is_pool_alias(alias: str | None) -> bool:
    """True when reads on *alias* take the bridge (a pool alias, not mirrored in tests)."""
    return alias is not None and _uses_engine(alias) and alias not in _test_mirrors


def activate_test_mirror(alias: str, mirror: str) -> None:
    """Called when Django's test runner sets *alias* up as a mirror of *mirror*."""
    if app_settings().tests_read_primary:
        _test_mirrors[alias] = mirror


def test_mirror_of(alias: str) -> str | None:
    return _test_mirrors.get(alias)


def _prefetches_on_pools(lookups: Any) -> bool:
    """Every ``Prefetch`` among *lookups* that names an alias names a pool alias."""
    for lookup in lookups:
        queryset = getattr(lookup, "queryset", None)
        if queryset is not None:
            alias = queryset._db
            if alias is not None and not is_pool_alias(alias):
                return False
            if not _prefetches_on_pools(queryset._prefetch_related_lookups):
                return False
    return True


def bridged(alias: str | None, lookups: Any = ()) -> bool:
    """True when a read on *alias* with these prefetch *lookups* takes the bridge."""
    return is_pool_alias(alias) and (not lookups or _prefetches_on_pools(lookups))


def forget_engines(**kwargs: Any) -> None:
    """``setting_changed`` receiver (DATABASES)."""
    if kwargs.get("setting") in (None, "DATABASES"):
        _engine_of.clear()
        fastlane.clear()


# --------------------------------------------------------------------------- #
# The replacements
# --------------------------------------------------------------------------- #


def _read_method(name: str, sync_name: str, stock: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(stock)
    async def method(self: QuerySet[Any], *args: Any, **kwargs: Any) -> Any:
        alias = self.db
        token = _decided.set(alias)  # the router's answer holds for the whole call
        try:
            if bridged(alias, self._prefetch_related_lookups):  # type: ignore[attr-defined]
                return await bridge.call_in_bridge(getattr(self, sync_name), args, kwargs)
            return await stock(self, *args, **kwargs)
        finally:
            _decided.reset(token)

    return method


def _aget(stock: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(stock)
    async def aget(self: QuerySet[Any], *args: Any, **kwargs: Any) -> Any:
        alias = self.db
        token = _decided.set(alias)
        try:
            if bridged(alias, self._prefetch_related_lookups):  # type: ignore[attr-defined]
                fast = fastlane.fast_get(self, alias, args, kwargs) if app_settings().fast_lane else None
                if fast is not None:
                    return await bridge.call_in_bridge(fast, (), {})
                return await bridge.call_in_bridge(self.get, args, kwargs)
            return await stock(self, *args, **kwargs)
        finally:
            _decided.reset(token)

    return aget


async def _fetch_all_decided(qs: Any, alias: str | None) -> None:
    token = _decided.set(alias)
    try:
        if bridged(alias, getattr(qs, "_prefetch_related_lookups", ())):
            await bridge.call_in_bridge(qs._fetch_all, (), {})
        else:
            await sync_to_async(qs._fetch_all)()
    finally:
        _decided.reset(token)


def _make_aiter(owner: type) -> Callable[[Any], AsyncIterator[Any]]:
    def __aiter__(self: Any) -> AsyncIterator[Any]:  # noqa: N807
        async def generator() -> AsyncIterator[Any]:
            if self._result_cache is None:
                await _fetch_all_decided(self, self.db)
            for item in self._result_cache:
                yield item

        return generator()

    __aiter__.__qualname__ = f"{owner.__name__}.__aiter__"
    return __aiter__


def _take(iterator: Any, n: int) -> list[Any]:
    return list(islice(iterator, n))


async def _in_thread(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return await sync_to_async(fn)(*args, **kwargs)


async def _aiterator(self: QuerySet[Any], chunk_size: int = 2000) -> AsyncIterator[Any]:
    """``aiterator()``: streams ``chunk_size`` rows at a time, on the bridge for pool
    aliases (one held connection) and through ``sync_to_async`` for any other."""
    if chunk_size <= 0:
        raise ValueError("Chunk size must be strictly positive.")
    alias = self.db
    lookups = self._prefetch_related_lookups  # type: ignore[attr-defined]
    run: Callable[..., Any]
    if bridged(alias, lookups):
        # Streaming works through PgBouncer, so DISABLE_SERVER_SIDE_CURSORS (a
        # workaround for WITH HOLD cursors) does not turn it off here.
        chunked = True
        run = bridge.call_in_bridge
    else:
        # Django's own aiterator() starts some iterables (values_list) on the
        # event loop, where they fail: every step runs in the request's thread.
        chunked = not connections[alias].settings_dict.get("DISABLE_SERVER_SIDE_CURSORS")
        run = _in_thread
    self = self.using(alias)  # every step reads where the first did
    iterable = self._iterable_class(self, chunked_fetch=chunked, chunk_size=chunk_size)
    # Some iterables (values_list) run their query in __iter__: start it in the bridge.
    rows = await run(iter, (iterable,), {})
    lookups = self._prefetch_related_lookups  # type: ignore[attr-defined]
    try:
        while True:
            chunk = await run(_take, (rows, chunk_size), {})
            if lookups and chunk:
                await run(prefetch_related_objects, (chunk, *lookups), {})
            for item in chunk:
                yield item
            if len(chunk) < chunk_size:
                break
    finally:
        # Ends the stream (and returns its connection) when the iteration
        # ends, fails, or is abandoned.
        await run(getattr(rows, "close", _noop), (), {})


def _noop() -> None:
    return None


async def _aprefetch_related_objects(model_instances: Any, *related_lookups: Any) -> Any:
    instances = list(model_instances)
    alias = dj_router.db_for_read(type(instances[0]), instance=instances[0]) if instances else None
    token = _decided.set(alias)
    try:
        if bridged(alias, related_lookups):
            return await bridge.call_in_bridge(prefetch_related_objects, (instances, *related_lookups), {})
        return await _stock[(dj_query, "aprefetch_related_objects")](instances, *related_lookups)
    finally:
        _decided.reset(token)


async def _arefresh_from_db(self: dj_models.Model, using: str | None = None, fields: Any = None,
                            from_queryset: Any = None) -> None:
    if from_queryset is not None:
        alias = from_queryset.db
    else:
        alias = using or dj_router.db_for_read(type(self), instance=self)
    token = _decided.set(alias)
    try:
        if is_pool_alias(alias):
            return await bridge.call_in_bridge(  # type: ignore[no-any-return]
                self.refresh_from_db, (), {"using": using, "fields": fields, "from_queryset": from_queryset}
            )
        return await _stock[(dj_models.Model, "arefresh_from_db")](  # type: ignore[no-any-return]
            self, using=using, fields=fields, from_queryset=from_queryset
        )
    finally:
        _decided.reset(token)


# --------------------------------------------------------------------------- #
# Install / uninstall
# --------------------------------------------------------------------------- #


def _patch(owner: object, name: str, value: Any) -> None:
    _stock.setdefault((owner, name), getattr(owner, name))
    setattr(owner, name, value)


def installed() -> bool:
    return bool(_stock)


def install() -> None:
    """Replace Django's async ORM reads by bridge-aware ones (idempotent)."""
    if _stock:
        return
    for name, sync_name in READ_METHODS.items():
        if hasattr(QuerySet, name):
            _patch(QuerySet, name, _read_method(name, sync_name, getattr(QuerySet, name)))
    _patch(QuerySet, "aget", _aget(_stock[(QuerySet, "aget")]))
    _patch(QuerySet, "__aiter__", _make_aiter(QuerySet))
    _patch(RawQuerySet, "__aiter__", _make_aiter(RawQuerySet))
    _patch(QuerySet, "aiterator", functools.wraps(QuerySet.aiterator)(_aiterator))
    _patch(dj_query, "aprefetch_related_objects", _aprefetch_related_objects)
    _patch(dj_models, "aprefetch_related_objects", _aprefetch_related_objects)
    _patch(dj_models.Model, "arefresh_from_db", _arefresh_from_db)


def uninstall() -> None:
    """Restore Django's own methods."""
    for (owner, name), value in _stock.items():
        setattr(owner, name, value)
    _stock.clear()

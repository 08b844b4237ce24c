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
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from itertools import islice
from typing import Any, Final

from asgiref.sync import sync_to_async
from django.db import connections
from django.db import models as dj_models
from django.db import router as dj_router
from django.db.models import query as dj_query
from django.db.models.query import QuerySet, RawQuerySet, prefetch_related_objects

from . import bridge, fastlane, materialise
from .aliases import is_pool_alias, pool_aliases
from .conf import app_settings
from .dispatch import REPLICA_GONE, bridged, dispatch, fallback_alias, run
from .errors import ConfigurationError

__all__ = [
    "bridged",
    "follow_settings",
    "install",
    "is_pool_alias",
    "pool_aliases",
    "run",
    "uninstall",
]

READ_METHODS: Final = {
    "aget": "get", "afirst": "first", "alast": "last", "acount": "count",
    "aexists": "exists", "aaggregate": "aggregate", "ain_bulk": "in_bulk",
    "acontains": "contains", "aearliest": "earliest", "alatest": "latest",
    "aexplain": "explain",
}

_stock: dict[tuple[object, str], Any] = {}


def _on(qs: Any, alias: str | None) -> Any:
    return qs if alias is None or alias == qs.db else qs.using(alias)


def _read_method(sync_name: str, stock: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(stock)
    async def method(self: QuerySet[Any], *args: Any, **kwargs: Any) -> Any:
        return await dispatch(
            self.db, self._prefetch_related_lookups,  # type: ignore[attr-defined]
            lambda: bridge.call_in_bridge(getattr(self, sync_name), args, kwargs),
            lambda alias: stock(_on(self, alias), *args, **kwargs),
        )

    return method


def _fast_aget(stock: Callable[..., Any]) -> Callable[..., Any]:
    """``aget()`` with the fast lane (FAST_LANE true): see django_readonly_pool.fastlane."""
    @functools.wraps(stock)
    async def aget(self: QuerySet[Any], *args: Any, **kwargs: Any) -> Any:
        alias = self.db

        def on_pool() -> Awaitable[Any]:
            fast = fastlane.fast_get(self, alias, args, kwargs)
            return fast if fast is not None else bridge.call_in_bridge(self.get, args, kwargs)

        return await dispatch(alias, self._prefetch_related_lookups,  # type: ignore[attr-defined]
                              on_pool, lambda target: stock(_on(self, target), *args, **kwargs))

    return aget


def _fast_scalar(sync_name: str, stock: Callable[..., Any]) -> Callable[..., Any]:
    """``acount()`` / ``aexists()`` with the fast lane: see django_readonly_pool.fastlane."""
    @functools.wraps(stock)
    async def method(self: QuerySet[Any], *args: Any, **kwargs: Any) -> Any:
        alias = self.db

        def on_pool() -> Awaitable[Any]:
            fast = None if args or kwargs else fastlane.fast_scalar(self, alias, sync_name)
            return fast if fast is not None else bridge.call_in_bridge(getattr(self, sync_name), args, kwargs)

        return await dispatch(alias, self._prefetch_related_lookups,  # type: ignore[attr-defined]
                              on_pool, lambda target: stock(_on(self, target), *args, **kwargs))

    return method


# The methods the fast lane changes, and their sync twins.
_FAST: Final = {"aget": ("get", _fast_aget), "acount": ("count", None), "aexists": ("exists", None)}


def _fast_lane() -> bool:
    try:
        return app_settings().fast_lane
    except ConfigurationError:
        return True  # the system check reports the bad setting


def _follow(name: str) -> None:
    """Install *name* (a method of _FAST) as FAST_LANE says."""
    sync_name, fast = _FAST[name]
    stock = _stock[(QuerySet, name)]
    if not _fast_lane():
        method = _read_method(sync_name, stock)
    else:
        method = fast(stock) if fast is not None else _fast_scalar(sync_name, stock)
    setattr(QuerySet, name, method)


def _follow_fast_lane() -> None:
    """FAST_LANE also chooses how rows read on the pool become instances."""
    if _fast_lane():
        materialise.install()
    else:
        materialise.uninstall()


async def _fetch_all(qs: Any) -> None:
    """``async for`` on a queryset (or a raw one): fill its result cache."""
    async def elsewhere(alias: str | None) -> None:
        source = _on(qs, alias)
        await sync_to_async(source._fetch_all)()
        if source is not qs:  # fell back: the primary's rows are the answer
            qs._result_cache, qs._prefetch_done = source._result_cache, source._prefetch_done

    alias = qs.db

    def on_pool() -> Awaitable[None]:
        fast = fastlane.fast_fetch(qs, alias)
        return fast if fast is not None else bridge.call_in_bridge(qs._fetch_all, (), {})

    await dispatch(alias, getattr(qs, "_prefetch_related_lookups", ()), on_pool, elsewhere)


def _make_aiter(owner: type) -> Callable[[Any], AsyncIterator[Any]]:
    def __aiter__(self: Any) -> AsyncIterator[Any]:  # noqa: N807
        async def generator() -> AsyncIterator[Any]:
            if self._result_cache is None:
                await _fetch_all(self)
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
    aliases (one held connection) and through ``sync_to_async`` for any other. A
    stream the router started on a replica that turns out unavailable before its
    first chunk starts again on the primary (``FALLBACK="primary"``)."""
    if chunk_size <= 0:
        raise ValueError("Chunk size must be strictly positive.")
    alias = self.db
    lookups = self._prefetch_related_lookups  # type: ignore[attr-defined]
    stream = _stream(self.using(alias), alias, lookups, chunk_size)
    try:
        try:
            first = await anext(stream)
        except StopAsyncIteration:
            return
        except REPLICA_GONE:
            primary = fallback_alias(alias)
            if primary is None:
                raise
            await stream.aclose()
            stream = _stream(self.using(primary), primary, lookups, chunk_size)
            try:
                first = await anext(stream)
            except StopAsyncIteration:
                return
        yield first
        async for item in stream:
            yield item
    finally:
        await stream.aclose()  # at once: the stream holds a pooled connection


async def _stream(qs: QuerySet[Any], alias: str | None, lookups: Any, chunk_size: int) -> AsyncGenerator[Any]:
    step: Callable[..., Any]
    if bridged(alias, lookups):
        # Streaming works through PgBouncer, so DISABLE_SERVER_SIDE_CURSORS (a
        # workaround for WITH HOLD cursors) does not turn it off here.
        chunked = True
        step = bridge.call_in_bridge
    else:
        # Django's own aiterator() starts some iterables (values_list) on the
        # event loop, where they fail: every step runs in the request's thread.
        chunked = not connections[alias or "default"].settings_dict.get("DISABLE_SERVER_SIDE_CURSORS")
        step = _in_thread
    iterable = qs._iterable_class(qs, chunked_fetch=chunked, chunk_size=chunk_size)
    # Some iterables (values_list) run their query in __iter__: start it where it reads.
    rows = await step(iter, (iterable,), {})
    try:
        while True:
            chunk = await step(_take, (rows, chunk_size), {})
            if lookups and chunk:
                await step(prefetch_related_objects, (chunk, *lookups), {})
            for item in chunk:
                yield item
            if len(chunk) < chunk_size:
                break
    finally:
        # Ends the stream (and returns its connection) when the iteration
        # ends, fails, or is abandoned.
        await step(getattr(rows, "close", _noop), (), {})


def _noop() -> None:
    return None


async def _aprefetch_related_objects(model_instances: Any, *related_lookups: Any) -> Any:
    instances = list(model_instances)
    alias = dj_router.db_for_read(type(instances[0]), instance=instances[0]) if instances else None
    stock = _stock[(dj_query, "aprefetch_related_objects")]
    return await dispatch(
        alias, related_lookups,
        lambda: bridge.call_in_bridge(prefetch_related_objects, (instances, *related_lookups), {}),
        lambda target: stock(instances, *related_lookups),
    )


async def _arefresh_from_db(self: dj_models.Model, using: str | None = None, fields: Any = None,
                            from_queryset: Any = None) -> None:
    alias = from_queryset.db if from_queryset is not None else (
        using or dj_router.db_for_read(type(self), instance=self))
    stock = _stock[(dj_models.Model, "arefresh_from_db")]

    def elsewhere(target: str | None) -> Any:
        fallback = target if target != alias else using
        queryset = _on(from_queryset, target) if from_queryset is not None else None
        return stock(self, using=fallback, fields=fields, from_queryset=queryset)

    await dispatch(
        alias, (),
        lambda: bridge.call_in_bridge(
            self.refresh_from_db, (), {"using": using, "fields": fields, "from_queryset": from_queryset}),
        elsewhere,
    )


# --------------------------------------------------------------------------- #
# Install / uninstall
# --------------------------------------------------------------------------- #


def _patch(owner: object, name: str, value: Any) -> None:
    _stock.setdefault((owner, name), getattr(owner, name))
    setattr(owner, name, value)


def install() -> None:
    """Replace Django's async ORM reads by bridge-aware ones (idempotent)."""
    if _stock:
        return
    for name, sync_name in READ_METHODS.items():
        if hasattr(QuerySet, name):
            _patch(QuerySet, name, _read_method(sync_name, getattr(QuerySet, name)))
    for name in _FAST:
        _follow(name)
    _patch(QuerySet, "__aiter__", _make_aiter(QuerySet))
    _patch(RawQuerySet, "__aiter__", _make_aiter(RawQuerySet))
    _patch(QuerySet, "aiterator", functools.wraps(QuerySet.aiterator)(_aiterator))
    _patch(dj_query, "aprefetch_related_objects", _aprefetch_related_objects)
    _patch(dj_models, "aprefetch_related_objects", _aprefetch_related_objects)
    _patch(dj_models.Model, "arefresh_from_db", _arefresh_from_db)
    _follow_fast_lane()


def uninstall() -> None:
    """Restore Django's own methods."""
    for (owner, name), value in _stock.items():
        setattr(owner, name, value)
    _stock.clear()
    materialise.uninstall()


def follow_settings(**kwargs: Any) -> None:
    """``setting_changed`` receiver: ``FAST_LANE`` chooses the ``aget()``, ``acount()`` and
    ``aexists()`` installed."""
    if kwargs.get("setting") == "READONLY_POOL" and (QuerySet, "aget") in _stock:
        for name in _FAST:
            _follow(name)
        _follow_fast_lane()

"""Where an async read runs: the bridge for pool aliases, Django's path elsewhere.

Every async read of this package goes through :func:`dispatch`: Django's async
QuerySet methods (installed by :mod:`~django_readonly_pool.orm`) and
:func:`run`. The router's answer holds for the whole call (every statement of
it goes to that alias). A call takes the bridge only when all its reads go to
pool aliases: its alias and the alias of every ``Prefetch(queryset=...)`` that
names one (recursively). A read that finds the replica unavailable (down,
cannot connect, cannot prewarm) runs again on the primary when ``FALLBACK`` is
``"primary"``: no read fails because the replica is down, the first included.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final, ParamSpec, TypeVar

from asgiref.sync import sync_to_async

from . import bridge
from .aliases import is_pool_alias
from .conf import app_settings
from .errors import PrewarmFailed, ReplicaUnavailable
from .router import _decided, current_read_alias

__all__ = ["REPLICA_GONE", "bridged", "dispatch", "fallback_alias", "run"]

P = ParamSpec("P")
T = TypeVar("T")
# The replica cannot serve (down, cannot connect, cannot prewarm): not a query error.
REPLICA_GONE: Final = (ReplicaUnavailable, PrewarmFailed)


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


def fallback_alias(alias: str | None) -> str | None:
    """Where a read that found *alias*'s replica unavailable runs again, or None."""
    settings = app_settings()
    if settings.fallback != "primary" or alias in (None, settings.primary):
        return None
    return settings.primary


async def dispatch(alias: str | None, lookups: Any,
                   on_pool: Callable[[], Awaitable[T]], elsewhere: Callable[[str | None], Awaitable[T]]) -> T:
    """Run a read on *alias*: *on_pool* in the bridge, or *elsewhere(alias)* on Django's path."""
    token = _decided.set(alias)
    try:
        if not (is_pool_alias(alias) and (not lookups or _prefetches_on_pools(lookups))):  # bridged()
            return await elsewhere(alias)
        try:
            return await on_pool()
        except REPLICA_GONE:
            primary = fallback_alias(alias)
            if primary is None:
                raise
            _decided.set(primary)
            return await elsewhere(primary)
    finally:
        _decided.reset(token)


async def run(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """Run the synchronous *fn* (ORM reads on pool aliases) from async code.

    ``await django_readonly_pool.run(fn, *args, **kwargs)`` runs *fn* on the
    event-loop thread; every query it sends to a pool alias awaits the async
    pool, so concurrent calls run concurrently without threads. Use it for code
    that mixes several ORM calls::

        def load(pk):
            book = Book.objects.select_related("author").get(pk=pk)
            return book, list(book.reviews.all()[:10])

        book, reviews = await django_readonly_pool.run(load, pk)

    Queries in *fn* must target pool aliases: the router's choice for reads is
    honoured, and when it sends reads elsewhere (a read-your-writes pin, a
    replica marked down, tests running on a test mirror) *fn* runs through
    Django's ``sync_to_async`` instead, exactly as without this package. When
    the replica turns out unavailable while *fn* runs (``FALLBACK="primary"``),
    *fn* runs again, on the primary: it should only read.
    """
    return await dispatch(
        current_read_alias(), (),
        lambda: bridge.call_in_bridge(fn, args, kwargs),
        lambda alias: sync_to_async(fn)(*args, **kwargs),
    )

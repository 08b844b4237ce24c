"""The router: reads to the read-only alias, writes and migrations to the primary.

``DATABASE_ROUTERS = ["django_readonly_pool.router.ReadOnlyRouter"]``

Reads go to the primary instead when they must see a write:

1. inside ``transaction.atomic()`` on the primary;
2. for the rest of the request (or task) after a write in it (``PIN_AFTER_WRITE``);
3. for ``STICKY_SECONDS`` after an unsafe request of the same client (the
   cookie set by :class:`~django_readonly_pool.middleware.ReadOnlyPoolMiddleware`);
4. inside :class:`use_primary` (a context manager and a decorator);
5. when the replica is down, promoted or too far behind (``FALLBACK="primary"``);
6. in tests, while Django's test runner mirrors the alias (``TESTS_READ_PRIMARY``).

All state lives in context variables, never in thread-locals, so it is right
under ASGI (one context per request and task) and WSGI alike. A request's state
is one mutable :class:`RoutingScope`, shared by the tasks the request spawns,
so a write in a child task pins the whole request. Outside any request or
:func:`routing_scope`, a write pins the current context for ``STICKY_SECONDS``
only, so a long-lived worker thread does not read from the primary forever.
The router does no I/O and costs a few microseconds per call (see ``benchmarks``).
"""

from __future__ import annotations

import functools
import inspect
import itertools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from time import monotonic
from typing import Any, TypeVar

from django.db import connections

from .aliases import read_aliases, test_mirrors
from .conf import app_settings
from .health import replica_usable

__all__ = [
    "ReadOnlyRouter",
    "RoutingScope",
    "current_read_alias",
    "is_pinned",
    "pin_to_primary",
    "routing_scope",
    "unpin",
    "use_primary",
]

F = TypeVar("F", bound=Callable[..., Any])


class RoutingScope:
    """Read-your-writes state of one request, task or job."""

    __slots__ = ("implicit", "pinned", "until", "wrote")

    def __init__(self, pinned: bool = False, *, implicit: bool = False) -> None:
        self.pinned = pinned  # reads go to the primary for the rest of the scope
        self.until = 0.0  # ... or until this monotonic time (implicit scopes)
        self.wrote = False  # a write happened in this scope
        self.implicit = implicit  # created by a write outside any request or job

    def __repr__(self) -> str:
        return f"<RoutingScope pinned={self.pinned} until={self.until} wrote={self.wrote}>"

    def reads_primary(self) -> bool:
        return self.pinned or (self.until != 0.0 and monotonic() < self.until)


_scope: ContextVar[RoutingScope | None] = ContextVar("readonly_pool_scope", default=None)
_forced: ContextVar[int] = ContextVar("readonly_pool_use_primary", default=0)
# The alias chosen when an async ORM call or run() started: every read of that
# call goes there, even if the replica's health changes meanwhile.
_decided: ContextVar[str | None] = ContextVar("readonly_pool_decided", default=None)
_round_robin = itertools.count()


def _current_scope(create: bool) -> RoutingScope | None:
    scope = _scope.get()
    if scope is None and create:
        scope = RoutingScope(implicit=True)
        _scope.set(scope)
    return scope


def start_scope(pinned: bool = False) -> RoutingScope:
    """Begin a fresh scope in the current context (the request_started receiver)."""
    scope = RoutingScope(pinned)
    _scope.set(scope)
    return scope


@contextmanager
def routing_scope(*, pinned: bool = False) -> Iterator[RoutingScope]:
    """A fresh read-your-writes scope for a unit of work outside requests.

    Use it around each job of a task runner, so that a write in one job does
    not pin the reads of the next one::

        with routing_scope():
            run_job()
    """
    token = _scope.set(RoutingScope(pinned))
    try:
        yield _scope.get()  # type: ignore[misc]
    finally:
        _scope.reset(token)


def pin_to_primary() -> None:
    """Send this scope's reads to the primary from now on."""
    scope = _current_scope(create=True)
    assert scope is not None
    scope.pinned = True


def unpin() -> None:
    """Let this scope's reads go to the replica again."""
    scope = _current_scope(create=False)
    if scope is not None:
        scope.pinned = False
        scope.until = 0.0


def is_pinned() -> bool:
    scope = _scope.get()
    return bool(_forced.get() or (scope is not None and scope.reads_primary()))


def note_write() -> None:
    """Record a write in this scope and, with ``PIN_AFTER_WRITE``, pin it."""
    scope = _current_scope(create=True)
    assert scope is not None
    scope.wrote = True
    settings = app_settings()
    if settings.pin_after_write:
        if scope.implicit:
            scope.until = monotonic() + settings.sticky_seconds
        else:
            scope.pinned = True


class use_primary:  # noqa: N801 - reads like a function
    """Send reads to the primary inside a block or a (sync or async) function.

    ::

        with use_primary():
            order = Order.objects.get(pk=pk)

        @use_primary()
        async def view(request): ...
    """

    def __init__(self) -> None:
        self._tokens: list[Any] = []

    def __enter__(self) -> use_primary:
        self._tokens.append(_forced.set(_forced.get() + 1))
        return self

    def __exit__(self, *exc_info: object) -> None:
        _forced.reset(self._tokens.pop())

    def __call__(self, func: F) -> F:
        if inspect.iscoroutinefunction(func):
            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                with use_primary():
                    return await func(*args, **kwargs)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with use_primary():
                return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]


# --------------------------------------------------------------------------- #
# The decision
# --------------------------------------------------------------------------- #


def current_read_alias() -> str | None:
    """Where a read issued here and now goes (None: no read-only alias exists)."""
    settings = app_settings()
    aliases = read_aliases(settings)
    if not aliases:
        return None
    primary = settings.primary
    if _forced.get():
        return primary
    decided = _decided.get()
    if decided is not None:
        return decided
    scope = _scope.get()
    if scope is not None and scope.reads_primary():
        return primary
    # In transaction.atomic() on the primary: the wrapper of this thread/context, not created here.
    wrapper = getattr(getattr(connections, "_connections", None), primary, None)
    if wrapper is not None and wrapper.in_atomic_block:
        return primary
    alias = aliases[0] if len(aliases) == 1 else aliases[next(_round_robin) % len(aliases)]
    mirror = test_mirrors.get(alias)
    if mirror is not None:
        return mirror
    # With FALLBACK="fail" an unusable replica keeps its reads: they fail fast
    # (ReplicaUnavailable) instead of loading the primary.
    if not replica_usable(alias) and settings.fallback == "primary":
        return primary
    return alias


class ReadOnlyRouter:
    """Reads to the read-only alias, writes and migrations to the primary."""

    def _managed(self) -> tuple[str, ...]:
        settings = app_settings()
        return (settings.primary, *read_aliases(settings))

    def db_for_read(self, model: type[Any], **hints: Any) -> str | None:
        alias = current_read_alias()
        instance = hints.get("instance")
        if instance is not None:
            db: str | None = instance._state.db
            if db is not None and db != alias:
                if db not in self._managed():
                    return None  # an object of an alias we do not manage
                readonly = read_aliases()
                if alias in readonly and db in readonly:
                    return db  # keep an object graph on one replica
        return alias

    def db_for_write(self, model: type[Any], **hints: Any) -> str | None:
        instance = hints.get("instance")
        if instance is not None and instance._state.db not in (None, *self._managed()):
            return None
        note_write()
        return app_settings().primary

    def allow_relation(self, obj1: Any, obj2: Any, **hints: Any) -> bool | None:
        managed = self._managed()
        if obj1._state.db in managed and obj2._state.db in managed:
            return True  # same data on the primary and its replicas
        return None

    def allow_migrate(self, db: str, app_label: str, model_name: str | None = None,
                      **hints: Any) -> bool | None:
        if db in read_aliases():
            return False  # a replica gets its schema from the primary
        return None

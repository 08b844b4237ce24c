"""Tests that read from the real replica (not the test mirror's primary).

While Django's test runner mirrors a pool alias, its reads go to ``default``
(``TESTS_READ_PRIMARY``), so tests see their own uncommitted rows. A test that
means to read *from the replica* needs three things: its writes committed (a
``TransactionTestCase``, or ``django_db(transaction=True)``), the redirection
off, and to wait until the replica has replayed what was written (and to drop
the read-your-writes pin its own writes set). :func:`replica_reads` does the
last two::

    from django_readonly_pool.testing import replica_reads

    class ReplicaTests(TransactionTestCase):
        databases = "__all__"

        def test_reads_from_the_replica(self):
            with replica_reads() as replica:
                Item.objects.create(name="x")
                replica.wait_for_replay()
                item = Item.objects.get(name="x")
                assert item._state.db == "readonly"

With pytest, the ``readonly_pool_replica`` marker does the same around a test
(``django_db(transaction=True, databases="__all__")`` included) and the fixture
of the same name gives the helper (``wait_for_replay()``, ``await_replay()``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connections
from django.test import override_settings

from django_readonly_pool.aliases import pool_aliases, test_mirrors_suspended
from django_readonly_pool.conf import app_settings
from django_readonly_pool.router import unpin

__all__ = ["ReplicaReads", "replica_reads"]


class ReplicaReads:
    """Waits until the read-only aliases have replayed the primary's writes."""

    def __init__(self, aliases: list[str], timeout: float) -> None:
        self.aliases = aliases
        self.timeout = timeout

    def wait_for_replay(self) -> None:
        """Block until every read-only alias has replayed what the primary wrote so far,
        and drop this scope's read-your-writes pin (the next reads go to the replica)."""
        unpin()
        with connections[app_settings().primary].cursor() as cursor:
            cursor.execute("SELECT pg_catalog.pg_current_wal_lsn()::text")
            (lsn,) = cursor.fetchone()
        deadline = time.monotonic() + self.timeout
        for alias in self.aliases:
            while True:
                with connections[alias].cursor() as cursor:
                    # NULL on a primary (no replay): nothing to wait for.
                    cursor.execute("SELECT COALESCE(pg_catalog.pg_last_wal_replay_lsn() >= %s::pg_lsn, true)",
                                   [lsn])
                    (caught_up,) = cursor.fetchone()
                if caught_up:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{alias!r} did not replay the primary's WAL up to {lsn} "
                                       f"within {self.timeout:g} s")
                time.sleep(0.01)

    async def await_replay(self) -> None:
        """:meth:`wait_for_replay` for async tests."""
        unpin()  # in this context (the thread below has its own)
        await sync_to_async(self.wait_for_replay)()


@contextmanager
def replica_reads(aliases: list[str] | None = None, *, timeout: float = 30.0) -> Iterator[ReplicaReads]:
    """Inside, reads routed to pool aliases go to their real servers (see the module)."""
    names = aliases if aliases is not None else list(app_settings().readonly_aliases or pool_aliases())
    current: dict[str, Any] = dict(getattr(settings, "READONLY_POOL", None) or {})
    with override_settings(READONLY_POOL={**current, "TESTS_READ_PRIMARY": False}), test_mirrors_suspended():
        yield ReplicaReads(names, timeout)

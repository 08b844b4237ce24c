"""The sync twin: Django's built-in pool of a pool alias, for sync code.

:class:`SyncReadPool` is psycopg's ``ConnectionPool`` (what Django's pool is),
with the check semantics of the async pool (:mod:`.policy`: the ``PRE_PING``
window, checks bounded by ``CHECK_TIMEOUT``, a flush instead of a back-off
sleep, reconnects at most 2 s apart, last in, first out), the same session
setup and reset, and the replica's health watched: with ``FALLBACK="primary"``
no sync read fails because the replica is down, it gets a connection of the
primary. Everything it adds is an underscore name (``_rop_*``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from time import monotonic
from typing import Any, Final

import psycopg
from psycopg.pq import ConnStatus, TransactionStatus
from psycopg_pool import ConnectionPool, PoolTimeout

from django_readonly_pool.conf import app_settings
from django_readonly_pool.events import breaker_open, notify_connection_failed, unusable

from . import messages
from ._psycopg import SyncInternals
from .policy import due_for_ping, mark_used
from .session import SessionSetup

__all__ = ["SyncReadPool"]

_IDLE: Final = TransactionStatus.IDLE
_BAD: Final = ConnStatus.BAD
_WATCH_SLICE: Final = 0.5  # a checkout looks at the replica's health this often while it waits


class SyncReadPool(SyncInternals):
    """Django's sync psycopg pool with the read pool's semantics."""

    def __init__(self, *, session: SessionSetup, reset_sessions: bool, pre_ping: bool = True,
                 ping_interval: float = 0.5, check_timeout: float = 5.0, alias: str | None = None,
                 fallback: Callable[[], ConnectionPool[Any]] | None = None, **kwargs: Any) -> None:
        self._rop_session = session
        self._rop_reset_sessions = reset_sessions
        self._rop_ping_interval = ping_interval
        self._rop_alias = alias  # the replica's alias (its health decides the fallback)
        self._rop_make_fallback = fallback
        self._rop_fallback: ConnectionPool[Any] | None = None
        self._rop_fallback_lock = threading.Lock()
        self._rop_flushing: threading.Thread | None = None
        super().__init__(failed_check=self._rop_flush, check_timeout=check_timeout,
                         check=self._rop_check if pre_ping else None, configure=self._rop_configure, **kwargs)

    def getconn(self, timeout: float | None = None) -> Any:
        """A connection, or, the replica being unavailable (``FALLBACK="primary"``), one of
        the primary (Django returns it to its own pool): no sync read fails because the
        replica is down. While waiting, the replica's health is watched: a ``down``
        verdict ends the wait at once."""
        alias = self._rop_alias
        if alias is None:
            return super().getconn(timeout)
        budget = self.timeout if timeout is None else timeout
        deadline = monotonic() + budget
        reported = False
        while True:
            if unusable and breaker_open(alias):
                return self._rop_unavailable(alias, timeout)
            try:
                return super().getconn(max(0.001, min(_WATCH_SLICE, deadline - monotonic())))
            except PoolTimeout:
                if monotonic() >= deadline:
                    raise PoolTimeout(f"couldn't get a connection after {budget:.2f} sec") from None
                if not reported:  # no connection at once: let the probe look at the replica
                    notify_connection_failed(alias)
                    reported = True

    def _rop_unavailable(self, alias: str, timeout: float | None) -> Any:
        if self._rop_make_fallback is not None and app_settings().fallback == "primary":
            with self._rop_fallback_lock:
                if self._rop_fallback is None:
                    self._rop_fallback = self._rop_make_fallback()
                    self._rop_fallback.open()
            return self._rop_fallback.getconn(timeout)
        raise messages.replica_unavailable(alias)

    def close(self, timeout: float = 5.0) -> None:
        if self._rop_fallback is not None:
            self._rop_fallback.close(timeout)
        super().close(timeout)

    def _rop_configure(self, conn: psycopg.Connection[Any]) -> None:
        """Django's session settings (time zone, role), read-only when direct."""
        tz = conn.info.parameter_status("TimeZone")
        conn.execute(self._rop_session.configure_sql(tz, conn.info.backend_pid))  # autocommit: see the backend
        conn._rop_reset_sql = self._rop_session.reset_sql(tz, conn.info.backend_pid)  # type: ignore[attr-defined]
        mark_used(conn)  # verified by configuring (and marks it as this package's)

    def _rop_check(self, conn: psycopg.Connection[Any]) -> None:
        """psycopg's ``check`` callback: the PRE_PING window, then a bounded ping."""
        if due_for_ping(conn, self._rop_ping_interval):
            self.check_connection(conn)

    def _rop_flush(self) -> None:
        """A dead connection was found: check the idle ones in the background (once at a time)."""
        if self._rop_flushing is None or not self._rop_flushing.is_alive():
            self._rop_flushing = threading.Thread(target=self.check, name=f"{self.name}-flush", daemon=True)
            self._rop_flushing.start()

    def putconn(self, conn: Any) -> None:
        if self._rop_reset_sessions and not conn.closed and conn.pgconn.status != _BAD:
            # POOL_SKIP_ROLLBACK false: back to a clean, configured session (in the
            # returning thread, so the connection is back at once, for the next
            # borrower: last in, first out).
            try:
                if conn.pgconn.transaction_status != _IDLE:
                    conn.rollback()
                if not conn.autocommit:
                    conn.autocommit = True  # client-side only while IDLE; Django sets it on checkout
                conn.execute(conn._rop_reset_sql)
            except psycopg.Error:
                conn.close()  # not known clean: psycopg discards it and opens another
        mark_used(conn)
        super().putconn(conn)

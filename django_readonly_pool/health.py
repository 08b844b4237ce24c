"""Replica health and lag, watched in the background: the circuit breaker.

A daemon thread (started on the first routed read, or the first connection a
pool fails to make) runs its own event loop and probes every read-only alias
each ``HEALTH_CHECK_INTERVAL`` seconds, on its own connections (a saturated
pool does not delay the probe):

* on the replica: recovery, the WAL received and replayed, replay paused, the
  age of the last replayed transaction (:mod:`~django_readonly_pool.replication`);
* on the primary, only when ``MAX_LAG_SECONDS`` or ``MAX_LAG_BYTES`` is set:
  ``pg_current_wal_lsn()`` (without a limit, lag is what the replica received
  but has not replayed yet, and the primary is not contacted).

When the verdict is ``down``, ``promoted`` or ``lagging`` the router sends reads
to the primary (``FALLBACK="primary"``) or the pools fail them at once
(``FALLBACK="fail"``, :class:`~django_readonly_pool.errors.ReplicaUnavailable`;
with ``"primary"`` only ``down`` fails the reads that name the alias with
``.using()``); the probe keeps retrying, and reads go back to the replica as
soon as it is healthy. A ``down`` verdict fails the reads waiting for a
connection and aborts the statements in flight on that replica (a frozen
network would otherwise hold them). The verdicts reach the pools through
:mod:`~django_readonly_pool.events`; this module imports no pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from typing import Any, Final

import psycopg
from django.db import connections
from psycopg import AsyncConnection

from . import events
from .aliases import pool_settings, read_aliases
from .conf import SECRET_KEYS, app_settings, scrub
from .interrupt import interrupt_after
from .replication import (
    DOWN,
    LAGGING,
    PRIMARY,
    PRIMARY_LSN_SQL,
    PROMOTED,
    REPLICA_STATE_SQL,
    UNKNOWN,
    UP,
    USABLE,
    ReplicaHealth,
    evaluate,
    parse_lsn,
)

__all__ = [
    "DOWN",
    "LAGGING",
    "PRIMARY",
    "PROMOTED",
    "UNKNOWN",
    "UP",
    "ReplicaHealth",
    "evaluate",
    "health_report",
    "monitor",
    "parse_lsn",
    "replica_usable",
]

logger = logging.getLogger("django_readonly_pool")

_DETAIL: Final = {DOWN: "no answer", PROMOTED: "not a standby any more", LAGGING: "beyond MAX_LAG_*"}
_states: dict[str, ReplicaHealth] = {}


def replica_usable(alias: str) -> bool:
    """Cheap: may reads go to *alias* now? Starts the monitor on first use."""
    if not monitor.running:
        monitor.start()
    return alias not in events.unusable


def health_report() -> dict[str, dict[str, Any]]:
    """The verdict of every probed alias (for the health view and metrics)."""
    return {alias: state.as_dict() for alias, state in _states.items()}


def _connect_params(alias: str, timeout: float) -> tuple[dict[str, Any], tuple[str, ...]]:
    """libpq parameters of *alias*'s own connections, for a probe; and their secrets."""
    params = connections[alias].get_connection_params()
    params.pop("cursor_factory", None)
    params["connect_timeout"] = max(2, int(timeout))
    params["application_name"] = "django_readonly_pool health"
    secrets = tuple(str(v) for k, v in params.items() if k in SECRET_KEYS and v)
    return params, secrets


class _Monitor:
    """The probing thread (one per process)."""

    def __init__(self) -> None:
        self.running = False
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._stopping = False
        self._conns: dict[tuple[str, str], AsyncConnection[Any]] = {}

    def start(self) -> None:
        with self._lock:
            if self.running:
                return
            self.running = True
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="readonly-pool-health", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop probing and forget every verdict (tests, settings changes)."""
        with self._lock:
            thread, loop = self._thread, self._loop
            self._stopping = True
            if loop is not None and self._wake is not None:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(self._wake.set)
        if thread is not None:
            thread.join(15)
        with self._lock:
            self.running = False
            self._thread = None
        _states.clear()
        events.unusable.clear()

    def wake(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(wake.set)

    def connection_failed(self, alias: str) -> None:
        """A pool saw the replica fail (events.connection_failed): probe it now, starting
        the monitor if no routed read has yet, so the breaker opens for the reads waiting."""
        if not self.running:
            self.start()
        self.wake()

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._main())
        except Exception:  # pragma: no cover - never let the thread die silently
            logger.exception("readonly pool health monitor stopped")
        finally:
            for conn in self._conns.values():
                with contextlib.suppress(Exception):
                    loop.run_until_complete(conn.close())
            self._conns.clear()
            loop.close()
            self._loop = None

    async def _main(self) -> None:
        self._wake = asyncio.Event()
        while not self._stopping:
            settings = app_settings()
            with contextlib.suppress(Exception):
                await self.probe_all()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), settings.health_check_interval)

    async def probe_all(self) -> None:
        await asyncio.gather(*(self.probe(alias) for alias in read_aliases()))

    async def _connection(self, alias: str, role: str, timeout: float) -> AsyncConnection[Any]:
        key = (alias, role)
        conn = self._conns.get(key)
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        params, _ = _connect_params(app_settings().primary if role == "primary" else alias, timeout)
        conn = await asyncio.wait_for(psycopg.AsyncConnection.connect(autocommit=True, **params), timeout)
        self._conns[key] = conn
        return conn

    async def _close(self, alias: str, role: str) -> None:
        conn = self._conns.pop((alias, role), None)
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    async def _query(self, alias: str, role: str, sql: str, timeout: float) -> tuple[Any, ...]:
        conn = await self._connection(alias, role, timeout)
        # Not an asyncio timeout: cancelling the query would wait for a cancel request
        # to get through, as long as a frozen network stays frozen.
        interrupt = interrupt_after(timeout, conn)
        try:
            cur = await conn.execute(sql)
            row = await cur.fetchone()
        except BaseException as exc:
            self._conns.pop((alias, role), None)
            with contextlib.suppress(Exception):
                await conn.close()
            if interrupt.when() <= asyncio.get_running_loop().time():
                raise TimeoutError(f"no answer within {timeout:g} s") from exc
            raise
        finally:
            interrupt.cancel()
        assert row is not None
        return tuple(row)

    async def probe(self, alias: str) -> ReplicaHealth:
        settings = app_settings()
        state = _states.setdefault(alias, ReplicaHealth(alias))
        pool = pool_settings(alias)
        # A healthy replica answers within CHECK_TIMEOUT (as the pool's pings must):
        # beyond it, a silent network counts as down.
        timeout = min(float(pool.connect_timeout), pool.check_timeout)
        try:
            try:
                row = await self._query(alias, "replica", REPLICA_STATE_SQL, timeout)
            except psycopg.OperationalError:
                # The probe's own connection may have died (a restart) while
                # the server is fine again: one fresh attempt decides. (A
                # timeout is no such case: it is the answer.)
                row = await self._query(alias, "replica", REPLICA_STATE_SQL, timeout)
        except Exception as exc:  # noqa: BLE001 - no answer at all means down
            if isinstance(exc, TimeoutError):
                reason = f"no answer within {timeout:g} s"
            else:
                reason = scrub(str(exc).strip(), _connect_params(alias, timeout)[1]) or type(exc).__name__
            self._set(state, DOWN, error=reason)
            return state
        in_recovery, receive, replay, paused, age = row
        reference = parse_lsn(receive)
        if settings.max_lag_seconds is not None or settings.max_lag_bytes is not None:
            try:
                (primary_text,) = await self._query(alias, "primary", PRIMARY_LSN_SQL, timeout)
                reference = parse_lsn(primary_text)
            except Exception:  # noqa: BLE001 - lag unknown; evaluate() decides
                reference = None
        else:
            await self._close(alias, "primary")
        status, lag_seconds, lag_bytes = evaluate(
            in_recovery=bool(in_recovery), replay_lsn=parse_lsn(replay), primary_lsn=reference,
            replay_age=age, paused=paused, max_lag_seconds=settings.max_lag_seconds,
            max_lag_bytes=settings.max_lag_bytes, replica_expected=pool.replica_configured,
        )
        state.in_recovery, state.replay_paused = bool(in_recovery), paused
        state.lag_seconds, state.lag_bytes = lag_seconds, lag_bytes
        self._set(state, status, error=None)
        return state

    def _set(self, state: ReplicaHealth, status: str, *, error: str | None) -> None:
        state.checked_at = time.time()
        state.error = error
        if status not in USABLE:  # published (again) with the latest reason
            events.unusable[state.alias] = (status, error or _DETAIL.get(status, status))
        if status == state.status:
            return
        previous = state.status
        state.status = status
        state.usable = status in USABLE
        state.changed_at = state.checked_at
        if not state.usable:
            state.opened += 1
            logger.warning("readonly pool: replica %r is %s (was %s)%s", state.alias, status, previous,
                           f": {error}" if error else "")
            if status == DOWN:
                events.notify_replica_down(state.alias)
        else:
            events.unusable.pop(state.alias, None)
            if previous != UNKNOWN:
                logger.info("readonly pool: replica %r is up again", state.alias)


monitor: Final = _Monitor()

"""Replica health and lag, watched in the background; the router reads the verdict.

A daemon thread (started on the first routed read) runs its own event loop and
probes every read-only alias each ``HEALTH_CHECK_INTERVAL`` seconds, on its own
connections (a saturated pool does not delay the probe):

* on the replica: ``pg_is_in_recovery()``, ``pg_last_wal_receive_lsn()``,
  ``pg_last_wal_replay_lsn()``, ``pg_last_xact_replay_timestamp()``;
* on the primary, only when ``MAX_LAG_SECONDS`` or ``MAX_LAG_BYTES`` is set:
  ``pg_current_wal_lsn()`` (without a limit, lag is what the replica received
  but has not replayed yet, and the primary is not contacted).

The verdict per alias is one of ``up``, ``lagging`` (beyond ``MAX_LAG_SECONDS``
or ``MAX_LAG_BYTES``), ``promoted`` (a configured replica that is not in
recovery: it stopped being a replica), ``primary`` (the alias deliberately
targets the primary, ``READONLY_SERVER`` unset: usable), ``down`` (cannot
connect, or no answer within ``CHECK_TIMEOUT``), or ``unknown`` (not probed
yet; counts as usable). Lag is
measured by WAL positions: a replica that has replayed everything the primary
wrote lags by 0, however old its last replayed transaction (an idle primary
does not make it look behind). Only when it is behind does the replay
timestamp give the time lag.

This is the circuit breaker: when the verdict is ``down``, ``promoted`` or
``lagging`` the router sends reads to the primary (``FALLBACK="primary"``) or
the pool fails them at once (``FALLBACK="fail"``,
:class:`~django_readonly_pool.errors.ReplicaUnavailable`; with ``"primary"``
only ``down`` fails the reads that name the alias with ``.using()``); the probe
keeps retrying, and reads go back to the replica as soon as it is healthy. A
connection failure seen by a pool wakes the probe at once; a ``down`` verdict
fails the reads waiting for a connection and aborts the statements in flight
on that replica (a frozen network would otherwise hold them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Final

import psycopg
from psycopg import AsyncConnection

from .conf import app_settings
from .interrupt import interrupt_after

__all__ = ["ReplicaHealth", "health_report", "monitor", "replica_usable", "report_failure"]

logger = logging.getLogger("django_readonly_pool")

UNKNOWN: Final = "unknown"
UP: Final = "up"
DOWN: Final = "down"
LAGGING: Final = "lagging"
PROMOTED: Final = "promoted"
PRIMARY: Final = "primary"
USABLE: Final = frozenset({UP, PRIMARY, UNKNOWN})


@dataclass
class ReplicaHealth:
    """The latest verdict on one read-only alias (read by the router)."""

    alias: str
    status: str = UNKNOWN
    usable: bool = True
    lag_seconds: float | None = None
    lag_bytes: int | None = None
    error: str | None = None
    checked_at: float | None = None
    changed_at: float = 0.0
    in_recovery: bool | None = None
    replay_paused: bool | None = None
    opened: int = 0  # times the breaker opened

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_states: dict[str, ReplicaHealth] = {}
# Called with the alias when a replica is found down (the pool registry fails
# the clients waiting for its connections).
on_down: list[Callable[[str, str], None]] = []


def replica_usable(alias: str) -> bool:
    """Cheap: may reads go to *alias* now? Starts the monitor on first use."""
    if not monitor.running:
        monitor.start()
    state = _states.get(alias)
    return state is None or state.usable


def breaker_open(alias: str) -> bool:
    """True when reads on *alias* should fail fast: it is down, or (``FALLBACK="fail"``)
    promoted or lagging."""
    state = _states.get(alias)
    if state is None or state.usable:
        return False
    return state.status == DOWN or app_settings().fallback == "fail"


def report_failure(alias: str, message: str) -> None:
    """A pool saw the replica fail: probe it now (starting the monitor if no routed
    read has yet), so that the breaker can open for the reads waiting."""
    if not monitor.running:
        monitor.start()
    monitor.wake()


def health_report() -> dict[str, dict[str, Any]]:
    """The verdict of every probed alias (for the health view and metrics)."""
    return {alias: state.as_dict() for alias, state in _states.items()}


def parse_lsn(text: str | None) -> int | None:
    """``'16/B374D848'`` -> byte position."""
    if not text:
        return None
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) + int(low, 16)


def evaluate(
    *,
    in_recovery: bool,
    replay_lsn: int | None,
    primary_lsn: int | None,  # or, without a primary probe, the replica's receive LSN
    replay_age: float | None,
    paused: bool | None,
    max_lag_seconds: float | None,
    max_lag_bytes: int | None,
    replica_expected: bool = True,
) -> tuple[str, float | None, int | None]:
    """The verdict for one successful probe: (status, lag seconds, lag bytes).

    *replica_expected* is False for an alias that targets the primary on purpose
    (``READONLY_SERVER`` unset): not being in recovery is then what it should be.
    """
    if not in_recovery:
        return (PROMOTED if replica_expected else PRIMARY), None, None
    lag_bytes: int | None = None
    lag_seconds: float | None = None
    if replay_lsn is not None and primary_lsn is not None:
        lag_bytes = max(0, primary_lsn - replay_lsn)
        # Caught up means no lag, however old the last replayed transaction.
        lag_seconds = 0.0 if lag_bytes == 0 else (replay_age if replay_age is not None else None)
    if max_lag_bytes is not None and lag_bytes is not None and lag_bytes > max_lag_bytes:
        return LAGGING, lag_seconds, lag_bytes
    if max_lag_seconds is not None and lag_seconds is not None and lag_seconds > max_lag_seconds:
        return LAGGING, lag_seconds, lag_bytes
    if (max_lag_bytes is not None or max_lag_seconds is not None) and lag_bytes is None:
        return LAGGING, lag_seconds, lag_bytes  # cannot measure: do not trust it
    return UP, lag_seconds, lag_bytes


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

    def wake(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(wake.set)

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
        from .router import _readonly_aliases

        aliases = list(_readonly_aliases())
        await asyncio.gather(*(self.probe(alias) for alias in aliases))

    async def _connection(self, alias: str, role: str, timeout: float) -> AsyncConnection[Any]:
        from django.db import connections

        key = (alias, role)
        conn = self._conns.get(key)
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        wrapper = connections[alias]
        params = wrapper.get_connection_params()
        if role == "primary":
            params = connections[app_settings().primary].get_connection_params()
        params.pop("cursor_factory", None)
        params["connect_timeout"] = max(2, int(timeout))
        params["application_name"] = "django_readonly_pool health"
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
        from .backend.base import pool_connection

        settings = app_settings()
        state = _states.setdefault(alias, ReplicaHealth(alias))
        pool_settings = pool_connection(alias).readonly_pool_settings
        # A healthy replica answers within CHECK_TIMEOUT (as the pool's pings must):
        # beyond it, a silent network counts as down.
        timeout = min(float(pool_settings.connect_timeout), pool_settings.check_timeout)
        query = (
            "SELECT pg_is_in_recovery(), pg_last_wal_receive_lsn()::text, "
            "pg_last_wal_replay_lsn()::text, "
            "CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() END, "
            "EXTRACT(EPOCH FROM clock_timestamp() - pg_last_xact_replay_timestamp())::float8"
        )
        try:
            try:
                row = await self._query(alias, "replica", query, timeout)
            except psycopg.OperationalError:
                # The probe's own connection may have died (a restart) while
                # the server is fine again: one fresh attempt decides. (A
                # timeout is no such case: it is the answer.)
                row = await self._query(alias, "replica", query, timeout)
        except Exception as exc:  # noqa: BLE001 - no answer at all means down
            reason = f"no answer within {timeout:g} s" if isinstance(exc, TimeoutError) else _describe(exc, alias)
            self._set(state, DOWN, error=reason)
            return state
        in_recovery, receive, replay, paused, age = row
        limits = settings.max_lag_seconds is not None or settings.max_lag_bytes is not None
        reference = parse_lsn(receive)
        if limits:
            try:
                (primary_text,) = await self._query(alias, "primary", "SELECT pg_current_wal_lsn()::text", timeout)
                reference = parse_lsn(primary_text)
            except Exception:  # noqa: BLE001 - lag unknown; evaluate() decides
                reference = None
        else:
            await self._close(alias, "primary")
        status, lag_seconds, lag_bytes = evaluate(
            in_recovery=bool(in_recovery), replay_lsn=parse_lsn(replay), primary_lsn=reference,
            replay_age=age, paused=paused, max_lag_seconds=settings.max_lag_seconds,
            max_lag_bytes=settings.max_lag_bytes, replica_expected=pool_settings.replica_configured,
        )
        state.in_recovery, state.replay_paused = bool(in_recovery), paused
        state.lag_seconds, state.lag_bytes = lag_seconds, lag_bytes
        self._set(state, status, error=None)
        return state

    def _set(self, state: ReplicaHealth, status: str, *, error: str | None) -> None:
        state.checked_at = time.time()
        state.error = error
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
                for callback in on_down:
                    with contextlib.suppress(Exception):
                        callback(state.alias, error or "down")
        elif previous != UNKNOWN:
            logger.info("readonly pool: replica %r is up again", state.alias)


def _describe(exc: BaseException, alias: str) -> str:
    from django.db import connections

    text = str(exc).strip() or type(exc).__name__
    password = connections[alias].settings_dict.get("PASSWORD")
    if password:
        text = text.replace(str(password), "********")
    return text


monitor: Final = _Monitor()

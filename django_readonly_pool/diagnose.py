"""What ``manage.py check_readonly_pool`` measures, as plain data.

:func:`diagnose` opens the alias's pool the way the application will (prewarm
included), measures connect and round-trip times, reads the server's state
(version, standby or not, ``transaction_read_only``, replication lag,
``max_connections`` and current connections) and computes the headroom for a
number of worker processes. It returns a JSON-ready dict (see the README for
the schema). Nothing in it holds a secret.
"""

from __future__ import annotations

import dataclasses
import socket
import statistics
import time
from collections.abc import Callable
from typing import Any

import psycopg
from django.core.checks import Error, Warning
from django.db import connections

from .backend.base import pool_connection
from .checks import READ_ONLY_HINT, check_configuration
from .conf import ConnectionTarget, PoolSettings, app_settings
from .errors import ConfigurationError
from .replication import PRIMARY_LSN_SQL, REPLICA_STATE_COLUMNS, lag, parse_lsn

__all__ = ["SCHEMA", "diagnose"]

SCHEMA = "django-readonly-pool/check/1"
HEALTHY, UNHEALTHY, MISCONFIGURED = "healthy", "unhealthy", "misconfigured"
Progress = Callable[[str, int, int], None]


def _percentiles(samples: list[float]) -> dict[str, Any]:
    if not samples:
        return {"p50": None, "p95": None, "samples": 0}
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"p50": round(statistics.median(ordered), 3), "p95": round(p95, 3), "samples": len(ordered)}


def _resolve(host: str) -> set[str]:
    try:
        return {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
    except OSError:
        return set()


def configuration_messages(alias: str) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(errors, warnings) of the system checks that concern *alias* or all aliases."""
    errors, warnings = [], []
    for message in check_configuration():
        text = message.msg
        concerns = f"[{alias!r}]" in text or "DATABASES[" not in text
        if not concerns:
            continue
        item = {"id": message.id or "", "message": text, "hint": message.hint or ""}
        if isinstance(message, Error):
            errors.append(item)
        elif isinstance(message, Warning):
            warnings.append(item)
    return errors, warnings


async def diagnose(alias: str, *, workers: int = 1, progress: Progress | None = None) -> dict[str, Any]:
    wrapper = pool_connection(alias)
    target = ConnectionTarget.from_settings(wrapper.settings_dict)
    report: dict[str, Any] = {
        "alias": alias,
        "status": HEALTHY,
        "target": {"host": target.host, "port": target.port, "dbname": target.dbname,
                   "user": target.user, "password": "********" if target.password else ""},
        "settings": None,
        "server": None,
        "replication": None,
        "prewarm": None,
        "connect_ms": _percentiles([]),
        "round_trip_ms": _percentiles([]),
        "capacity": None,
        "warnings": [],
        "errors": [],
    }
    errors, warnings = configuration_messages(alias)
    report["warnings"].extend(warnings)
    try:
        settings: PoolSettings = wrapper.readonly_pool_settings
    except ConfigurationError as exc:
        report["errors"].extend({"id": "readonly_pool.E002", "message": p, "hint": ""} for p in exc.problems)
        report["status"] = MISCONFIGURED
        return report
    if errors:
        report["errors"].extend(errors)
        report["status"] = MISCONFIGURED
        return report
    report["settings"] = settings.as_options()

    # Not prewarmed in production: the pool opens (and the sample measures) a few connections.
    sample = settings.pool_size if settings.prewarm else min(settings.pool_size, 5)
    pool = wrapper.make_read_pool(dataclasses.replace(settings, pool_size=sample) if not settings.prewarm else None)
    connect_times: list[float] = []

    def timed(milliseconds: float) -> None:
        connect_times.append(milliseconds)
        if progress is not None:
            progress("connect", len(connect_times), sample)

    pool.connects.listener = timed
    try:
        started = time.monotonic()
        await pool.start()
        if settings.prewarm:
            report["prewarm"] = {"enabled": True, "connections": settings.pool_size,
                                 "seconds": round(pool.prewarm_seconds or time.monotonic() - started, 4)}
        else:
            await pool.wait(timeout=max(5.0, settings.checkout_timeout))
            report["prewarm"] = {"enabled": False, "connections": 0, "seconds": None}
        report["connect_ms"] = _percentiles(connect_times)
        conn = await pool.getconn()
        try:
            await _server_facts(conn, report, settings, target, workers)
        finally:
            await pool.putconn(conn)
    except Exception as exc:  # noqa: BLE001 - the report is the point
        report["status"] = UNHEALTHY
        message = f"{type(exc).__name__}: {exc}".strip()
        last = pool.connects.last_error
        if last is not None and last[1] not in message:
            message += f"; the last attempt to connect failed: {last[1]}"
        report["errors"].append({"id": "", "message": message, "hint": ""})
    finally:
        await pool.close()

    await _primary_lag(report, alias)
    _risk_warnings(report, settings, wrapper)
    return report


async def _server_facts(conn: Any, report: dict[str, Any], settings: PoolSettings, target: ConnectionTarget,
                        workers: int) -> None:
    cur = await conn.execute(
        "SELECT current_setting('server_version'), current_setting('server_version_num')::int, "
        "current_setting('transaction_read_only'), "
        "current_setting('max_connections')::int, "
        "current_setting('superuser_reserved_connections')::int + "
        "COALESCE(current_setting('reserved_connections', true)::int, 0), "
        "(SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')::int, "
        "host(inet_server_addr()), inet_server_port(), pg_backend_pid(), "
        f"{REPLICA_STATE_COLUMNS}"
    )
    (version, version_num, read_only, max_conn, reserved, current, addr, port, server_pid,
     in_recovery, receive, replay, paused, age) = await cur.fetchone()
    rtts = []
    for _ in range(20):
        started = time.monotonic()
        await conn.execute("SELECT 1")
        rtts.append((time.monotonic() - started) * 1000)
    report["round_trip_ms"] = _percentiles(rtts)
    configured_hosts = set(target.host.split(","))
    configured_ips = set().union(*(_resolve(h) for h in configured_hosts)) if target.host else set()
    configured_ports = {int(p) for p in (target.port or "5432").split(",")}
    # A pooler hands out a backend PID of its own at login (and may connect elsewhere).
    direct = server_pid == conn.info.backend_pid and (
        addr is None or (addr in configured_ips and port in configured_ports))
    report["server"] = {
        "version": version, "version_num": version_num, "in_recovery": in_recovery,
        "transaction_read_only": read_only == "on", "max_connections": max_conn,
        "reserved_connections": reserved, "current_connections": current,
        "address": f"{addr}:{port}" if addr else "(unix socket)", "pooler": not direct,
    }
    lag_seconds, lag_bytes = lag(parse_lsn(replay), parse_lsn(receive), age)
    report["replication"] = {
        "lag_bytes": lag_bytes,
        "lag_seconds": (round(lag_seconds, 3) if lag_seconds is not None else None) if in_recovery else None,
        "replay_paused": paused,
        "measured_against": "replica",
    }
    # A process holds up to max_size connections in its async pool, as many in
    # Django's sync pool (sync code of the same process reads through it), and
    # one for the health probe.
    per_process = 2 * settings.max_size + 1
    needed = per_process * workers
    available = max_conn - reserved - current
    report["capacity"] = {
        "per_process": per_process, "workers": workers, "needed": needed,
        "available": available, "headroom": available - needed,
        "formula": "(2 x (POOL_SIZE + MAX_OVERFLOW) + 1) x workers <= max_connections - reserved - current "
                   "(async pool, Django's sync pool and the health probe of each process)",
    }
    if settings.replica_configured and not in_recovery:
        report["status"] = UNHEALTHY
        report["errors"].append({
            "id": "", "hint": "Point FIDES__DATABASE__READONLY_SERVER at a standby (or PgBouncer in front of one).",
            "message": f"{target.describe()} is not a standby (pg_is_in_recovery() is false): it is a primary "
                       "used as a replica, so writes would succeed there and reads may diverge.",
        })


async def _primary_lag(report: dict[str, Any], alias: str) -> None:
    """Lag in bytes against the primary's own WAL position, when reachable."""
    replication = report.get("replication")
    if not replication or replication.get("lag_bytes") is None or not report["server"]["in_recovery"]:
        return
    try:
        params = connections[app_settings().primary].get_connection_params()
        params.pop("cursor_factory", None)
        params["connect_timeout"] = 5
        async with await psycopg.AsyncConnection.connect(autocommit=True, **params) as conn:
            cur = await conn.execute(PRIMARY_LSN_SQL)
            row = await cur.fetchone()
            assert row is not None
            (primary_lsn,) = row
        wrapper = connections[alias]
        replica_params = wrapper.get_connection_params()
        replica_params.pop("cursor_factory", None)
        async with await psycopg.AsyncConnection.connect(autocommit=True, **replica_params) as conn:
            cur = await conn.execute("SELECT pg_last_wal_replay_lsn()::text")
            row = await cur.fetchone()
            assert row is not None
            (replay,) = row
        lag_seconds, lag_bytes = lag(parse_lsn(replay), parse_lsn(primary_lsn), None)
        if lag_bytes is not None:
            replication["lag_bytes"] = lag_bytes
            replication["measured_against"] = "primary"
            if lag_bytes == 0:
                replication["lag_seconds"] = lag_seconds
    except Exception:  # noqa: BLE001 - keep the replica-side estimate
        return


def _unhealthy(report: dict[str, Any], error: dict[str, str]) -> None:
    report["errors"].append(error)
    if report["status"] == HEALTHY:
        report["status"] = UNHEALTHY


def _risk_warnings(report: dict[str, Any], settings: PoolSettings, wrapper: Any) -> None:
    warnings = report["warnings"]
    capacity = report.get("capacity")
    if capacity and capacity["headroom"] < 0:
        _unhealthy(report, {
            "id": "readonly_pool.E101", "hint": "Lower POOL_SIZE/MAX_OVERFLOW, raise max_connections, or put "
                                                "PgBouncer in front of the replica.",
            "message": f"not enough connections: {capacity['workers']} worker(s) x {capacity['per_process']} "
                       f"connections need {capacity['needed']} but the server has {capacity['available']} free "
                       f"(max_connections - reserved - current).",
        })
    replication = report.get("replication") or {}
    if replication.get("replay_paused"):
        _unhealthy(report, {
            "id": "readonly_pool.E102", "hint": "SELECT pg_wal_replay_resume() on the replica.",
            "message": "WAL replay is paused on the replica: its data grows staler without bound.",
        })
    limits = app_settings()
    lag_bytes, lag_seconds = replication.get("lag_bytes"), replication.get("lag_seconds")
    beyond = []
    if limits.max_lag_bytes is not None and lag_bytes is not None and lag_bytes > limits.max_lag_bytes:
        beyond.append(f"{lag_bytes} bytes > MAX_LAG_BYTES={limits.max_lag_bytes}")
    if limits.max_lag_seconds is not None and lag_seconds is not None and lag_seconds > limits.max_lag_seconds:
        beyond.append(f"{lag_seconds} s > MAX_LAG_SECONDS={limits.max_lag_seconds:g}")
    if beyond:
        _unhealthy(report, {
            "id": "readonly_pool.E103", "hint": "Find what holds replay back (pg_stat_replication on the primary).",
            "message": "the replica lags beyond the configured limit: " + "; ".join(beyond),
        })
    server = report.get("server")
    if server and not server["transaction_read_only"]:
        warnings.append({
            "id": "readonly_pool.W104",
            "hint": READ_ONLY_HINT.format(user=report["target"]["user"] or "..."),
            "message": f"Sessions at {server['address']} can write (transaction_read_only is off"
                       f"{', behind a connection pooler' if server['pooler'] else ''}): the read-only guard "
                       "is the only thing between a mistaken statement and the data.",
        })
    prepare = wrapper.settings_dict["OPTIONS"].get("prepare_threshold")
    if server and server["pooler"] and prepare is not None:
        warnings.append({
            "id": "readonly_pool.W102", "hint": "Remove OPTIONS['prepare_threshold'] (Django's default is None).",
            "message": f"A connection pooler (PgBouncer?) sits in front of {server['address']} and prepared "
                       f"statements are on (prepare_threshold={prepare}): PgBouncer before 1.22 in "
                       "transaction mode cannot route them.",
        })
    if server and server["pooler"] and not wrapper.settings_dict.get("DISABLE_SERVER_SIDE_CURSORS"):
        warnings.append({
            "id": "readonly_pool.W103",
            "hint": "Set DISABLE_SERVER_SIDE_CURSORS = True on this alias (the async path streams anyway).",
            "message": "A connection pooler sits in front of the server: sync QuerySet.iterator() uses WITH HOLD "
                       "cursors, which PgBouncer's transaction mode cannot keep.",
        })


def overall(reports: list[dict[str, Any]]) -> tuple[str, int]:
    statuses = {r["status"] for r in reports}
    if MISCONFIGURED in statuses:
        return MISCONFIGURED, 2
    if UNHEALTHY in statuses:
        return UNHEALTHY, 1
    return HEALTHY, 0

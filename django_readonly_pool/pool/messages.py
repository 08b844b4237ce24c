"""What the pools say when a read cannot be served: one wording for both pools.

Each message names the alias, the server (never a secret), the cause and the
setting that changes the outcome.
"""

from __future__ import annotations

from typing import Final

from django_readonly_pool.conf import ConnectionTarget, PoolSettings, app_settings
from django_readonly_pool.errors import PoolExhausted, PrewarmFailed, QueryTimeout, ReplicaUnavailable
from django_readonly_pool.events import unavailable_reason

__all__ = ["checkout_failed", "prewarm_failed", "query_timeout", "replica_unavailable"]

_VAR: Final = "FIDES__DATABASE__ASYNC_READONLY_DATABASE_"
RECENT_ERROR_WINDOW: Final = 60.0  # a connect error this recent explains a checkout timeout


def replica_unavailable(alias: str, target: ConnectionTarget | None = None) -> ReplicaUnavailable:
    """The health monitor found the replica down (or, FALLBACK "fail", promoted or lagging)."""
    status, detail = unavailable_reason(alias)
    where = f"the replica at {target.describe()}" if target is not None else "the replica"
    if app_settings().fallback == "fail":
        hint = ("FALLBACK is 'fail': failing fast while it is probed in the background. Set "
                "READONLY_POOL['FALLBACK'] = 'primary' to read from the primary meanwhile.")
    else:
        hint = ("FALLBACK is 'primary': reads on the alias run on the primary meanwhile; this one "
                "used the pool itself (not through the ORM or django_readonly_pool.run()).")
    return ReplicaUnavailable(f"read-only alias {alias!r}: {where} is {status} ({detail}); {hint}")


def checkout_failed(alias: str, target: ConnectionTarget, settings: PoolSettings, *, waited: float,
                    last_connect_error: tuple[float, str] | None, now: float,
                    size: int, waiting: int) -> ReplicaUnavailable | PoolExhausted:
    """No connection within the checkout timeout: the server, or the pool's size."""
    if last_connect_error is not None and now - last_connect_error[0] < max(RECENT_ERROR_WINDOW, waited * 2):
        return ReplicaUnavailable(
            f"read-only alias {alias!r}: no connection to {target.describe()} within {waited:g} s; "
            f"the last attempt to connect failed: {last_connect_error[1]}"
        )
    return PoolExhausted(
        f"read-only alias {alias!r}: connection pool exhausted, no connection became free within "
        f"{waited:g} s. All {size} of {settings.max_size} connections (POOL_SIZE={settings.pool_size} + "
        f"MAX_OVERFLOW={settings.max_overflow}) were busy and {waiting} other requests were waiting. "
        f"Raise {_VAR}POOL_SIZE or _MAX_OVERFLOW, look for slow queries, or tune _CHECKOUT_TIMEOUT (the wait)."
    )


def query_timeout(alias: str, seconds: float) -> QueryTimeout:
    return QueryTimeout(
        f"read-only alias {alias!r}: statement exceeded {_VAR}QUERY_TIMEOUT={seconds:g} s; "
        "its connection was closed"
    )


def prewarm_failed(alias: str, target: ConnectionTarget, *, ready: int, wanted: int, elapsed: float,
                   prewarm_timeout: float, cause: str) -> PrewarmFailed:
    return PrewarmFailed(
        f"prewarm of the read-only pool {alias!r} failed: {ready} of {wanted} connections to "
        f"{target.describe()} ready after {elapsed:.1f} s ({_VAR}PREWARM_TIMEOUT={prewarm_timeout:g}); "
        f"cause: {cause}"
    )

"""What a replica says about itself, and what it means: the SQL, the lag, the verdict.

Shared by the health monitor (every ``HEALTH_CHECK_INTERVAL``) and
``check_readonly_pool`` (once). Lag is measured by WAL positions: a replica that
has replayed everything the primary wrote lags by 0, however old its last
replayed transaction (an idle primary does not make it look behind). Only when
it is behind does the replay timestamp give the time lag.

The verdicts: ``up``; ``lagging`` (beyond ``MAX_LAG_SECONDS`` or
``MAX_LAG_BYTES``, or not measurable while a limit is set); ``promoted`` (a
configured replica that is not in recovery: it stopped being a replica);
``primary`` (the alias targets the primary on purpose, ``READONLY_SERVER``
unset: usable); ``down`` (cannot connect, or no answer within
``CHECK_TIMEOUT``); ``unknown`` (not probed yet; usable).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Final

__all__ = [
    "DOWN",
    "LAGGING",
    "PRIMARY",
    "PRIMARY_LSN_SQL",
    "PROMOTED",
    "REPLICA_STATE_COLUMNS",
    "REPLICA_STATE_SQL",
    "UNKNOWN",
    "UP",
    "USABLE",
    "ReplicaHealth",
    "evaluate",
    "lag",
    "parse_lsn",
]

UNKNOWN: Final = "unknown"
UP: Final = "up"
DOWN: Final = "down"
LAGGING: Final = "lagging"
PROMOTED: Final = "promoted"
PRIMARY: Final = "primary"
USABLE: Final = frozenset({UP, PRIMARY, UNKNOWN})

# in recovery, WAL received, WAL replayed, replay paused, seconds since the last replayed transaction
REPLICA_STATE_COLUMNS: Final = (
    "pg_is_in_recovery(), pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text, "
    "CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() END, "
    "EXTRACT(EPOCH FROM clock_timestamp() - pg_last_xact_replay_timestamp())::float8"
)
REPLICA_STATE_SQL: Final = f"SELECT {REPLICA_STATE_COLUMNS}"
PRIMARY_LSN_SQL: Final = "SELECT pg_current_wal_lsn()::text"


@dataclass
class ReplicaHealth:
    """The latest verdict on one read-only alias."""

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


def parse_lsn(text: str | None) -> int | None:
    """``'16/B374D848'`` -> byte position."""
    if not text:
        return None
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) + int(low, 16)


def lag(replay_lsn: int | None, reference_lsn: int | None,
        replay_age: float | None) -> tuple[float | None, int | None]:
    """(seconds, bytes) behind *reference_lsn* (the primary's position, or what the
    replica received); None where it cannot be measured."""
    if replay_lsn is None or reference_lsn is None:
        return None, None
    lag_bytes = max(0, reference_lsn - replay_lsn)
    # Caught up means no lag, however old the last replayed transaction.
    return (0.0 if lag_bytes == 0 else replay_age), lag_bytes


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
    lag_seconds, lag_bytes = lag(replay_lsn, primary_lsn, replay_age)
    if max_lag_bytes is not None and lag_bytes is not None and lag_bytes > max_lag_bytes:
        return LAGGING, lag_seconds, lag_bytes
    if max_lag_seconds is not None and lag_seconds is not None and lag_seconds > max_lag_seconds:
        return LAGGING, lag_seconds, lag_bytes
    if (max_lag_bytes is not None or max_lag_seconds is not None) and lag_bytes is None:
        return LAGGING, lag_seconds, lag_bytes  # cannot measure: do not trust it
    return UP, lag_seconds, lag_bytes

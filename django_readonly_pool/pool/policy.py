"""When a connection is pinged, and how: the check semantics both pools share.

* **The ping window** (``PRE_PING_INTERVAL``, HikariCP's bypass): a connection
  used less than that long ago is handed out without a check. Every connection
  carries the time it was last used (or verified, when it was configured).
* **A bounded check** (``CHECK_TIMEOUT``): psycopg's own check (an empty
  query), its socket shut down if the server does not answer in time.
* **No back-off after a failed check**: the first dead connection found
  triggers a background check of the idle ones (psycopg's ``check()``) and the
  checkout goes on at once (psycopg would sleep 1, 2, 4 ... s); see
  :mod:`._psycopg` for the loop itself.
* **Reconnect attempts at most** :data:`RECONNECT_DELAY_CAP` apart, so that a
  returning server is used at once.

The async pool awaits and the sync pool blocks; the rules are written once here.
"""

from __future__ import annotations

from time import monotonic
from typing import Any, Final

__all__ = ["RECONNECT_DELAY_CAP", "due_for_ping", "is_ours", "mark_used", "used_at"]

RECONNECT_DELAY_CAP: Final = 2.0  # seconds between reconnect attempts, at most
_USED_AT: Final = "_rop_used_at"  # the attribute on psycopg's connection objects


def mark_used(conn: Any, now: float | None = None) -> None:
    """*conn* was just used, or verified (it is also how this package's connections are known)."""
    setattr(conn, _USED_AT, monotonic() if now is None else now)


def used_at(conn: Any) -> float:
    return float(getattr(conn, _USED_AT, 0.0))


def due_for_ping(conn: Any, interval: float) -> bool:
    """True when *conn* was last used more than *interval* seconds ago."""
    return monotonic() - getattr(conn, _USED_AT, 0.0) >= interval


def is_ours(conn: object) -> bool:
    """True for a connection made by one of this package's pools."""
    return hasattr(conn, _USED_AT)

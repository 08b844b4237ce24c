"""How the pools and the replica health talk, without importing each other.

The health monitor publishes its verdicts here and the pools read them; the
pools report connection failures here and the monitor listens. Subscriptions
are made in ``AppConfig.ready()``:

* :data:`unusable`: alias -> (status, reason) for every replica that is down,
  promoted or lagging right now (kept by the monitor; empty when all are well,
  so the check on every checkout is one falsy test);
* :data:`connection_failed`: called with the alias when a pool fails to connect
  or loses a connection (the monitor probes at once);
* :data:`replica_down`: called with the alias when the monitor finds a replica
  down (the pools fail the clients waiting and abort the statements in flight).

Callbacks may run in any thread and must not block.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Final

from .conf import app_settings

__all__ = [
    "DOWN",
    "breaker_open",
    "connection_failed",
    "notify_connection_failed",
    "notify_replica_down",
    "replica_down",
    "subscribe",
    "unavailable_reason",
    "unusable",
]

DOWN: Final = "down"

unusable: Final[dict[str, tuple[str, str]]] = {}
connection_failed: Final[list[Callable[[str], None]]] = []
replica_down: Final[list[Callable[[str], None]]] = []


def subscribe(listeners: list[Callable[[str], None]], callback: Callable[[str], None]) -> None:
    """Add *callback* to *listeners* once (``ready()`` may run more than once)."""
    if callback not in listeners:
        listeners.append(callback)


def _notify(listeners: list[Callable[[str], None]], alias: str) -> None:
    for callback in list(listeners):
        with contextlib.suppress(Exception):  # a listener's failure is not the caller's
            callback(alias)


def notify_connection_failed(alias: str) -> None:
    _notify(connection_failed, alias)


def notify_replica_down(alias: str) -> None:
    _notify(replica_down, alias)


def breaker_open(alias: str) -> bool:
    """True when reads on *alias* must fail fast: it is down, or (``FALLBACK="fail"``)
    promoted or lagging."""
    entry = unusable.get(alias)
    return entry is not None and (entry[0] == DOWN or app_settings().fallback == "fail")


def unavailable_reason(alias: str) -> tuple[str, str]:
    """(status, reason) of an unusable replica, for error messages."""
    return unusable.get(alias) or (DOWN, "no answer")

"""psycopg_pool's per-attempt warnings, quieted for this package's pools.

psycopg_pool logs a WARNING for every failed connection attempt (every 2 s per
pool while a replica is down, from both pools: hundreds in an outage), for every
connect cancelled when an event loop ends (with an empty reason) and for every
broken connection it discards. For this package's pools the package reports an
outage itself, once: the first failure with its cause, the return, and the
health monitor's replica down/up. Other pools' records pass untouched.
"""

from __future__ import annotations

import logging
from typing import Final

from .policy import is_ours

__all__ = ["POOL_NAME_PREFIXES", "QuietForOurPools"]

POOL_NAME_PREFIXES: Final = ("readonly-pool[", "readonly-pool-sync[")
_QUIETED: Final = ("error connecting in ", "reconnection attempt in pool ", "discarding broken connection",
                   "discarding closed connection")


class QuietForOurPools(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.WARNING or not isinstance(record.msg, str):
            return True
        if not record.msg.startswith(_QUIETED) or not isinstance(record.args, tuple) or not record.args:
            return True
        subject = record.args[0]
        ours = isinstance(subject, str) and subject.startswith(POOL_NAME_PREFIXES)
        return not (ours or is_ours(subject))


def install() -> None:
    """Add the filter to psycopg_pool's logger (once)."""
    logger = logging.getLogger("psycopg.pool")
    if not any(isinstance(f, QuietForOurPools) for f in logger.filters):
        logger.addFilter(QuietForOurPools())

"""The pools: the async read pool, its sync twin, and one pool per event loop and alias.

* :mod:`.asyncpool`: :class:`ReadPool`, psycopg's ``AsyncConnectionPool`` with the guide's semantics;
  :mod:`.statements` (one statement on a borrowed connection), :mod:`.handoff` (past saturation),
  :mod:`.prewarm`, :mod:`.messages` (its errors);
* :mod:`.syncpool`: :class:`SyncReadPool`, Django's sync pool of a pool alias;
* :mod:`.registry`: :data:`registry`, :func:`open_pools`, :func:`close_pools`;
* :mod:`.connections`, :mod:`.session`, :mod:`.policy`: what both pools share (connect,
  configure, reset, the ping window);
* :mod:`._psycopg`: the only module that touches psycopg_pool's internals, and why;
* :mod:`.quiet`: psycopg_pool's per-attempt warnings quieted for these pools.
"""

from __future__ import annotations

from .asyncpool import ReadPool
from .registry import PoolRegistry, close_pools, open_pools, registry
from .session import CLEAR_SESSION, SessionSetup
from .syncpool import SyncReadPool

__all__ = [
    "CLEAR_SESSION",
    "PoolRegistry",
    "ReadPool",
    "SessionSetup",
    "SyncReadPool",
    "close_pools",
    "open_pools",
    "registry",
]

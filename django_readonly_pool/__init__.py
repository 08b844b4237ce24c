"""django-readonly-pool: Django reads on a pre-warmed psycopg AsyncConnectionPool.

The public names are re-exported here; each lives in the module of its concept.
"""

from __future__ import annotations

__version__ = "0.2.0"

from .conf import databases_from_env
from .dispatch import run
from .errors import (
    ConfigurationError,
    PoolExhausted,
    PoolUnavailable,
    PrewarmFailed,
    QueryTimeout,
    ReadOnlyAliasError,
    ReplicaUnavailable,
)
from .pool import close_pools, open_pools
from .router import ReadOnlyRouter, pin_to_primary, routing_scope, unpin, use_primary

__all__ = [
    "ConfigurationError",
    "PoolExhausted",
    "PoolUnavailable",
    "PrewarmFailed",
    "QueryTimeout",
    "ReadOnlyAliasError",
    "ReadOnlyRouter",
    "ReplicaUnavailable",
    "close_pools",
    "databases_from_env",
    "open_pools",
    "pin_to_primary",
    "routing_scope",
    "run",
    "unpin",
    "use_primary",
]

"""What a pool connection's session holds: Django's settings, read-only, and nothing else.

A new connection is configured to match Django's own (time zone, role,
isolation level) and made read-only on the server when it is direct. With
``POOL_SKIP_ROLLBACK`` false a returned connection is cleared completely and
configured again, in one round trip. The async and the sync pool both use this.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from psycopg import sql

from django_readonly_pool.conf import scrub

__all__ = ["CLEAR_SESSION", "SessionSetup"]

# Everything a borrower can leave in a session (DISCARD ALL, as statements that
# may run in one round trip: DISCARD ALL itself refuses a multi-statement string).
CLEAR_SESSION: Final = sql.SQL(
    "CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; DEALLOCATE ALL; UNLISTEN *; "
    "SELECT pg_catalog.pg_advisory_unlock_all(); DISCARD PLANS; DISCARD TEMP; DISCARD SEQUENCES"
)
# Read-only sessions wherever the server allows it: only on a direct connection,
# known by the server's backend PID being the one libpq received at login (a
# pooler such as PgBouncer hands out its own); through a pooler the setting
# would stay on a server connection that other clients share.
_READ_ONLY_IF_DIRECT: Final = sql.SQL(
    "SELECT CASE WHEN pg_catalog.pg_backend_pid() = {} THEN "
    "pg_catalog.set_config('default_transaction_read_only', 'on', false) END"
)


@dataclass(frozen=True, slots=True)
class SessionSetup:
    """What a new connection needs to match Django's own (see the backend)."""

    timezone_name: str | None
    assume_role: str | None
    isolation_level: int | None
    secrets: tuple[str, ...] = field(default=(), repr=False)  # masked in messages, never shown

    def configure_sql(self, connect_timezone: str | None, backend_pid: int) -> sql.Composed:
        """Django's session settings (time zone, role) and read-only, in one statement string.

        *connect_timezone* is the server's time zone at connect time: after a
        reset the session is back to it.
        """
        parts: list[sql.Composable] = [_READ_ONLY_IF_DIRECT.format(sql.Literal(backend_pid))]
        if self.timezone_name and connect_timezone != self.timezone_name:
            parts.append(
                sql.SQL("SELECT pg_catalog.set_config('TimeZone', {}, false)").format(
                    sql.Literal(self.timezone_name)
                )
            )
        if self.assume_role:
            parts.append(sql.SQL("SET ROLE {}").format(sql.Literal(self.assume_role)))
        return sql.SQL("; ").join(parts)

    def reset_sql(self, connect_timezone: str | None, backend_pid: int) -> sql.Composed:
        """POOL_SKIP_ROLLBACK false: clear everything, then configure again."""
        return sql.SQL("; ").join([CLEAR_SESSION, self.configure_sql(connect_timezone, backend_pid)])

    def scrub(self, text: str) -> str:
        """*text* with every secret replaced by the mask."""
        return scrub(text, self.secrets)

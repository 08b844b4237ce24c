"""Make a stuck connection fail now: the bound on every wait for a silent server.

Cancelling a psycopg query (an asyncio timeout, a cancelled task) makes psycopg
send a cancel request to the server and wait for it, which on a frozen network
waits as long as the network stays frozen. Shutting the socket down instead
wakes the waiting reader with end-of-file at once: libpq marks the connection
bad and psycopg raises. Pre-pings (``CHECK_TIMEOUT``), statements
(``QUERY_TIMEOUT``), the health probe, and the statements in flight on a
replica found down all use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

__all__ = ["interrupt_after", "shutdown_socket"]


def shutdown_socket(fileno: int) -> None:
    """Wake whoever waits on *fileno* with end-of-file, without closing the descriptor
    (closing it would race with its reuse by another connection)."""
    with contextlib.suppress(OSError):
        sock = socket.socket(fileno=fileno)
        try:
            sock.shutdown(socket.SHUT_RDWR)
        finally:
            sock.detach()


def interrupt_after(seconds: float, conn: Any) -> asyncio.TimerHandle:
    """Shut *conn*'s socket down in *seconds* unless the returned handle is cancelled first."""
    return asyncio.get_running_loop().call_later(seconds, shutdown_socket, conn.pgconn.socket)

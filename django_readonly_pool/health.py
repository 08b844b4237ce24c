"""Replica health and lag (placeholder filled in with the router work)."""

from __future__ import annotations

__all__ = ["replica_usable"]


def replica_usable(alias: str) -> bool:
    return True

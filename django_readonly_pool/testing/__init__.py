"""Real servers and helpers for tests: the topology, the TCP proxy, replica reads."""

from __future__ import annotations

from .replica import ReplicaReads, replica_reads

__all__ = ["ReplicaReads", "replica_reads"]

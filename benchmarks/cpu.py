"""Client CPU per read and Python calls per read: the stable figures on a shared machine.

Throughput moves with whatever else the machine runs; the CPU the client
process spends per read does much less (the server is another process). Each
workload runs N reads at a fixed concurrency and divides the process CPU time
(``time.process_time()``: user + system, every thread) by N. The call count is
the number of Python function calls one warm read makes (``sys.setprofile``),
which does not depend on the machine at all.

``python -m benchmarks.cpu`` prints the figures of this checkout as JSON (used
to compare two checkouts: run it in each).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

Read = Callable[[int], Awaitable[Any]]


def _workloads() -> dict[str, Read]:
    from benchmarks.benchapp.models import Item

    manager = Item.objects.using("readonly")

    async def pk_read(i: int) -> Any:  # the fast lane
        return await manager.aget(pk=1 + i % 10_000)

    async def filtered_read(i: int) -> Any:  # Django's path (a filter the fast lane does not take)
        return await manager.filter(price__gte=0).aget(pk=1 + i % 10_000)

    return {"aget_pk": pk_read, "aget_filtered": filtered_read}


async def _cpu_per_read(read: Read, reads: int, concurrency: int) -> float:
    for i in range(200):  # warm: shapes compiled, connections used
        await read(i)
    queue = iter(range(reads))

    async def worker() -> None:
        for i in queue:
            await read(i)

    started = time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return (time.process_time() - started) / reads * 1e6


def cpu_per_read(reads: int = 5000, concurrency: int = 32, repeats: int = 3) -> dict[str, float]:
    """Microseconds of client CPU per read, per workload (median of *repeats*)."""
    from django_readonly_pool.pool import open_pools

    async def main() -> dict[str, list[float]]:
        await open_pools(["readonly"])
        samples: dict[str, list[float]] = {}
        for _ in range(repeats):  # interleaved
            for name, read in _workloads().items():
                samples.setdefault(name, []).append(await _cpu_per_read(read, reads, concurrency))
        return samples

    samples = asyncio.run(main())
    return {name: round(sorted(v)[len(v) // 2], 1) for name, v in samples.items()}


def calls_per_read() -> dict[str, dict[str, int]]:
    """Function calls of one warm read, per workload: Python functions and C functions
    (deterministic, whatever the machine does)."""
    from django_readonly_pool.pool import open_pools

    async def main() -> dict[str, dict[str, int]]:
        await open_pools(["readonly"])
        counts: dict[str, dict[str, int]] = {}
        for name, read in _workloads().items():
            for i in range(50):
                await read(i)
            calls = {"call": 0, "c_call": 0}

            def profile(frame: Any, event: str, arg: Any, calls: dict[str, int] = calls) -> None:
                if event in calls:
                    calls[event] += 1

            sys.setprofile(profile)
            try:
                await read(7)
            finally:
                sys.setprofile(None)
            counts[name] = {"python": calls["call"], "c": calls["c_call"]}
        return counts

    return asyncio.run(main())


def main() -> int:
    import json
    import os

    from benchmarks.harness import start_topology

    topology = start_topology()
    try:
        import django

        os.environ["DJANGO_SETTINGS_MODULE"] = "benchmarks.settings"
        django.setup()
        result = {"cpu_us_per_read": cpu_per_read(), "calls_per_read": calls_per_read()}
    finally:
        if "django_readonly_pool.health" in sys.modules:
            sys.modules["django_readonly_pool.health"].monitor.stop()
        topology.stop()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

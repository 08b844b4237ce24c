"""Client CPU per read and Python calls per read: the stable figures on a shared machine.

Throughput moves with whatever else the machine runs; the CPU the client
process spends per read does much less (the server is another process). Each
workload runs N reads at a fixed concurrency and divides the process CPU time
(``time.process_time()``: user + system, every thread) by N. The call count is
the number of Python function calls one warm read makes (``sys.setprofile``),
which does not depend on the machine at all.

``python -m benchmarks.cpu`` prints the figures of this checkout as JSON;
``python -m benchmarks.cpu --against OTHER_CHECKOUT`` measures both checkouts in
alternating processes on one topology and prints the median CPU per read of each
and their ratio (how a change to the hot path is measured).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

Read = Callable[[int], Awaitable[Any]]


def _workloads() -> dict[str, Read]:
    from benchmarks.benchapp.models import Item

    manager = Item.objects.using("readonly")

    async def pk_read(i: int) -> Any:  # the fast lane
        return await manager.aget(pk=1 + i % 10_000)

    async def filtered_read(i: int) -> Any:  # Django's path (a filter the fast lane does not take)
        return await manager.filter(price__gte=0).aget(pk=1 + i % 10_000)

    async def list_20(i: int) -> Any:  # W2: 20 instances, filtered, ordered, sliced
        qs = manager.filter(price__lt=Decimal(10 + i % 80)).order_by("-created")[:20]
        return [x async for x in qs]

    async def instances_10k(i: int) -> Any:  # W5: every row as an instance
        return [x async for x in manager.all()]

    return {"aget_pk": pk_read, "aget_filtered": filtered_read, "list_20": list_20,
            "instances_10k": instances_10k}


# Reads of a workload per read of aget_pk (a 10,000-row read costs as much as hundreds).
SHARE = {"list_20": 0.2, "instances_10k": 0.002}


def _reads(name: str, reads: int) -> int:
    return max(2, int(reads * SHARE.get(name, 1)))


async def _cpu_per_read(read: Read, reads: int, concurrency: int) -> float:
    for i in range(min(200, reads)):  # warm: shapes compiled, connections used
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
                samples.setdefault(name, []).append(await _cpu_per_read(read, _reads(name, reads),
                                                                        min(concurrency, _reads(name, reads))))
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
            for i in range(min(50, _reads(name, 1000))):
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


_CHILD = """
import json, sys, django
django.setup()
from benchmarks import cpu
print(json.dumps({"cpu": cpu.cpu_per_read(int(sys.argv[1]), 32, 1), "calls": cpu.calls_per_read()}))
"""


_INSTRUCTIONS_CHILD = """
import asyncio, sys, django
django.setup()
from benchmarks import cpu
from django_readonly_pool.pool import open_pools

async def main():
    await open_pools(["readonly"])
    read = cpu._workloads()[sys.argv[2]]
    for i in range(cpu._reads(sys.argv[2], 200)):
        await read(i)
    queue = iter(range(int(sys.argv[1])))

    async def worker():
        for i in queue:
            await read(i)

    await asyncio.gather(*(worker() for _ in range(32)))

asyncio.run(main())
"""


# One connection per task, opened before the reads (no growth while measuring), with time
# for logins that valgrind makes 50 times slower.
_UNDER_VALGRIND = {
    "FIDES__DATABASE__ASYNC_READONLY_DATABASE_POOL_SIZE": "32",
    "FIDES__DATABASE__ASYNC_READONLY_DATABASE_MAX_OVERFLOW": "0",
    "FIDES__DATABASE__ASYNC_READONLY_DATABASE_PREWARM": "true",
    "FIDES__DATABASE__ASYNC_READONLY_DATABASE_PREWARM_TIMEOUT": "1800",
    "FIDES__DATABASE__ASYNC_READONLY_DATABASE_CONNECT_TIMEOUT": "300",
    "FIDES__DATABASE__ASYNC_READONLY_DATABASE_CHECKOUT_TIMEOUT": "300",
}


def instructions_per_read(checkout: str, workload: str, reads: int = 1000) -> float | None:
    """Client instructions per read under valgrind (callgrind): deterministic where CPU time
    is not. The difference of two runs (100 and 100 + *reads* reads) leaves out everything
    but the reads. None without valgrind."""
    import os
    import re
    import shutil
    import subprocess
    import tempfile

    if shutil.which("valgrind") is None:
        return None
    counts = []
    base, reads = _reads(workload, 100), _reads(workload, reads)
    for n in (base, base + reads):
        with tempfile.NamedTemporaryFile(suffix=".cg") as out:
            done = subprocess.run(
                ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out.name}", sys.executable,
                 "-c", _INSTRUCTIONS_CHILD, str(n), workload],
                cwd=checkout, capture_output=True, text=True, env={**os.environ, **_UNDER_VALGRIND, "PYTHONPATH": checkout},
                check=False)
        if done.returncode != 0:
            raise RuntimeError(f"valgrind run failed ({done.returncode}): {done.stderr[-3000:]}")
        found = re.findall(r"Collected : (\d+)", done.stderr)
        counts.append(int(found[-1]))
    return (counts[1] - counts[0]) / reads


def compare(other: str, rounds: int, reads: int) -> dict[str, Any]:
    """This checkout against *other*, in alternating child processes on one topology:
    the median CPU per read of each, and their ratio (the machine's drift hits both)."""
    import os
    import statistics
    import subprocess
    from pathlib import Path

    here = str(Path(__file__).resolve().parent.parent)
    samples: dict[str, list[dict[str, Any]]] = {here: [], other: []}
    for _ in range(rounds):
        for checkout in (other, here):
            out = subprocess.run([sys.executable, "-c", _CHILD, str(reads)], cwd=checkout, check=True,
                                 capture_output=True, text=True,
                                 env={**os.environ, "PYTHONPATH": checkout}).stdout
            samples[checkout].append(json.loads(out.strip().splitlines()[-1]))
    result: dict[str, Any] = {"rounds": rounds, "reads_per_round": reads, "checkouts": {}}
    for checkout, runs in samples.items():
        result["checkouts"]["this" if checkout == here else checkout] = {
            "cpu_us_per_read": {name: round(statistics.median(r["cpu"][name] for r in runs), 1)
                                for name in runs[0]["cpu"]},
            "calls_per_read": runs[0]["calls"],
            "samples": {name: [r["cpu"][name] for r in runs] for name in runs[0]["cpu"]},
        }
    for checkout in (here, other):
        key = "this" if checkout == here else checkout
        result["checkouts"][key]["instructions_per_read"] = {
            name: instructions_per_read(checkout, name) for name in samples[checkout][0]["cpu"]}
    mine, theirs = result["checkouts"]["this"], result["checkouts"][other]
    if None not in mine["instructions_per_read"].values():
        result["instructions_ratio_this_over_other"] = {
            name: round(mine["instructions_per_read"][name] / theirs["instructions_per_read"][name], 3)
            for name in mine["instructions_per_read"]}
    result["cpu_ratio_this_over_other"] = {
        name: round(mine["cpu_us_per_read"][name] / theirs["cpu_us_per_read"][name], 3)
        for name in mine["cpu_us_per_read"]
    }
    return result


def main() -> int:
    import argparse
    import os

    from benchmarks.harness import start_topology

    parser = argparse.ArgumentParser(prog="python -m benchmarks.cpu")
    parser.add_argument("--against", metavar="CHECKOUT", help="compare with another checkout of the package")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--reads", type=int, default=3000)
    args = parser.parse_args()
    topology = start_topology()
    try:
        if args.against:
            result = compare(os.path.abspath(args.against), args.rounds, args.reads)
        else:
            import django

            os.environ["DJANGO_SETTINGS_MODULE"] = "benchmarks.settings"
            django.setup()
            result = {"cpu_us_per_read": cpu_per_read(), "calls_per_read": calls_per_read()}
    finally:
        if "django_readonly_pool.health" in sys.modules:
            sys.modules["django_readonly_pool.health"].monitor.stop()
        topology.stop()
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

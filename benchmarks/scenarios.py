"""The benchmark scenarios. Each returns a JSON-ready dict; ratios are computed
from measurements taken in the same run."""

from __future__ import annotations

import asyncio
import gc
from dataclasses import dataclass
from typing import Any

from benchmarks import contenders
from benchmarks.harness import Result, measure


@dataclass
class Config:
    quick: bool
    seconds: float
    warmup: float
    repeats: int

    @classmethod
    def make(cls, quick: bool) -> Config:
        return cls(quick=quick, seconds=0.8 if quick else 2.0, warmup=0.3 if quick else 0.5,
                   repeats=1 if quick else 2)


async def _run_contender(name: str, slow: bool, concurrency: int, cfg: Config) -> Result:
    factory = contenders.available()[name]
    async with factory(slow) as op:
        return await measure(op, concurrency, cfg.seconds, cfg.warmup)


def run_contender(name: str, slow: bool, concurrency: int, cfg: Config) -> Result:
    """One measurement on a fresh event loop (pools belong to their loop)."""
    gc.collect()
    return asyncio.run(_run_contender(name, slow, concurrency, cfg))


def best(results: list[Result]) -> Result:
    """Of repeated measurements, the one with the median throughput."""
    ordered = sorted(results, key=lambda r: r.ops_per_s)
    return ordered[len(ordered) // 2]


def orm_reads(cfg: Config) -> dict[str, Any]:
    """Scenario 1: primary-key reads, every contender, latency 0 and 2 ms."""
    names = list(contenders.available())
    concurrencies = [1, 16, 32, 64] if not cfg.quick else [1, 32, 64]
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for slow in (False, True):
        latency = "2ms" if slow else "0ms"
        for c in concurrencies:
            runs: dict[str, list[Result]] = {n: [] for n in names}
            for _ in range(cfg.repeats):  # interleaved: A B C ... A B C
                for name in names:
                    if name == "stock_asgi" and c > 16 and not slow and cfg.quick:
                        pass
                    runs[name].append(run_contender(name, slow, c, cfg))
            for name in names:
                table.setdefault(name, {})[f"{latency}_c{c}"] = best(runs[name]).as_dict()
    return table


def ratio(table: dict[str, dict[str, dict[str, Any]]], other: str, key: str) -> float | None:
    ours = table.get("ours", {}).get(key)
    theirs = table.get(other, {}).get(key)
    if not ours or not theirs or not theirs["ops_per_s"]:
        return None
    return round(ours["ops_per_s"] / theirs["ops_per_s"], 3)

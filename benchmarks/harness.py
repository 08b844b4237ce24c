"""Benchmark harness: servers, schema, closed-loop measurement, machine facts."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

from django_readonly_pool.testing.topology import Topology

ROWS = 10_000
AUTHORS = ROWS // 20  # 20 books each
# The slow views sleep once per statement (an uncorrelated subquery: an InitPlan),
# whatever the number of rows: 2 ms of server-side latency for every query that reads them.
SLOW_MS = 2

POOL_ENV = {
    # The guide's recommended settings, sized for 64 concurrent requests.
    "FIDES__DATABASE__ASYNC_READONLY_DATABASE_POOL_SIZE": "64",
    "FIDES__DATABASE__ASYNC_READONLY_DATABASE_MAX_OVERFLOW": "0",
    "FIDES__DATABASE__ASYNC_READONLY_DATABASE_PREWARM": "true",
    "FIDES__DATABASE__ASYNC_READONLY_DATABASE_POOL_SKIP_ROLLBACK": "true",
    "FIDES__DATABASE__ASYNC_READONLY_DATABASE_AUTOCOMMIT": "true",
    "FIDES__DATABASE__ASYNC_READONLY_DATABASE_PRE_PING": "true",
}

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS bench_item (
    id bigserial PRIMARY KEY, name varchar(50) NOT NULL, price numeric(10, 2) NOT NULL,
    created timestamptz NOT NULL, data jsonb NOT NULL);
INSERT INTO bench_item (name, price, created, data)
    SELECT 'item ' || i, (i % 10000) / 100.0, now() - i * interval '1 minute',
           jsonb_build_object('i', i, 'tags', jsonb_build_array('a', 'b'))
    FROM generate_series(1, {ROWS}) AS i
    WHERE NOT EXISTS (SELECT 1 FROM bench_item);
CREATE INDEX IF NOT EXISTS bench_item_created ON bench_item (created);
CREATE TABLE IF NOT EXISTS bench_author (id bigserial PRIMARY KEY, name varchar(50) NOT NULL);
INSERT INTO bench_author (name) SELECT 'author ' || i FROM generate_series(1, {AUTHORS}) AS i
    WHERE NOT EXISTS (SELECT 1 FROM bench_author);
CREATE TABLE IF NOT EXISTS bench_book (
    id bigserial PRIMARY KEY, author_id bigint NOT NULL REFERENCES bench_author (id),
    title varchar(80) NOT NULL, price numeric(10, 2) NOT NULL, published date NOT NULL);
INSERT INTO bench_book (author_id, title, price, published)
    SELECT (i % {AUTHORS}) + 1, 'book ' || i, (i % 5000) / 100.0, date '2020-01-01' + i % 2000
    FROM generate_series(1, {ROWS}) AS i
    WHERE NOT EXISTS (SELECT 1 FROM bench_book);
CREATE INDEX IF NOT EXISTS bench_book_author ON bench_book (author_id);
CREATE OR REPLACE VIEW bench_item_slow AS
    SELECT * FROM bench_item WHERE (SELECT pg_sleep({SLOW_MS / 1000})) IS NOT NULL;
CREATE OR REPLACE VIEW bench_author_slow AS
    SELECT * FROM bench_author WHERE (SELECT pg_sleep({SLOW_MS / 1000})) IS NOT NULL;
CREATE OR REPLACE VIEW bench_book_slow AS
    SELECT * FROM bench_book WHERE (SELECT pg_sleep({SLOW_MS / 1000})) IS NOT NULL;
ANALYZE bench_item;
ANALYZE bench_author;
ANALYZE bench_book;
"""


def start_topology(pgbouncer: bool = False) -> Topology:
    topology = Topology(pgbouncer=pgbouncer, primary_settings={"max_connections": "700"},
                        replica_settings={"max_connections": "700"})
    topology.start()
    os.environ.update(topology.environ())
    for key, value in POOL_ENV.items():
        os.environ.setdefault(key, value)
    os.environ["DJANGO_SETTINGS_MODULE"] = "benchmarks.settings"
    assert topology.primary is not None
    for statement in SCHEMA.split(";\n"):
        if statement.strip():
            topology.primary.sql(statement)
    topology.wait_for_replay()
    return topology


def sql_for_pk(table: str) -> str:
    """The SQL Django's ORM sends for ``Model.objects.get(pk=...)`` (for the peers)."""
    return (f'SELECT "{table}"."id", "{table}"."name", "{table}"."price", "{table}"."created", '
            f'"{table}"."data" FROM "{table}" WHERE "{table}"."id" = %s LIMIT 21')


@dataclass
class Result:
    ops_per_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    ops: int
    fairness: float  # min/max operations per worker (1.0: perfectly fair)
    # Client CPU (every thread of this process: a driver's runtime, a thread pool) per
    # 1,000 operations, in ms: the figure that stays comparable on a shared machine.
    cpu_ms_per_1000: float = 0.0
    # The servers' CPU (every PostgreSQL and PgBouncer process of this machine) per 1,000
    # operations: on a machine the servers share, throughput is bounded by client + server CPU.
    server_cpu_ms_per_1000: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()}


Op = Callable[[int], Awaitable[Any]]
_TICK = os.sysconf("SC_CLK_TCK")


def server_cpu_seconds() -> float:
    """CPU time so far of every PostgreSQL and PgBouncer process on this machine (user + system;
    exited backends counted through their postmaster's children times)."""
    ticks = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:  # gone meanwhile
            continue
        end = stat.rindex(b")")
        if stat[stat.index(b"(") + 1:end] in (b"postgres", b"pgbouncer"):
            ticks += sum(int(x) for x in stat[end + 2:].split()[11:15])  # utime stime cutime cstime
    return ticks / _TICK


async def measure(op: Op, concurrency: int, seconds: float, warmup: float = 0.3) -> Result:
    """Closed loop: *concurrency* workers each run *op* back to back for *seconds*."""
    latencies: list[float] = []
    per_worker = [0] * concurrency
    measuring = False
    stop_at = 0.0

    async def worker(index: int) -> None:
        i = index
        while True:
            started = time.perf_counter()
            await op(i)
            ended = time.perf_counter()
            if measuring:
                if ended > stop_at:
                    return
                latencies.append(ended - started)
                per_worker[index] += 1
            i += concurrency

    tasks = [asyncio.ensure_future(worker(i)) for i in range(concurrency)]
    try:
        await asyncio.sleep(warmup)
        began = time.perf_counter()
        cpu_began, server_began = time.process_time(), server_cpu_seconds()
        stop_at = began + seconds
        measuring = True
        await asyncio.gather(*tasks)
        cpu, server = time.process_time() - cpu_began, server_cpu_seconds() - server_began
        elapsed = max(time.perf_counter(), stop_at) - began
    finally:
        for task in tasks:
            task.cancel()
    latencies.sort()
    n = len(latencies)
    return Result(
        ops_per_s=n / elapsed,
        p50_ms=latencies[n // 2] * 1000 if n else 0.0,
        p99_ms=latencies[min(n - 1, int(n * 0.99))] * 1000 if n else 0.0,
        max_ms=latencies[-1] * 1000 if n else 0.0,
        ops=n,
        fairness=(min(per_worker) / max(per_worker)) if per_worker and max(per_worker) else 0.0,
        cpu_ms_per_1000=cpu * 1e6 / n if n else 0.0,
        server_cpu_ms_per_1000=server * 1e6 / n if n else 0.0,
    )


async def measure_batch(op: Op, concurrency: int, per_task: int) -> Result:
    """*concurrency* workers run *op* *per_task* times each, then stop: for operations so long
    (10,000 rows) that a timed window would hold only a few of them."""
    latencies: list[float] = []
    per_worker = [0] * concurrency

    async def worker(index: int) -> None:
        for n in range(per_task):
            started = time.perf_counter()
            await op(index + n * concurrency)
            latencies.append(time.perf_counter() - started)
            per_worker[index] += 1

    began, cpu_began, server_began = time.perf_counter(), time.process_time(), server_cpu_seconds()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu_began
    server = server_cpu_seconds() - server_began
    latencies.sort()
    n = len(latencies)
    return Result(ops_per_s=n / elapsed, p50_ms=latencies[n // 2] * 1000, p99_ms=latencies[int(n * 0.99)] * 1000,
                  max_ms=latencies[-1] * 1000, ops=n, fairness=min(per_worker) / max(per_worker),
                  cpu_ms_per_1000=cpu * 1e6 / n, server_cpu_ms_per_1000=server * 1e6 / n)


def machine() -> dict[str, Any]:
    def cmd(*args: str) -> str:
        try:
            return subprocess.run(args, capture_output=True, text=True, timeout=10, check=False).stdout.strip()
        except OSError:
            return ""

    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    import django
    import psycopg
    import psycopg_pool

    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpu": model, "cores": os.cpu_count(), "memory_gb": round(os.sysconf("SC_PAGE_SIZE")
                                                                  * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "os": platform.platform(), "python": platform.python_version(), "django": django.get_version(),
        "psycopg": psycopg.__version__, "psycopg_pool": psycopg_pool.__version__,
        "libpq": psycopg.pq.version(), "postgresql": cmd("pg_config", "--version"),
    }


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0

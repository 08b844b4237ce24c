"""The benchmark scenarios. Each returns a JSON-ready dict; ratios are computed
from measurements taken in the same run."""

from __future__ import annotations

import asyncio
import gc
from dataclasses import dataclass, replace
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


# --------------------------------------------------------------------------- #
# 2. End to end over HTTP
# --------------------------------------------------------------------------- #


def _serve(settings_module: str, extra_env: dict[str, str]) -> tuple[Any, int]:
    import os
    import subprocess
    import sys
    import time
    import urllib.request

    from django_readonly_pool.testing.topology import free_port

    port = free_port()
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": settings_module, **extra_env}
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "benchmarks.http_asgi:application", "--port", str(port),
         "--workers", "1", "--lifespan", "auto", "--log-level", "warning", "--no-access-log"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/bench/item/1/", timeout=5) as response:
                if response.status == 200:
                    return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{settings_module} did not serve within 60 s")


def http(cfg: Config) -> dict[str, Any]:
    """Scenario 2: the example project under uvicorn (1 worker), c=64, 2 ms reads."""
    import json
    import signal
    import subprocess
    import sys

    variants = [
        ("ours", "benchmarks.http_settings", {}),
        ("ours_with_djangos_request_hop", "benchmarks.http_settings", {"BENCH_HTTP_HOP": "1"}),
        ("stock", "benchmarks.http_settings_stock", {}),
    ]
    seconds = 2.0 if cfg.quick else 6.0
    results: dict[str, Any] = {}
    for name, module, extra in variants:
        proc, port = _serve(module, extra)
        try:
            out = subprocess.run(
                [sys.executable, "-m", "benchmarks.httpload", "--port", str(port), "--concurrency", "64",
                 "--seconds", str(seconds), "--warmup", "1.0"],
                capture_output=True, text=True, timeout=120, check=True,
            )
            results[name] = {k: round(v, 3) if isinstance(v, float) else v for k, v in json.loads(out.stdout).items()}
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(30)
    return results


# --------------------------------------------------------------------------- #
# 3. The reference's claims
# --------------------------------------------------------------------------- #


def _pool_settings(**changes: Any) -> Any:
    import dataclasses

    from django_readonly_pool.backend.base import pool_connection

    return dataclasses.replace(pool_connection("readonly").readonly_pool_settings, **changes)


async def _prewarm_parallel(n: int, port: int | None) -> float:
    from django_readonly_pool.backend.base import pool_connection

    extra = {"port": port} if port else {}
    pool = pool_connection("readonly").make_read_pool(
        _pool_settings(pool_size=n, max_overflow=0, prewarm=True, prewarm_timeout=300), **extra)
    await pool.start()
    seconds = pool.prewarm_seconds or 0.0
    await pool.close()
    return seconds


async def _prewarm_sequential(n: int, port: int | None) -> float:
    """One by one, as the reference warms its pool (check out each connection in turn)."""
    import time

    import psycopg

    from django_readonly_pool.backend.base import pool_connection

    kwargs = pool_connection("readonly").get_connection_params()
    kwargs.pop("cursor_factory", None)
    if port:
        kwargs["port"] = port
    started = time.perf_counter()
    conns = []
    for _ in range(n):
        conn = await psycopg.AsyncConnection.connect(autocommit=True, **kwargs)
        await conn.execute("")
        conns.append(conn)
    elapsed = time.perf_counter() - started
    for conn in conns:
        await conn.close()
    return elapsed


def _login_cpu_ms(port: int | None, logins: int = 100) -> float:
    """Client CPU of one SCRAM-SHA-256 login (libpq's PBKDF2 over the password, with the GIL held)."""
    import time

    import psycopg

    from django_readonly_pool.backend.base import pool_connection

    kwargs = pool_connection("readonly").get_connection_params()
    kwargs.pop("cursor_factory", None)
    if port:
        kwargs["port"] = port
    psycopg.connect(**kwargs).close()  # warm up
    started = time.process_time()
    for _ in range(logins):
        psycopg.connect(**kwargs).close()
    return (time.process_time() - started) / logins * 1000


async def _prewarm_reference(n: int, port: int | None) -> float | None:
    """The reference implementation's prewarm: SQLAlchemy + asyncpg, checking out
    every connection of the pool in turn, then returning them."""
    import time

    try:
        from sqlalchemy import URL
        from sqlalchemy.ext.asyncio import create_async_engine
    except ImportError:
        return None
    from django.db import connections

    d = connections["stock"].settings_dict
    engine = create_async_engine(
        URL.create("postgresql+asyncpg", username=d["USER"], password=d["PASSWORD"], host=d["HOST"],
                   port=port or int(d["PORT"]), database=d["NAME"]),
        pool_size=n, max_overflow=0, pool_pre_ping=True, pool_reset_on_return=None, isolation_level="AUTOCOMMIT")
    started = time.perf_counter()
    held = [await engine.connect() for _ in range(n)]
    elapsed = time.perf_counter() - started
    for conn in held:
        await conn.close()
    await engine.dispose()
    return elapsed


def _count_statements(topology: Any, settings: Any, reads: int) -> float:
    """Statements per read counted in the replica's log (log_statement = all)."""
    from benchmarks.benchapp.models import Item
    from django_readonly_pool.backend.base import pool_connection
    from django_readonly_pool.pool import registry

    role, password = "bench_counter", "bench-c0unter"
    if not topology.primary.sql("SELECT 1 FROM pg_roles WHERE rolname = %s", [role], dbname="postgres"):
        topology.primary.sql(f"CREATE ROLE {role} LOGIN PASSWORD %s", [password], dbname="postgres")
        topology.primary.sql(f"ALTER ROLE {role} SET log_statement = 'all'", dbname="postgres")
        topology.primary.sql(f"GRANT SELECT ON bench_item TO {role}")
        topology.wait_for_replay()
    app = f"bench-count-{id(settings)}"
    original = registry.factory
    registry.factory = lambda alias: pool_connection(alias).make_read_pool(
        settings, user=role, password=password, application_name=app)

    offset = 0

    async def main() -> None:
        from django_readonly_pool.pool import open_pools

        nonlocal offset
        pool = (await open_pools(["readonly"]))["readonly"]
        await asyncio.sleep(0.3)  # the prewarm's verification statements are logged
        offset = topology.replica.logfile.stat().st_size  # count from the first read on
        for i in range(reads):
            await Item.objects.using("readonly").aget(pk=1 + i)
        for _ in range(200):
            stats = pool.get_stats()
            if stats["pool_available"] == stats["pool_size"]:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)

    try:
        asyncio.run(main())
    finally:
        registry.factory = original
    with topology.replica.logfile.open() as log:
        log.seek(offset)
        lines = [line for line in log if f"app={app} " in line and ("statement:" in line or "execute" in line)]
    return len(lines) / reads


def _measure_with(settings: Any, c: int, slow: bool, cfg: Config) -> Result:
    from django_readonly_pool.backend.base import pool_connection
    from django_readonly_pool.pool import registry

    original = registry.factory
    registry.factory = lambda alias: pool_connection(alias).make_read_pool(settings)
    try:
        return run_contender("ours", slow, c, cfg)
    finally:
        registry.factory = original


def claims(cfg: Config, topology: Any) -> dict[str, Any]:
    """Scenario 3: prewarm, first requests, skip-rollback + autocommit, pre-ping, overflow."""
    from django_readonly_pool.testing.proxy import ProcessTcpProxy

    out: dict[str, Any] = {}
    n = 300
    def prewarms(port: int | None) -> dict[str, Any]:
        parallel = min(asyncio.run(_prewarm_parallel(n, port)) for _ in range(1 if cfg.quick else 2))
        sequential = asyncio.run(_prewarm_sequential(n, port))
        reference = asyncio.run(_prewarm_reference(n, port))
        baseline = reference if reference is not None else sequential
        return {"parallel_s": round(parallel, 3),
                "one_by_one_psycopg_s": round(sequential, 3),
                "one_by_one_reference_s": round(reference, 3) if reference is not None else None,
                "speedup": round(baseline / parallel, 2),
                "speedup_vs_psycopg_one_by_one": round(sequential / parallel, 2)}

    loopback = prewarms(None)
    with ProcessTcpProxy(topology.replica.port, delay=0.001) as proxy:
        proxied = prewarms(proxy.port)
    cpu_ms = _login_cpu_ms(None)
    out["prewarm"] = {
        "connections": n, "loopback": loopback, "delay_proxy_1ms_each_way": proxied,
        # Every login hashes the password (PBKDF2, 4,096 rounds by default) in the client,
        # holding the GIL: n logins cost at least n x this of one core, however parallel.
        "client_cpu_ms_per_scram_login": round(cpu_ms, 3),
        "client_cpu_floor_s": round(n * cpu_ms / 1000, 3),
    }

    # p99 of the first 300 requests after start, with and without prewarm
    from benchmarks.benchapp.models import Item
    from django_readonly_pool.backend.base import pool_connection
    from django_readonly_pool.pool import open_pools, registry

    async def first_requests(prewarm: bool) -> dict[str, float]:
        if prewarm:
            await open_pools(["readonly"])  # what the ASGI lifespan does before serving
        import time

        sem = asyncio.Semaphore(64)
        latencies: list[float] = []

        async def one(i: int) -> None:
            async with sem:
                started = time.perf_counter()
                await Item.objects.using("readonly").aget(pk=1 + i)
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(one(i) for i in range(300)))
        latencies.sort()
        return {"p50_ms": round(latencies[150] * 1000, 3), "p99_ms": round(latencies[296] * 1000, 3)}

    first: dict[str, Any] = {}
    for prewarm in (True, False):
        original = registry.factory
        settings = _pool_settings(pool_size=64, max_overflow=0, prewarm=prewarm)
        registry.factory = lambda alias, s=settings: pool_connection(alias).make_read_pool(s)
        try:
            first["prewarmed" if prewarm else "cold"] = asyncio.run(first_requests(prewarm))
        finally:
            registry.factory = original
    out["first_300_requests"] = first

    # skip-rollback + autocommit (recommended) against the defaults
    recommended = _pool_settings(pool_size=16, autocommit=True, pool_skip_rollback=True, pre_ping=True)
    defaults = _pool_settings(pool_size=16, autocommit=False, pool_skip_rollback=False, pre_ping=True)
    rec = _measure_with(recommended, 16, False, cfg)
    dft = _measure_with(defaults, 16, False, cfg)
    out["recommended_vs_defaults"] = {
        "recommended": {**rec.as_dict(), "statements_per_read": _count_statements(topology, recommended, 50)},
        "defaults": {**dft.as_dict(), "statements_per_read": _count_statements(topology, defaults, 50)},
        "throughput_ratio": round(rec.ops_per_s / dft.ops_per_s, 3),
    }

    # pre-ping with and without the bypass window
    always = _measure_with(_pool_settings(pool_size=16, pre_ping_interval=0.0), 16, False, cfg)
    window = _measure_with(_pool_settings(pool_size=16, pre_ping_interval=0.5), 16, False, cfg)
    out["pre_ping"] = {"ping_every_checkout": always.as_dict(), "bypass_window_0_5s": window.as_dict(),
                       "throughput_ratio": round(window.ops_per_s / always.ops_per_s, 3)}

    # overflow under a burst of 256 concurrent reads (2 ms, and 20 ms on the server)
    async def burst(settings: Any, server_ms: int) -> dict[str, Any]:
        import time

        from benchmarks.benchapp.models import Item
        from django_readonly_pool import run

        def read(pk: int) -> Any:
            return list(Item.objects.using("readonly").raw(
                f"SELECT id, pg_sleep({server_ms / 1000}) FROM bench_item WHERE id = %s", [pk]))

        original = registry.factory
        registry.factory = lambda alias: pool_connection(alias).make_read_pool(settings)
        try:
            pool = (await open_pools(["readonly"]))["readonly"]
            latencies: list[float] = []
            peak = 0

            async def one(i: int) -> None:
                nonlocal peak
                started = time.perf_counter()
                await run(read, 1 + i)
                latencies.append(time.perf_counter() - started)
                peak = max(peak, pool.get_stats()["pool_size"])

            started = time.perf_counter()
            await asyncio.gather(*(one(i) for i in range(256)))
            elapsed = time.perf_counter() - started
            latencies.sort()
            return {"elapsed_s": round(elapsed, 3), "p99_ms": round(latencies[252] * 1000, 2), "peak_size": peak}
        finally:
            registry.factory = original

    out["overflow_burst_256"] = {
        f"{ms}ms": {
            "pool_8_overflow_56": asyncio.run(burst(_pool_settings(pool_size=8, max_overflow=56, prewarm=True), ms)),
            "pool_8_overflow_0": asyncio.run(burst(_pool_settings(pool_size=8, max_overflow=0, prewarm=True), ms)),
        }
        for ms in (2, 20)
    }
    return out


# --------------------------------------------------------------------------- #
# 4. Memory
# --------------------------------------------------------------------------- #

_MEMORY_CHILD = r"""
import asyncio, json, os, sys
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.settings")
import django; django.setup()

def rss_kb():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS"))

async def main(kind, n):
    before = rss_kb()
    if kind == "ours":
        import dataclasses
        from django_readonly_pool.backend.base import pool_connection
        s = dataclasses.replace(pool_connection("readonly").readonly_pool_settings, pool_size=n, max_overflow=0,
                                prewarm=True, prewarm_timeout=300)
        pool = pool_connection("readonly").make_read_pool(s, application_name="bench-memory")
        await pool.start()
    else:
        from sqlalchemy import URL, text
        from sqlalchemy.ext.asyncio import create_async_engine
        from django.db import connections
        d = connections["stock"].settings_dict
        engine = create_async_engine(URL.create("postgresql+asyncpg", username=d["USER"], password=d["PASSWORD"],
            host=d["HOST"], port=int(d["PORT"]), database=d["NAME"]),
            connect_args={"server_settings": {"application_name": "bench-memory"}},
            pool_size=n, max_overflow=0, isolation_level="AUTOCOMMIT")
        held = await asyncio.gather(*(engine.connect() for _ in range(n)))
        for c in held: await c.close()
    after = rss_kb()
    print(json.dumps({"rss_before_kb": before, "rss_after_kb": after}), flush=True)
    sys.stdin.readline()  # the parent reads the server side meanwhile

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def _backend_memory(topology: Any) -> dict[str, Any]:
    pids = [r[0] for r in topology.replica.sql(
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'bench-memory'", dbname="postgres")]
    pss = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                pss.append(next(int(line.split()[1]) for line in f if line.startswith("Pss:")))
        except (OSError, StopIteration):
            continue
    return {"backends": len(pids), "avg_backend_pss_kb": round(sum(pss) / len(pss)) if pss else None}


def memory(cfg: Config, topology: Any) -> dict[str, Any]:
    """Scenario 4: client RSS per pooled connection, server backends."""
    import json
    import subprocess
    import sys

    n = 100 if cfg.quick else 300
    out: dict[str, Any] = {"connections": n}
    kinds = ["ours"] + (["sqlalchemy_asyncpg"] if "sqlalchemy_asyncpg" in contenders.available() else [])
    for kind in kinds:
        child = subprocess.Popen([sys.executable, "-c", _MEMORY_CHILD, kind, str(n)], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None and child.stdin is not None
        line = json.loads(child.stdout.readline())
        server = _backend_memory(topology)
        child.stdin.write("\n")
        child.stdin.flush()
        child.wait(60)
        out[kind] = {"client_kb_per_connection": round((line["rss_after_kb"] - line["rss_before_kb"]) / n, 1),
                     **server}
    return out


# --------------------------------------------------------------------------- #
# 5. How cost grows
# --------------------------------------------------------------------------- #


def scaling(cfg: Config) -> dict[str, Any]:
    """Scenario 5: concurrency 1..512 (2 ms reads, pool of 64) and result size 1..10,000 rows."""
    import time

    out: dict[str, Any] = {"concurrency": {}, "ceiling": {}, "result_size": {}}
    levels = [1, 8, 64, 256, 512] if cfg.quick else [1, 4, 16, 64, 128, 256, 512]
    for c in levels:
        # Fairness is fewest / most reads per task: the window grows with the tasks, so that each
        # completes dozens of reads and the one read in flight at either edge weighs little.
        window = replace(cfg, seconds=cfg.seconds * max(1.0, c / 64))
        out["concurrency"][str(c)] = run_contender("ours", True, c, window).as_dict()
        # The ceiling through the same sweep: psycopg's own pool (its queue past 64), same SQL.
        out["ceiling"][str(c)] = run_contender("raw_pool", True, c, window).as_dict()

    from django.db import connections

    from benchmarks.benchapp.models import Item

    sizes = [1, 100, 10_000] if cfg.quick else [1, 10, 100, 1000, 10_000]
    rounds = 3 if cfg.quick else 7

    async def ours_rows(n: int) -> list[float]:
        from django_readonly_pool.pool import open_pools

        await open_pools(["readonly"])
        qs = Item.objects.using("readonly").order_by("pk")
        times = []
        for _ in range(rounds + 1):
            started = time.perf_counter()
            rows = [x async for x in qs[:n]]
            times.append(time.perf_counter() - started)
            assert len(rows) == n
        return times[1:]

    for n in sizes:
        ours_times = asyncio.run(ours_rows(n))
        sync_times = []
        qs = Item.objects.using("sync").order_by("pk")
        for _ in range(rounds + 1):
            started = time.perf_counter()
            rows = list(qs[:n])
            sync_times.append(time.perf_counter() - started)
            assert len(rows) == n
        ours_ms = sorted(ours_times)[len(ours_times) // 2] * 1000
        sync_ms = sorted(sync_times[1:])[len(sync_times[1:]) // 2] * 1000
        out["result_size"][str(n)] = {"ours_ms": round(ours_ms, 3), "sync_orm_ms": round(sync_ms, 3),
                                      "ratio": round(ours_ms / sync_ms, 3)}
    connections.close_all()
    return out


# --------------------------------------------------------------------------- #
# The router's cost
# --------------------------------------------------------------------------- #


def router_cost() -> dict[str, Any]:
    """Microseconds per db_for_read/db_for_write decision (no I/O)."""
    import time

    from django.db import router

    from benchmarks.benchapp.models import Item
    from django_readonly_pool.router import routing_scope

    def per_call(fn: Any, n: int = 100_000) -> float:
        started = time.perf_counter()
        for _ in range(n):
            fn(Item)
        return (time.perf_counter() - started) / n * 1e6

    with routing_scope():
        read = per_call(router.db_for_read)
    with routing_scope():
        write = per_call(router.db_for_write)
    return {"db_for_read_us": round(read, 3), "db_for_write_us": round(write, 3)}

"""Turn a run into benchmarks/results/latest.{json,md,png}."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"

# key, description, comparison, target
TARGETS = [
    ("workloads_min_peer_cpu_ratio_0ms_c32", "x our client CPU per read, the thriftiest Django-ORM peer that "
     "returns Django's values, on its best workload W1-W7 (0 ms, c=32)", ">=", 1.5),
    ("workloads_min_throughput_vs_best_peer_0ms_c32", "x the best Django-ORM peer's throughput, worst workload "
     "W1-W7 (0 ms, c=32)", ">=", 1.3),
    ("w5_time_vs_vpg_fetch_models_0ms_c32", "x django-vpg fetch_models' time for W5 (10,000 instances; "
     "lower is better)", "<=", 1.0),
    ("w1_vs_raw_psycopg_0ms_c32", "x a raw psycopg pool on W1's SQL (0 ms, c=32)", ">=", 0.6),
    ("w1_min_over_peak_past_peak_to_512", "x its peak, the lowest W1 throughput from the peak's concurrency "
     "to 512 tasks (pool of 64, 2 ms)", ">=", 0.85),
    ("w1_min_fairness_1_to_512", "fairness (fewest / most reads per task), the lowest from 1 to 512 tasks", ">=", 0.9),
    ("ratio_vs_stock_asgi_2ms_c64", "x stock async ORM under ASGI (2 ms, c=64)", ">=", 8.0),
    ("ratio_vs_django_pool_asgi_2ms_c64", "x Django's built-in pool under ASGI (2 ms, c=64)", ">=", 4.0),
    ("ratio_vs_django_async_backend_0ms_c32", "x django-async-backend (0 ms, c=32)", ">=", 1.0),
    ("ratio_http_vs_stock_2ms_c64", "x stock, end to end over HTTP (2 ms, c=64)", ">=", 3.0),
    ("ratio_vs_sqlalchemy_asyncpg_0ms_c32", "x SQLAlchemy + asyncpg (0 ms, c=32)", ">=", 1.0),
    ("ratio_vs_raw_pool_0ms_c32", "x a raw psycopg pool (0 ms, c=32)", ">=", 0.5),
    ("prewarm_300_seconds", "s to prewarm 300 connections (loopback, SCRAM)", "<=", 1.0),
    ("prewarm_speedup_vs_sequential_300", "x faster than one by one (1 ms each way)", ">=", 5.0),
    ("statements_per_read_recommended", "statements per read, recommended settings", "==", 1.0),
    ("large_result_10k_vs_sync_orm", "x the sync ORM's time for 10,000 rows (lower is better)", "<=", 1.2),
]


PEERS = ("dab", "vpg_dab", "vpg_stock", "turbo", "djpool", "stock")


def workload_keys(workloads: dict[str, Any], key: str = "0ms_c32") -> dict[str, Any]:
    """The W1-W7 targets from one run's table (None where a figure is missing)."""
    cpu_ratios, throughput_ratios = [], []
    for cells in workloads.values():
        row = cells.get(key) or {}
        ours = row.get("ours") or {}
        if not ours.get("ops_per_s"):
            continue
        # A peer that returns other values (≠) does other work: reported, not a target's yardstick.
        peers = [row[p] for p in PEERS if p in row and row[p].get("ops_per_s") and row[p].get("same_values", True)]
        cpu_ratios += [p["cpu_ms_per_1000"] / ours["cpu_ms_per_1000"] for p in peers]
        if peers:
            throughput_ratios.append(ours["ops_per_s"] / max(p["ops_per_s"] for p in peers))

    def cell(workload: str, name: str) -> dict[str, Any]:
        return ((workloads.get(workload) or {}).get(key) or {}).get(name) or {}

    w5, vpg5 = cell("W5", "ours"), cell("W5", "vpg_raw")
    w1, raw1 = cell("W1", "ours"), cell("W1", "raw_psycopg")
    return {
        "workloads_min_peer_cpu_ratio_0ms_c32": round(min(cpu_ratios), 3) if cpu_ratios else None,
        "workloads_min_throughput_vs_best_peer_0ms_c32": (round(min(throughput_ratios), 3)
                                                          if throughput_ratios else None),
        "w5_time_vs_vpg_fetch_models_0ms_c32": (round(vpg5["ops_per_s"] / w5["ops_per_s"], 3)
                                                if w5.get("ops_per_s") and vpg5.get("ops_per_s") else None),
        "w1_vs_raw_psycopg_0ms_c32": (round(w1["ops_per_s"] / raw1["ops_per_s"], 3)
                                      if w1.get("ops_per_s") and raw1.get("ops_per_s") else None),
    }


def keys(run: dict[str, Any]) -> dict[str, Any]:
    from benchmarks.scenarios import ratio

    orm = run.get("orm_reads", {})
    out: dict[str, Any] = {
        **workload_keys((run.get("workloads") or {}).get("results") or {}),
        "ratio_vs_stock_asgi_2ms_c64": ratio(orm, "stock_asgi", "2ms_c64"),
        "ratio_vs_django_pool_asgi_2ms_c64": ratio(orm, "django_pool_asgi", "2ms_c64"),
        "ratio_vs_sqlalchemy_asyncpg_0ms_c32": ratio(orm, "sqlalchemy_asyncpg", "0ms_c32"),
        "ratio_vs_raw_pool_0ms_c32": ratio(orm, "raw_pool", "0ms_c32"),
    }
    dab = (run.get("django_async_backend") or {}).get("results") or {}
    out["ratio_vs_django_async_backend_0ms_c32"] = ratio(dab, "dab", "0ms_c32") if dab else None
    http = run.get("http") or {}
    out["ratio_http_vs_stock_2ms_c64"] = (round(http["ours"]["rps"] / http["stock"]["rps"], 3)
                                          if http.get("ours") and http.get("stock") else None)
    claims = run.get("claims") or {}
    prewarm = claims.get("prewarm") or {}
    out["prewarm_300_seconds"] = (prewarm.get("loopback") or {}).get("parallel_s")
    # speedup against one-by-one warming as the reference does it (SQLAlchemy + asyncpg)
    out["prewarm_speedup_vs_sequential_300"] = (prewarm.get("delay_proxy_1ms_each_way") or {}).get("speedup")
    out["statements_per_read_recommended"] = (
        ((claims.get("recommended_vs_defaults") or {}).get("recommended") or {}).get("statements_per_read"))
    sweep = (run.get("scaling") or {}).get("concurrency") or {}
    if sweep:
        out["w1_min_over_peak_past_peak_to_512"] = _past_peak(sweep)
        ceiling = (run.get("scaling") or {}).get("ceiling") or {}
        if ceiling:  # not a target: what psycopg's own pool keeps through the same sweep
            out["raw_pool_min_over_peak_past_peak_to_512"] = _past_peak(ceiling)
        out["w1_min_fairness_1_to_512"] = round(min(r["fairness"] for r in sweep.values()), 3)
    sizes = (run.get("scaling") or {}).get("result_size") or {}
    out["large_result_10k_vs_sync_orm"] = (sizes.get("10000") or {}).get("ratio")
    return out


def _past_peak(sweep: dict[str, Any]) -> float:
    """The lowest throughput from the peak's concurrency up, as a share of the peak."""
    peak = max(sweep, key=lambda c: sweep[c]["ops_per_s"])
    past = [r["ops_per_s"] for c, r in sweep.items() if int(c) >= int(peak)]
    return round(min(past) / sweep[peak]["ops_per_s"], 3)


def verdicts(values: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for key, text, op, target in TARGETS:
        value = values.get(key)
        met = None
        if value is not None:
            met = {">=": value >= target, "<=": value <= target, "==": abs(value - target) < 1e-9}[op]
        rows.append({"key": key, "what": text, "value": value, "target": f"{op} {target:g}", "met": met})
    return rows


def write(run: dict[str, Any]) -> dict[str, Any]:
    RESULTS.mkdir(exist_ok=True)
    values = keys(run)
    document = {**values, "targets": verdicts(values), "machine": run["machine"], "date": run["machine"]["date"],
                "mode": run["mode"], "duration_s": run.get("duration_s"), "scenarios": run}
    (RESULTS / "latest.json").write_text(json.dumps(document, indent=1, default=str) + "\n")
    (RESULTS / "latest.md").write_text(markdown(document))
    try:
        chart(document, RESULTS / "latest.png")
        workload_chart(document, RESULTS / "workloads.png")
    except ImportError:
        pass
    return document


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.2f}" if value < 100 else f"{value:,.0f}"
    return str(value)


def markdown(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    run = doc["scenarios"]
    lines = [
        f"Run of {doc['date']} ({doc['mode']} mode, {doc.get('duration_s', 0):.0f} s) on {m['cpu']} "
        f"({m['cores']} cores, {m['memory_gb']} GiB), {m['os']}; Python {m['python']}, Django {m['django']}, "
        f"psycopg {m['psycopg']}, psycopg_pool {m['psycopg_pool']}, {m['postgresql']}. "
        "Ratios compare measurements of the same run (this machine is shared and noisy).",
        "",
        "| Target | Measured | Target | Met |",
        "|---|---|---|---|",
    ]
    for row in doc["targets"]:
        met = {True: "yes", False: "**no**", None: "n/a"}[row["met"]]
        lines.append(f"| {row['what']} (`{row['key']}`) | {_fmt(row['value'])} | {row['target']} | {met} |")
    lines += workload_tables(run.get("workloads") or {})
    orm = run.get("orm_reads") or {}
    if orm:
        columns = list(next(iter(orm.values())).keys())
        lines += ["", "Primary-key reads per second (closed loop; `0ms`/`2ms`: server-side latency, `cN`: concurrency):",
                  "", "| Contender | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
        for name, rows in orm.items():
            lines.append(f"| {name} | " + " | ".join(_fmt(rows[c]["ops_per_s"]) for c in columns) + " |")
        lines += ["", "p99 latency, ms:", "", "| Contender | " + " | ".join(columns) + " |",
                  "|---|" + "---|" * len(columns)]
        for name, rows in orm.items():
            lines.append(f"| {name} | " + " | ".join(_fmt(rows[c]["p99_ms"]) for c in columns) + " |")
    dab = run.get("django_async_backend") or {}
    if dab.get("results"):
        lines += ["", f"Against django-async-backend {dab.get('django_async_backend')} (Python {dab.get('python')}, "
                      f"Django {dab.get('django')}, its pool on), same process:", "",
                  "| Contender | 0ms_c32 | 2ms_c64 |", "|---|---|---|"]
        for name, rows in dab["results"].items():
            lines.append(f"| {name} | {_fmt(rows['0ms_c32']['ops_per_s'])} | {_fmt(rows['2ms_c64']['ops_per_s'])} |")
    elif dab.get("skipped"):
        lines += ["", f"django-async-backend: not measured ({dab['skipped']})."]
    http = run.get("http") or {}
    if http:
        lines += ["", "End to end over HTTP (example project, uvicorn, 1 worker, c=64, 2 ms reads):", "",
                  "| Server | requests/s | p50 ms | p99 ms | errors |", "|---|---|---|---|---|"]
        for name, r in http.items():
            lines.append(f"| {name} | {_fmt(r['rps'])} | {_fmt(r['p50_ms'])} | {_fmt(r['p99_ms'])} | {r['errors']} |")
    claims = run.get("claims") or {}
    if claims:
        p = claims["prewarm"]
        lb, px = p["loopback"], p["delay_proxy_1ms_each_way"]
        lines += ["", "The guide's claims:", "",
                  f"* Prewarm {p['connections']} connections (SCRAM password authentication): on loopback "
                  f"{lb['parallel_s']} s in parallel, against {lb['one_by_one_reference_s']} s one by one as the reference "
                  f"warms (SQLAlchemy + asyncpg checkouts; {lb['speedup']}x) and {lb['one_by_one_psycopg_s']} s with "
                  f"psycopg ({lb['speedup_vs_psycopg_one_by_one']}x); through 1 ms of added latency each way "
                  f"{px['parallel_s']} s against {px['one_by_one_reference_s']} s ({px['speedup']}x) and "
                  f"{px['one_by_one_psycopg_s']} s ({px['speedup_vs_psycopg_one_by_one']}x). One SCRAM login "
                  f"costs the client {p.get('client_cpu_ms_per_scram_login')} ms of CPU (libpq's PBKDF2, GIL held): "
                  f"{p['connections']} logins need at least {p.get('client_cpu_floor_s')} s of one core."]
        f = claims["first_300_requests"]
        lines.append(f"* First 300 requests after start (c=64): p99 {f['prewarmed']['p99_ms']} ms prewarmed, "
                     f"{f['cold']['p99_ms']} ms cold.")
        r = claims["recommended_vs_defaults"]
        lines.append(f"* Recommended settings vs defaults (c=16, 0 ms): {r['throughput_ratio']}x throughput; "
                     f"{r['recommended']['statements_per_read']} vs {r['defaults']['statements_per_read']} "
                     "statements per read; p50 "
                     f"{r['recommended']['p50_ms']} ms vs {r['defaults']['p50_ms']} ms.")
        pp = claims["pre_ping"]
        lines.append(f"* Pre-ping bypass window (0.5 s) vs a ping on every checkout: {pp['throughput_ratio']}x throughput.")
        for latency, o in claims["overflow_burst_256"].items():
            lines.append(
                f"* Burst of 256 concurrent {latency} reads, POOL_SIZE 8: with MAX_OVERFLOW 56 done in "
                f"{o['pool_8_overflow_56']['elapsed_s']} s (peak {o['pool_8_overflow_56']['peak_size']} connections, "
                f"p99 {o['pool_8_overflow_56']['p99_ms']} ms); without overflow {o['pool_8_overflow_0']['elapsed_s']} s "
                f"(p99 {o['pool_8_overflow_0']['p99_ms']} ms).")
    mem = run.get("memory") or {}
    if mem:
        lines += ["", f"Memory, {mem['connections']} pooled connections:", "",
                  "| Pool | client KiB per connection | server backends | avg backend PSS KiB |", "|---|---|---|---|"]
        for name in ("ours", "sqlalchemy_asyncpg"):
            if name in mem:
                r = mem[name]
                lines.append(f"| {name} | {_fmt(r['client_kb_per_connection'])} | {r['backends']} | "
                             f"{_fmt(r['avg_backend_pss_kb'])} |")
    scaling = run.get("scaling") or {}
    if scaling:
        ceiling = scaling.get("ceiling") or {}
        lines += ["", "Concurrency sweep (ours, pool of 64, 2 ms reads; beside it a raw psycopg pool of 64 on the "
                  "same SQL, the ceiling, through the same sweep):", "",
                  "| concurrency | reads/s | p50 ms | p99 ms | max ms | fairness | client CPU ms / 1,000 | "
                  "raw pool reads/s | raw pool CPU ms / 1,000 |", "|---|---|---|---|---|---|---|---|---|"]
        for c, r in scaling["concurrency"].items():
            raw = ceiling.get(c) or {}
            lines.append(f"| {c} | {_fmt(r['ops_per_s'])} | {_fmt(r['p50_ms'])} | {_fmt(r['p99_ms'])} | "
                         f"{_fmt(r['max_ms'])} | {_fmt(r['fairness'])} | {_fmt(r.get('cpu_ms_per_1000'))} | "
                         f"{_fmt(raw.get('ops_per_s'))} | {_fmt(raw.get('cpu_ms_per_1000'))} |")
        if doc.get("raw_pool_min_over_peak_past_peak_to_512") is not None:
            lines += ["", f"Past its peak to 512 tasks, ours keeps {_fmt(doc['w1_min_over_peak_past_peak_to_512'])}x "
                      f"of its peak and the raw psycopg pool {_fmt(doc['raw_pool_min_over_peak_past_peak_to_512'])}x "
                      "of its own."]
        lines += ["", "Result size (one query, median ms; ours async vs Django's sync ORM):", "",
                  "| rows | ours | sync ORM | ratio |", "|---|---|---|---|"]
        for n, r in scaling["result_size"].items():
            lines.append(f"| {n} | {_fmt(r['ours_ms'])} | {_fmt(r['sync_orm_ms'])} | {_fmt(r['ratio'])} |")
    router = run.get("router") or {}
    if router:
        lines += ["", f"Router: {router['db_for_read_us']} µs per db_for_read, {router['db_for_write_us']} µs per "
                      "db_for_write."]
    return "\n".join(lines) + "\n"


def workload_tables(workloads: dict[str, Any]) -> list[str]:
    if workloads.get("skipped"):
        return ["", f"W1-W7: not measured ({workloads['skipped']})."]
    table = workloads.get("results") or {}
    if not table:
        return []
    versions = ", ".join(f"{k} {v}" for k, v in (workloads.get("versions") or {}).items())
    names = list(dict.fromkeys(n for cells in table.values() for row in cells.values() for n in row))
    lines = ["", f"W1-W7 in one Python {workloads.get('python')} process ({versions}):", ""]
    lines += [f"* {w}: `{text}`" for w, text in (workloads.get("workloads") or {}).items()]
    for key, title in (("0ms_c32", "32 tasks, no added latency"), ("2ms_c64", "64 tasks, 2 ms per statement")):
        lines += ["", f"Operations per second and client CPU per 1,000 operations (ms), {title}:", "",
                  "| Contender | " + " | ".join(table) + " |", "|---|" + "---|" * len(table)]
        for name in names:
            cells = []
            for workload in table:
                r = (table[workload].get(key) or {}).get(name)
                if r is None:
                    cells.append("")
                elif "error" in r:
                    cells.append("fails")
                else:
                    mark = "" if r.get("same_values", True) else " ≠"
                    cells.append(f"{_fmt(r['ops_per_s'])} ({_fmt(r['cpu_ms_per_1000'])}){mark}")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Server CPU per 1,000 operations (ms; every PostgreSQL process of the machine, which the "
              "client shares: 2 cores hold client + server CPU), 32 tasks, no added latency:", "",
              "| Contender | " + " | ".join(table) + " |", "|---|" + "---|" * len(table)]
    for name in names:
        cells = []
        for workload in table:
            r = (table[workload].get("0ms_c32") or {}).get(name)
            server = (r or {}).get("server_cpu_ms_per_1000")
            cells.append("" if server is None or "error" in (r or {}) else _fmt(server))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    notes = sorted({f"{name} on {w}: " + (r.get("error") or "; ".join(r.get("differences", [])))
                    for w, cells in table.items() for row in cells.values() for name, r in row.items()
                    if "error" in r or not r.get("same_values", True)})
    if notes:
        lines += ["", "`fails`: the peer cannot run it; `≠`: its values differ from Django's:", ""]
        lines += [f"* {n}" for n in notes]
    return lines


def chart(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = doc["scenarios"]
    orm = run.get("orm_reads") or {}
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    if orm:
        ax = axes[0]
        names = list(orm)
        for offset, key in ((-0.2, "0ms_c32"), (0.2, "2ms_c64")):
            values = [orm[n].get(key, {}).get("ops_per_s", 0) for n in names]
            ax.bar([i + offset for i in range(len(names))], values, width=0.4, label=key)
        ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel("primary-key reads / s")
        ax.set_title("ORM reads")
        ax.legend()
    scaling = (run.get("scaling") or {}).get("concurrency") or {}
    if scaling:
        ax = axes[1]
        levels = [int(c) for c in scaling]
        ax.plot(levels, [scaling[str(c)]["ops_per_s"] for c in levels], marker="o", label="reads/s")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrency (pool of 64, 2 ms reads)")
        ax.set_ylabel("reads / s")
        ax2 = ax.twinx()
        ax2.plot(levels, [scaling[str(c)]["p99_ms"] for c in levels], marker="s", color="tab:red", label="p99 ms")
        ax2.set_ylabel("p99 ms", color="tab:red")
        ax.set_title("No collapse past the pool size")
    sizes = (run.get("scaling") or {}).get("result_size") or {}
    if sizes:
        ax = axes[2]
        ns = [int(n) for n in sizes]
        ax.plot(ns, [sizes[str(n)]["ours_ms"] for n in ns], marker="o", label="ours (async)")
        ax.plot(ns, [sizes[str(n)]["sync_orm_ms"] for n in ns], marker="s", label="Django sync ORM")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("rows per query")
        ax.set_ylabel("ms per query")
        ax.set_title("Result size")
        ax.legend()
    fig.suptitle(f"django-readonly-pool benchmarks, {doc['date']} ({doc['machine']['cores']} cores)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def workload_chart(doc: dict[str, Any], path: Path) -> None:
    """Client CPU per operation, W1-W7, every contender (0 ms, 32 tasks; log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = ((doc["scenarios"].get("workloads") or {}).get("results")) or {}
    if not table:
        return
    names = list(dict.fromkeys(n for cells in table.values() for n in (cells.get("0ms_c32") or {})))
    fig, ax = plt.subplots(figsize=(14, 4.8))
    width = 0.8 / max(len(names), 1)
    for k, name in enumerate(names):
        xs, ys = [], []
        for w, workload in enumerate(table):
            r = (table[workload].get("0ms_c32") or {}).get(name) or {}
            if r.get("cpu_ms_per_1000"):
                xs.append(w - 0.4 + (k + 0.5) * width)
                ys.append(r["cpu_ms_per_1000"] / 1000)
        ax.bar(xs, ys, width=width, label=name)
    ax.set_xticks(range(len(table)), list(table))
    ax.set_yscale("log")
    ax.set_ylabel("client CPU per operation, ms (lower is better)")
    ax.set_title("W1-W7: client CPU per operation, 32 tasks, no added latency")
    ax.legend(ncol=4, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)

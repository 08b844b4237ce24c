"""``python -m benchmarks [--quick] [--only SCENARIO ...]``: see benchmarks/README.md.

Starts its own primary + replica, runs every scenario, writes
benchmarks/results/latest.json, latest.md and latest.png.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

SCENARIOS = ("workloads", "orm_reads", "django_async_backend", "http", "claims", "memory", "scaling", "router")


def _in_peers_venv(module: str, args: list[str], *, timeout: float, quiet: bool) -> dict[str, Any]:
    """``python -m MODULE ARGS`` in the Python 3.12+ environment of the peers (benchmarks/dab.py
    creates it); its standard output is one JSON document. *quiet*: its standard error is kept for
    the report instead of shown as it runs."""
    from benchmarks import dab

    try:
        python = dab.ensure_venv()
    except subprocess.CalledProcessError as exc:
        return {"skipped": f"could not set up the Python 3.12 environment: {exc}"}
    if python is None:
        return {"skipped": "no Python 3.12+ interpreter found (the peers need one)"}
    out = subprocess.run([str(python), "-m", module, *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE if quiet else None, text=True, timeout=timeout, check=False,
                         env=os.environ, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if out.returncode != 0:
        said = out.stderr[-1500:] if quiet else "see its output above"
        return {"skipped": f"{module} failed (exit {out.returncode}): {said}"}
    return json.loads(out.stdout)


def _dab(cfg: Any) -> dict[str, Any]:
    return _in_peers_venv("benchmarks.dab", ["--seconds", str(cfg.seconds), "--warmup", str(cfg.warmup)],
                          timeout=900, quiet=True)


def _workloads(cfg: Any) -> dict[str, Any]:
    """W1-W7 against every peer (benchmarks/workloads.py), its progress shown as it runs."""
    return _in_peers_venv("benchmarks.workloads", ["--seconds", str(cfg.seconds), "--warmup", str(cfg.warmup),
                                                   "--repeats", str(cfg.repeats)], timeout=3600, quiet=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short runs (about 3 minutes)")
    parser.add_argument("--only", action="append", choices=SCENARIOS, help="run only these scenarios")
    args = parser.parse_args(argv)
    selected = args.only or list(SCENARIOS)

    from benchmarks.harness import machine, start_topology

    started = time.monotonic()
    print("starting a primary + replica ...", file=sys.stderr, flush=True)
    topology = start_topology()
    run: dict[str, Any] = {"mode": "quick" if args.quick else "full"}
    try:
        import django

        django.setup()
        from benchmarks import report, scenarios

        cfg = scenarios.Config.make(args.quick)
        run["machine"] = machine()
        steps = {
            "workloads": lambda: _workloads(cfg),
            "orm_reads": lambda: scenarios.orm_reads(cfg),
            "django_async_backend": lambda: _dab(cfg),
            "http": lambda: scenarios.http(cfg),
            "claims": lambda: scenarios.claims(cfg, topology),
            "memory": lambda: scenarios.memory(cfg, topology),
            "scaling": lambda: scenarios.scaling(cfg),
            "router": scenarios.router_cost,
        }
        for name in SCENARIOS:
            if name in selected:
                print(f"[{time.monotonic() - started:5.0f} s] {name} ...", file=sys.stderr, flush=True)
                run[name] = steps[name]()
        run["duration_s"] = time.monotonic() - started
        document = report.write(run)
    finally:
        if "django_readonly_pool.health" in sys.modules:
            sys.modules["django_readonly_pool.health"].monitor.stop()  # before its replica goes
        topology.stop()
    for row in document["targets"]:
        mark = {True: "met", False: "MISSED", None: "n/a"}[row["met"]]
        print(f"{mark:6} {row['key']}: {row['value']} (target {row['target']})")
    print(f"results: benchmarks/results/latest.{{json,md,png}} ({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

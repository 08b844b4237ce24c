"""``python -m benchmarks [--quick] [--only NAME ...]``: see benchmarks/README.md."""

from __future__ import annotations

import argparse
import json
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--quick", action="store_true", help="short runs (about 3 minutes)")
    parser.add_argument("--only", action="append", help="run only these scenarios")
    args = parser.parse_args(argv)

    from benchmarks.harness import start_topology

    started = time.monotonic()
    topology = start_topology()
    try:
        import django

        django.setup()
        from benchmarks import scenarios

        cfg = scenarios.Config.make(args.quick)
        result = scenarios.orm_reads(cfg)
        print(json.dumps(result, indent=1))
    finally:
        topology.stop()
    print(f"done in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""django-async-backend against this package, in one Python 3.12 / Django 6.1 process.

Run by ``python -m benchmarks`` in ``.bench/venv312`` (created on first use):
``python -m benchmarks.dab --seconds S --warmup W`` prints one JSON document.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

VENV = Path(__file__).resolve().parent.parent / ".bench" / "venv312"
# The peers, at the versions issue #12 measured (newer ones are welcome: the report names them).
REQUIREMENTS = ["django>=6.1,<6.2", "django-async-backend>=6.1.5,<6.2", "django-vpg>=0.6.2",
                "django-turbo-orm>=0.2.0", "psycopg[binary,pool]>=3.2", "psycopg-pool>=3.3.3",
                "greenlet>=3", "asgiref>=3.8", "asyncpg>=0.29", "sqlalchemy[asyncio]>=2.0"]


def python312() -> str | None:
    """A Python 3.12+ interpreter (django-async-backend needs one)."""
    import glob
    import shutil
    import subprocess

    candidates = [shutil.which(name) for name in ("python3.13", "python3.12")]
    for pattern in ("~/.pyenv/versions/3.13*/bin/python", "~/.pyenv/versions/3.12*/bin/python"):
        candidates += sorted(glob.glob(os.path.expanduser(pattern)), reverse=True)
    for candidate in filter(None, candidates):
        # A pyenv shim is on PATH even when its version is not selected: run it.
        probe = subprocess.run([candidate, "-c", "import sys; print(sys.version_info >= (3, 12))"],
                               capture_output=True, text=True, check=False)
        if probe.returncode == 0 and probe.stdout.strip() == "True":
            return candidate
    return None


def ensure_venv() -> Path | None:
    """Create .bench/venv312 with Django 6.1, django-async-backend and this package."""
    import subprocess

    python = VENV / "bin" / "python"
    marker = VENV / ".ready-peers-3"  # written once every requirement is in
    if marker.exists():
        return python
    interpreter = python312()
    if interpreter is None:
        return None
    root = Path(__file__).resolve().parent.parent
    subprocess.run([interpreter, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", *REQUIREMENTS], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "-e", str(root)], check=True)
    marker.write_text("ok\n")
    return python


@asynccontextmanager
async def dab(slow: bool) -> AsyncIterator[Any]:
    """django-async-backend's ORM, pooled; each request returns its connection
    (request_finished), as under its ASGI signal handlers."""
    from django_async_backend.db import close_old_async_connections

    from benchmarks.dabapp.models import DabItem, DabSlowItem

    manager = (DabSlowItem if slow else DabItem).async_objects.using("dab")
    pks = list(range(1, 10_001))

    async def op(i: int) -> Any:
        obj = await manager.aget(pk=pks[i % len(pks)])
        await close_old_async_connections()  # request_finished: back to the pool
        return obj

    # open and fill its pool first, as ours is prewarmed
    await asyncio.gather(*(op(i) for i in range(64)))
    yield op


async def run(seconds: float, warmup: float) -> dict[str, Any]:
    from benchmarks import contenders
    from benchmarks.harness import measure

    result: dict[str, Any] = {}
    for slow, c in ((False, 32), (True, 64)):
        key = f"{'2ms' if slow else '0ms'}_c{c}"
        for name in ("ours", "dab", "ours", "dab"):  # interleaved, best of two
            factory = contenders.ours if name == "ours" else dab
            async with factory(slow) as op:
                r = await measure(op, c, seconds, warmup)
            previous = result.setdefault(name, {}).get(key)
            if previous is None or r.ops_per_s > previous["ops_per_s"]:
                result[name][key] = r.as_dict()
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    args = parser.parse_args()
    os.environ["BENCH_DAB"] = "1"
    os.environ["DJANGO_SETTINGS_MODULE"] = "benchmarks.settings"
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import django

    django.setup()
    import django_async_backend

    measured: dict[str, Any] = {"python": sys.version.split()[0], "django": django.get_version(),
                                "django_async_backend": getattr(django_async_backend, "__version__", None)}
    try:
        from importlib.metadata import version

        measured["django_async_backend"] = version("django-async-backend")
    except Exception:
        pass
    measured["results"] = asyncio.run(run(args.seconds, args.warmup))
    print(json.dumps(measured))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``manage.py check_readonly_pool``: is each read pool right, before traffic arrives?

Exit codes: 0 healthy, 1 unhealthy (a server problem), 2 misconfigured.
``--format json`` prints one document (schema ``django-readonly-pool/check/1``,
described in the README).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from django_readonly_pool.aliases import pool_aliases
from django_readonly_pool.conf import deferred_error
from django_readonly_pool.diagnose import SCHEMA, diagnose, overall


class Command(BaseCommand):
    help = "Connect, prewarm and inspect each read-only pool alias; report problems and risks."
    requires_system_checks: list[str] = []  # our own checks run, and decide exit code 2

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--database", action="append", dest="databases", metavar="ALIAS",
                            help="Alias to check (repeatable). Default: every pool alias.")
        parser.add_argument("--format", choices=("text", "json"), default="text")
        parser.add_argument("--workers", type=int, default=1, metavar="N",
                            help="Processes that will each open a pool, for the headroom figure (default 1).")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["workers"] < 1:
            raise CommandError("--workers must be at least 1", returncode=2)
        environment = deferred_error()
        if environment is not None:
            self._emit_failure(options["format"], "the FIDES__DATABASE__* environment is invalid",
                               list(environment.problems))
            sys.exit(2)
        aliases = options["databases"] or pool_aliases()
        unknown = [a for a in aliases if a not in pool_aliases()]
        if not aliases or unknown:
            message = (f"not a pool alias: {', '.join(unknown)}" if unknown
                       else "no DATABASES alias uses ENGINE 'django_readonly_pool.backend'")
            self._emit_failure(options["format"], message)
            sys.exit(2)
        progress = self._progress if options["format"] == "text" and self.stdout.isatty() else None
        reports = asyncio.run(self._run(aliases, options["workers"], progress))
        status, code = overall(reports)
        if options["format"] == "json":
            self.stdout.write(json.dumps({
                "schema": SCHEMA, "status": status, "exit_code": code,
                "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "workers": options["workers"], "aliases": reports,
            }, indent=2))
        else:
            for report in reports:
                self._write_text(report)
            style = {0: self.style.SUCCESS, 1: self.style.ERROR, 2: self.style.ERROR}[code]
            self.stdout.write(style(f"Overall: {status} (exit code {code})"))
        if code:
            sys.exit(code)

    async def _run(self, aliases: list[str], workers: int, progress: Any) -> list[dict[str, Any]]:
        return [await diagnose(alias, workers=workers, progress=progress) for alias in aliases]

    def _progress(self, what: str, done: int, total: int) -> None:
        self.stdout.write(f"\r  connecting {done}/{total} ...", ending="")
        if done >= total:
            self.stdout.write("\r" + " " * 40 + "\r", ending="")
        self.stdout.flush()

    def _emit_failure(self, fmt: str, message: str, problems: list[str] | None = None) -> None:
        problems = problems or []
        if fmt == "json":
            self.stdout.write(json.dumps({"schema": SCHEMA, "status": "misconfigured", "exit_code": 2,
                                          "aliases": [], "error": message, "problems": problems}, indent=2))
        else:
            self.stderr.write(self.style.ERROR(f"check_readonly_pool: {message}"))
            for problem in problems:
                self.stderr.write(f"  - {problem}")
            self.stdout.write(self.style.ERROR("Overall: misconfigured (exit code 2)"))

    def _write_text(self, r: dict[str, Any]) -> None:
        w, s = self.stdout.write, self.style
        t = r["target"]
        w(s.MIGRATE_HEADING(f"Read pool {r['alias']!r}: {t['host']}:{t['port']}/{t['dbname']} as {t['user']}"))
        settings = r["settings"]
        if settings:
            w(f"  pool: POOL_SIZE={settings['pool_size']} MAX_OVERFLOW={settings['max_overflow']} "
              f"PREWARM={settings['prewarm']} POOL_SKIP_ROLLBACK={settings['pool_skip_rollback']} "
              f"AUTOCOMMIT={settings['autocommit']} PRE_PING={settings['pre_ping']} "
              f"CHECKOUT_TIMEOUT={settings['checkout_timeout']:g}s")
        server = r["server"]
        if server:
            role = "standby (in recovery)" if server["in_recovery"] else "PRIMARY (not in recovery)"
            w(f"  server: PostgreSQL {server['version']} at {server['address']}, {role}, "
              f"transaction_read_only={'on' if server['transaction_read_only'] else 'off'}")
            w(f"  connection pooler in front: {'yes' if server['pooler'] else 'no'}")
        replication = r["replication"]
        if replication and replication["lag_bytes"] is not None:
            w(f"  replication lag: {replication['lag_bytes']} bytes, {replication['lag_seconds']} s "
              f"(measured against the {replication['measured_against']})")
        prewarm = r["prewarm"]
        if prewarm and prewarm["enabled"]:
            w(f"  prewarm: {prewarm['connections']} connections in {prewarm['seconds']} s")
        if r["connect_ms"]["samples"]:
            c = r["connect_ms"]
            w(f"  connect time: p50 {c['p50']} ms, p95 {c['p95']} ms ({c['samples']} connections)")
        if r["round_trip_ms"]["samples"]:
            c = r["round_trip_ms"]
            w(f"  round trip: p50 {c['p50']} ms, p95 {c['p95']} ms")
        capacity = r["capacity"]
        if capacity and server:
            w(f"  capacity: max_connections {server['max_connections']}, reserved "
              f"{server['reserved_connections']}, in use {server['current_connections']}; "
              f"{capacity['workers']} worker(s) x {capacity['per_process']} = {capacity['needed']} "
              f"needed, headroom {capacity['headroom']}")
        for item in r["warnings"]:
            w(s.WARNING(f"  WARNING {item['id']}: {item['message']}"))
            if item["hint"]:
                w(f"      hint: {item['hint']}")
        for item in r["errors"]:
            w(s.ERROR(f"  ERROR {item['id']}: {item['message']}".replace("ERROR :", "ERROR:")))
            if item["hint"]:
                w(f"      hint: {item['hint']}")
        w((s.SUCCESS if r["status"] == "healthy" else s.ERROR)(f"  status: {r['status']}"))

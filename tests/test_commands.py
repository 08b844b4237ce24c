"""manage.py check_readonly_pool: output and exit codes against the real servers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from django_readonly_pool.testing.topology import Topology

pytestmark = [pytest.mark.usefixtures("seeded"), pytest.mark.slow]


def check(*args: str, settings: str = "tests.settings", **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "DJANGO_SETTINGS_MODULE": settings, **env}
    return subprocess.run([sys.executable, "-m", "django", "check_readonly_pool", *args], env=full_env,
                          capture_output=True, text=True, timeout=120, check=False)


def no_secret(result: subprocess.CompletedProcess[str], topology: Topology) -> None:
    assert topology.password not in result.stdout + result.stderr
    assert "p@ss" not in result.stdout + result.stderr


def test_healthy_replica_text(topology: Topology) -> None:
    result = check("--database", "readonly")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "standby (in recovery)" in out and "transaction_read_only=on" in out
    assert "connection pooler in front: no" in out
    assert "connect time: p50" in out and "round trip: p50" in out and "headroom" in out
    assert "Overall: healthy (exit code 0)" in out
    no_secret(result, topology)


def test_json_schema(topology: Topology) -> None:
    result = check("--format", "json", "--workers", "4", "--database", "readonly",
                   "--database", "readonly_bouncer")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["schema"] == "django-readonly-pool/check/1"
    assert (doc["status"], doc["exit_code"], doc["workers"]) == ("healthy", 0, 4)
    keys = {"alias", "status", "target", "settings", "server", "replication", "prewarm", "connect_ms",
            "round_trip_ms", "capacity", "warnings", "errors"}
    direct, bouncer = doc["aliases"]
    for entry in (direct, bouncer):
        assert set(entry) == keys
        assert entry["target"]["password"] == "********"
        assert set(entry["server"]) == {"version", "version_num", "in_recovery", "transaction_read_only",
                                        "max_connections", "reserved_connections", "current_connections",
                                        "address", "pooler"}
        assert entry["server"]["in_recovery"] is True
        assert entry["replication"]["lag_bytes"] is not None
        # per process: the async pool, Django's sync pool, the health probe
        assert entry["capacity"]["needed"] == 4 * (2 * (entry["settings"]["pool_size"] + entry["settings"]["max_overflow"]) + 1)
        assert entry["connect_ms"]["samples"] >= 1 and entry["round_trip_ms"]["samples"] == 20
    assert direct["server"]["pooler"] is False and bouncer["server"]["pooler"] is True
    no_secret(result, topology)


def test_prewarm_is_reported(topology: Topology) -> None:
    result = check("--format", "json", "--database", "readonly",
                   FIDES__DATABASE__ASYNC_READONLY_DATABASE_PREWARM="true",
                   FIDES__DATABASE__ASYNC_READONLY_DATABASE_POOL_SIZE="12")
    entry = json.loads(result.stdout)["aliases"][0]
    assert entry["prewarm"]["enabled"] and entry["prewarm"]["connections"] == 12
    assert entry["connect_ms"]["samples"] == 12


def test_risky_combinations_warn(topology: Topology) -> None:
    result = check("--format", "json", "--database", "readonly",
                   FIDES__DATABASE__ASYNC_READONLY_DATABASE_POOL_SKIP_ROLLBACK="true",
                   FIDES__DATABASE__ASYNC_READONLY_DATABASE_AUTOCOMMIT="false")
    ids = {w["id"] for w in json.loads(result.stdout)["aliases"][0]["warnings"]}
    assert "readonly_pool.W003" in ids
    assert result.returncode == 0  # warnings do not make it unhealthy


def test_negative_headroom_is_unhealthy(topology: Topology) -> None:
    result = check("--format", "json", "--database", "readonly", "--workers", "40",
                   FIDES__DATABASE__ASYNC_READONLY_DATABASE_POOL_SIZE="5",
                   FIDES__DATABASE__ASYNC_READONLY_DATABASE_MAX_OVERFLOW="10")
    doc = json.loads(result.stdout)
    entry = doc["aliases"][0]
    # each process: 15 in the async pool, 15 in Django's sync pool, 1 health probe
    assert entry["capacity"]["per_process"] == 31 and entry["capacity"]["needed"] == 31 * 40
    assert (result.returncode, doc["status"], entry["status"]) == (1, "unhealthy", "unhealthy")
    error = next(e for e in entry["errors"] if e["id"] == "readonly_pool.E101")
    assert "not enough connections" in error["message"] and "40 worker(s)" in error["message"]
    text = check("--database", "readonly", "--workers", "40")
    assert text.returncode == 1 and "E101" in text.stdout and "status: unhealthy" in text.stdout


def test_paused_replay_is_unhealthy(topology: Topology) -> None:
    topology.replica.sql("SELECT pg_wal_replay_pause()", dbname="postgres")
    try:
        result = check("--format", "json", "--database", "readonly")
    finally:
        topology.replica.sql("SELECT pg_wal_replay_resume()", dbname="postgres")
    entry = json.loads(result.stdout)["aliases"][0]
    assert result.returncode == 1 and entry["status"] == "unhealthy"
    assert entry["replication"]["replay_paused"] is True
    assert any(e["id"] == "readonly_pool.E102" and "paused" in e["message"] for e in entry["errors"])


def test_a_bad_environment_is_misconfigured_with_every_problem(topology: Topology) -> None:
    bad = {"FIDES__DATABASE__PORT": "54x", "FIDES__DATABASE__ASYNC_READONLY_DATABASE_POOL_SIZE": "many",
           "FIDES__DATABASE__PASSWORD": "Sup3r$ecret!"}
    result = check("--format", "json", **bad)
    doc = json.loads(result.stdout)
    assert (result.returncode, doc["status"], doc["exit_code"]) == (2, "misconfigured", 2)
    problems = " ".join(doc["problems"])
    assert "FIDES__DATABASE__PORT='54x'" in problems and "POOL_SIZE='many'" in problems
    assert "Sup3r$ecret!" not in result.stdout + result.stderr
    text = check(**bad)
    assert text.returncode == 2 and "Overall: misconfigured" in text.stdout
    assert "Traceback" not in text.stdout + text.stderr and "POOL_SIZE='many'" in text.stderr


def test_no_replica_configured_warns(topology: Topology) -> None:
    env = {"FIDES__DATABASE__READONLY_SERVER": "", "FIDES__DATABASE__READONLY_PORT": ""}
    result = check("--format", "json", "--database", "readonly", **env)
    entry = json.loads(result.stdout)["aliases"][0]
    assert "readonly_pool.W004" in {w["id"] for w in entry["warnings"]}
    assert entry["server"]["in_recovery"] is False and result.returncode == 0


def test_stopped_replica_is_unhealthy(topology: Topology) -> None:
    topology.replica.stop("fast")
    try:
        text = check("--database", "readonly")
        result = check("--format", "json", "--database", "readonly")
    finally:
        topology.replica.start()
        topology.wait_for_replay()
    assert text.returncode == 1 and "status: unhealthy" in text.stdout
    doc = json.loads(result.stdout)
    assert (doc["status"], doc["exit_code"], result.returncode) == ("unhealthy", 1, 1)
    assert "Connection refused" in doc["aliases"][0]["errors"][0]["message"]
    no_secret(result, topology)


def test_primary_misused_as_replica_is_unhealthy(topology: Topology) -> None:
    result = check("--format", "json", "--database", "readonly",
                   FIDES__DATABASE__READONLY_PORT=str(topology.primary.port))
    doc = json.loads(result.stdout)
    assert result.returncode == 1 and doc["status"] == "unhealthy"
    assert "not a standby" in doc["aliases"][0]["errors"][0]["message"]
    # a direct session: the pool made it read-only on the server
    assert doc["aliases"][0]["server"]["transaction_read_only"] is True


def test_bad_configuration_exits_2(topology: Topology) -> None:
    text = check(settings="tests.settings_misconfigured")
    result = check("--format", "json", settings="tests.settings_misconfigured")
    assert text.returncode == 2 and "misconfigured" in text.stdout
    doc = json.loads(result.stdout)
    assert (doc["status"], doc["exit_code"], result.returncode) == ("misconfigured", 2, 2)
    entry = next(a for a in doc["aliases"] if a["alias"] == "readonly")
    messages = " ".join(e["message"] for e in entry["errors"])
    assert "pool_size" in messages and "prewarm" in messages
    no_secret(result, topology)


def test_unknown_alias_exits_2(topology: Any) -> None:
    result = check("--format", "json", "--database", "default")
    assert result.returncode == 2 and json.loads(result.stdout)["status"] == "misconfigured"

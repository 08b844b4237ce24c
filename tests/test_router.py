"""Routing: reads to the replica, writes to the primary, read-your-writes, health, lag."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.conf import settings
from django.db import router, transaction
from django.test import AsyncClient, Client, override_settings

from django_readonly_pool import ReplicaUnavailable, routing_scope, use_primary
from django_readonly_pool.health import evaluate, health_report, monitor
from django_readonly_pool.router import ReadOnlyRouter, current_read_alias, is_pinned
from django_readonly_pool.testing.topology import Topology
from tests.conftest import arun
from tests.testapp.models import Book, Note

pytestmark = pytest.mark.usefixtures("seeded", "db_access")

BASE = {"TESTS_READ_PRIMARY": False, "READONLY_ALIASES": ["readonly"]}


def ro_settings(**changes: Any) -> Any:
    return override_settings(READONLY_POOL={**BASE, **changes})


@pytest.fixture
def note() -> Iterator[Note]:
    with routing_scope():
        obj = Note.objects.create(text="n")
    yield obj
    with routing_scope():
        Note.objects.filter(pk=obj.pk).delete()


@pytest.fixture
def fresh_health() -> Iterator[None]:
    monitor.stop()
    yield
    monitor.stop()


@contextmanager
def replica_apply_delay(topology: Topology, delay: str) -> Iterator[None]:
    """Make the replica apply commits late (recovery_min_apply_delay)."""
    topology.replica.set_override(recovery_min_apply_delay=f"'{delay}'")
    topology.replica.reload()
    time.sleep(0.3)
    try:
        yield
    finally:
        topology.replica.set_override(recovery_min_apply_delay="")
        topology.replica.reload()
        topology.wait_for_replay()


def wait_for(condition: Any, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return bool(condition())


# -- basic routing --------------------------------------------------------------- #


def test_reads_to_replica_writes_to_primary(note: Note) -> None:
    assert router.db_for_read(Book) == "readonly"
    assert Book.objects.first()._state.db == "readonly"
    with routing_scope():
        assert router.db_for_write(Book) == "default"
        obj = Note.objects.create(text="w")
        assert obj._state.db == "default"
        obj.delete()


def test_migrations_and_relations() -> None:
    r = ReadOnlyRouter()
    assert r.allow_migrate("readonly", "testapp") is False
    assert r.allow_migrate("default", "testapp") is None
    on_replica = Book.objects.first()
    on_primary = Book.objects.using("default").first()
    assert r.allow_relation(on_replica, on_primary) is True


def test_abstains_for_aliases_it_does_not_manage() -> None:
    r = ReadOnlyRouter()
    stranger = Book(title="x")
    stranger._state.db = "analytics"
    assert r.db_for_read(Book, instance=stranger) is None
    assert r.db_for_write(Book, instance=stranger) is None
    assert r.allow_relation(stranger, Book.objects.first()) is None


def test_using_always_wins() -> None:
    assert Book.objects.using("default").first()._state.db == "default"
    with use_primary():
        assert Book.objects.using("readonly").first()._state.db == "readonly"


def test_object_graph_stays_on_its_replica() -> None:
    book = Book.objects.using("readonly_bouncer").select_related(None).first()
    assert book.author._state.db == "readonly_bouncer"


# -- read-your-writes in a request or task -------------------------------------- #


def test_inside_atomic_on_default_reads_go_to_default() -> None:
    with transaction.atomic(using="default"):
        assert Book.objects.first()._state.db == "default"
    assert Book.objects.first()._state.db == "readonly"


def test_after_a_write_the_scope_reads_from_the_primary(note: Note) -> None:
    with routing_scope():
        assert current_read_alias() == "readonly"
        Note.objects.filter(pk=note.pk).update(counter=5)
        assert is_pinned()
        assert Note.objects.get(pk=note.pk)._state.db == "default"
    with routing_scope():
        assert current_read_alias() == "readonly"


def test_a_write_in_a_child_task_pins_the_whole_scope(note: Note) -> None:
    async def main() -> tuple[str | None, int]:
        with routing_scope():
            await asyncio.gather(Note.objects.filter(pk=note.pk).aupdate(counter=7), asyncio.sleep(0))
            got = await Note.objects.aget(pk=note.pk)
            return got._state.db, got.counter

    assert arun(main()) == ("default", 7)


def test_use_primary_block_and_decorators() -> None:
    @use_primary()
    def sync_read() -> str | None:
        return Book.objects.first()._state.db

    @use_primary()
    async def async_read() -> str | None:
        return (await Book.objects.afirst())._state.db

    with use_primary():
        assert Book.objects.first()._state.db == "default"
        with use_primary():
            pass
        assert current_read_alias() == "default"
    assert current_read_alias() == "readonly"
    assert sync_read() == "default"
    assert arun(async_read()) == "default"
    assert current_read_alias() == "readonly"


def test_implicit_pin_outside_requests_expires(note: Note) -> None:
    import contextvars

    def worker() -> tuple[str | None, str | None]:
        # a fresh context, like a task runner's thread without routing_scope()
        Note.objects.filter(pk=note.pk).update(counter=1)
        right_after = current_read_alias()
        time.sleep(0.4)
        return right_after, current_read_alias()

    with ro_settings(STICKY_SECONDS=0.2):
        assert contextvars.Context().run(worker) == ("default", "readonly")


def test_pin_after_write_can_be_turned_off(note: Note) -> None:
    with ro_settings(PIN_AFTER_WRITE=False), routing_scope():
        Note.objects.filter(pk=note.pk).update(counter=2)
        assert current_read_alias() == "readonly"


# -- the middleware's cookie -------------------------------------------------- #


def test_unsafe_request_sets_the_pin_cookie(note: Note) -> None:
    client = Client()
    assert client.get(f"/notes/{note.pk}").json()["db"] == "readonly"
    response = client.post(f"/notes/{note.pk}/incr")
    cookie = response.cookies["readonly_pool_pin"]
    assert cookie["httponly"] and int(cookie["max-age"]) == 15
    assert client.get(f"/notes/{note.pk}").json()["db"] == "default"
    # another client is not pinned
    assert Client().get(f"/notes/{note.pk}").json()["db"] == "readonly"


def _genuine_pin() -> str:
    """A pin cookie as the middleware sets it (Django's signing, whatever its version's salts)."""
    from django.http import HttpResponse

    from django_readonly_pool.middleware import SALT

    response = HttpResponse()
    response.set_signed_cookie("readonly_pool_pin", "1", salt=SALT)
    return response.cookies["readonly_pool_pin"].value


def test_forged_or_expired_cookies_are_ignored(note: Note) -> None:
    from django.core import signing

    genuine = _genuine_pin()
    other_salt = signing.get_cookie_signer(salt="readonly_pool_pin").sign("1")
    for value in (str(time.time() + 3600), str(time.time() - 1), "nonsense", "1", other_salt, genuine + "x",
                  genuine.replace("1", "2", 1)):
        client = Client()
        client.cookies["readonly_pool_pin"] = value
        assert client.get(f"/notes/{note.pk}").json()["db"] == "readonly", value
    pinned = Client()
    pinned.cookies["readonly_pool_pin"] = genuine
    assert pinned.get(f"/notes/{note.pk}").json()["db"] == "default"
    # The same genuine cookie, once older than STICKY_SECONDS, pins nothing.
    with override_settings(READONLY_POOL={**settings.READONLY_POOL, "STICKY_SECONDS": 1}):
        expired = _genuine_pin()
        time.sleep(2.1)  # the signature's timestamp has a resolution of one second
        client = Client()
        client.cookies["readonly_pool_pin"] = expired
        assert client.get(f"/notes/{note.pk}").json()["db"] == "readonly"


def test_the_pin_cookie_is_signed(note: Note) -> None:
    response = Client().post(f"/notes/{note.pk}/incr")
    value = response.cookies["readonly_pool_pin"].value
    assert value != "1" and value.count(":") >= 2  # value:timestamp:signature


@override_settings(MIDDLEWARE=settings.FULL_MIDDLEWARE)
def test_refused_requests_pin_nothing(note: Note) -> None:
    csrf = Client(enforce_csrf_checks=True).post(f"/notes/{note.pk}/incr")  # no CSRF token
    assert csrf.status_code == 403 and "readonly_pool_pin" not in csrf.cookies
    missing = Client().post("/no/such/page")
    assert missing.status_code == 404 and "readonly_pool_pin" not in missing.cookies


def test_async_views_get_the_same_cookie(note: Note) -> None:
    async def main() -> tuple[str, str, str]:
        client = AsyncClient()
        before = (await client.get(f"/anotes/{note.pk}")).json()["db"]
        await client.post(f"/anotes/{note.pk}/incr")
        after = (await client.get(f"/anotes/{note.pk}")).json()["db"]
        fresh = (await AsyncClient().get(f"/anotes/{note.pk}")).json()["db"]
        return before, after, fresh

    assert arun(main()) == ("readonly", "default", "readonly")


def test_no_cookie_when_sticky_window_is_zero(note: Note) -> None:
    with ro_settings(STICKY_SECONDS=0):
        response = Client().post(f"/notes/{note.pk}/incr")
    assert "readonly_pool_pin" not in response.cookies


# -- proof against the real streaming replica ------------------------------------ #


def _stale_same_request(client: Any, path: str, pk: int, cycles: int, is_async: bool) -> int:
    start = Note.objects.using("default").get(pk=pk).counter

    async def async_loop() -> int:
        stale = 0
        for i in range(cycles):
            got = (await client.post(f"{path}/{pk}/incr-and-read")).json()["counter"]
            stale += got != start + i + 1
        return stale

    if is_async:
        return arun(async_loop())
    stale = 0
    for i in range(cycles):
        got = client.post(f"{path}/{pk}/incr-and-read").json()["counter"]
        stale += got != start + i + 1
    return stale


def _stale_across_requests(client: Any, pk: int, cycles: int) -> int:
    start = Note.objects.using("default").get(pk=pk).counter
    stale = 0
    for i in range(cycles):
        client.post(f"/notes/{pk}/incr")
        stale += client.get(f"/notes/{pk}").json()["counter"] != start + i + 1
    return stale


@pytest.mark.slow
def test_read_your_writes_has_zero_stale_reads(topology: Topology, note: Note) -> None:
    with replica_apply_delay(topology, "20ms"):
        protected = {
            "same request, async view": _stale_same_request(AsyncClient(), "/anotes", note.pk, 1000, True),
            "same request, sync view": _stale_same_request(Client(), "/notes", note.pk, 300, False),
            "across requests": _stale_across_requests(Client(), note.pk, 1000),
        }
        with ro_settings(PIN_AFTER_WRITE=False, STICKY_SECONDS=0):
            unprotected = {
                "same request, async view": _stale_same_request(AsyncClient(), "/anotes", note.pk, 200, True),
                "across requests": _stale_across_requests(Client(), note.pk, 200),
            }
    assert protected == dict.fromkeys(protected, 0)
    # the same loops without the router's protection do read stale data
    assert all(count > 0 for count in unprotected.values()), unprotected


# -- replica health --------------------------------------------------------------- #


def test_lag_is_measured_by_wal_positions() -> None:
    up = evaluate(in_recovery=True, replay_lsn=100, primary_lsn=100, replay_age=3600.0, paused=False,
                  max_lag_seconds=1.0, max_lag_bytes=None)
    assert up == ("up", 0.0, 0)  # idle primary: an old replay timestamp is not lag
    behind = evaluate(in_recovery=True, replay_lsn=100, primary_lsn=5000, replay_age=3.0, paused=False,
                      max_lag_seconds=1.0, max_lag_bytes=None)
    assert behind == ("lagging", 3.0, 4900)
    assert evaluate(in_recovery=True, replay_lsn=100, primary_lsn=5000, replay_age=0.1, paused=False,
                    max_lag_seconds=None, max_lag_bytes=1000)[0] == "lagging"
    assert evaluate(in_recovery=False, replay_lsn=None, primary_lsn=1, replay_age=None, paused=None,
                    max_lag_seconds=None, max_lag_bytes=None)[0] == "promoted"


@pytest.mark.slow
def test_idle_primary_reports_no_lag(fresh_health: None, topology: Topology) -> None:
    topology.wait_for_replay()
    with ro_settings(HEALTH_CHECK_INTERVAL=0.1, MAX_LAG_SECONDS=0.5):
        time.sleep(1.0)  # nothing written: the last replayed transaction ages
        assert current_read_alias() == "readonly"
        assert wait_for(lambda: health_report().get("readonly", {}).get("status") == "up")
        report = health_report()["readonly"]
    assert report["lag_bytes"] == 0 and report["lag_seconds"] == 0.0


@pytest.mark.slow
def test_paused_replay_sends_reads_to_the_primary(fresh_health: None, topology: Topology, note: Note) -> None:
    with ro_settings(HEALTH_CHECK_INTERVAL=0.1, MAX_LAG_BYTES=1):
        assert current_read_alias() == "readonly"
        assert wait_for(lambda: health_report().get("readonly", {}).get("status") == "up")
        topology.replica.sql("SELECT pg_wal_replay_pause()", dbname="postgres")
        try:
            with routing_scope():
                Note.objects.filter(pk=note.pk).update(counter=99)
            assert wait_for(lambda: current_read_alias() == "default")
            report = health_report()["readonly"]
            assert report["status"] == "lagging" and report["lag_bytes"] > 0 and report["replay_paused"]
            with routing_scope():
                assert Note.objects.get(pk=note.pk).counter == 99  # fresh, from the primary
        finally:
            topology.replica.sql("SELECT pg_wal_replay_resume()", dbname="postgres")
        assert wait_for(lambda: current_read_alias() == "readonly")


@pytest.mark.slow
def test_promoted_replica_is_not_used(fresh_health: None, topology: Topology) -> None:
    import psycopg

    standby = topology.make_standby("promoted")
    try:
        standby.sql("SELECT pg_promote()", dbname="postgres")
        assert wait_for(lambda: standby.sql("SELECT pg_is_in_recovery()", dbname="postgres") == [(False,)])
        with psycopg.connect(**standby.conninfo(dbname="postgres")) as conn:
            in_recovery = conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]
        verdict = evaluate(in_recovery=in_recovery, replay_lsn=None, primary_lsn=None, replay_age=None,
                           paused=None, max_lag_seconds=None, max_lag_bytes=None)
        assert verdict[0] == "promoted"
    finally:
        standby.stop("immediate")


def _load(duration: float, tasks: int, outage: Any) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        stop_at = time.monotonic() + duration
        results: list[tuple[str, float, str | None]] = []

        async def reader() -> None:
            while time.monotonic() < stop_at:
                started = time.monotonic()
                try:
                    book = await Book.objects.afirst()
                    results.append(("ok", time.monotonic() - started, book._state.db))
                except Exception as exc:
                    results.append((type(exc).__name__ + ": " + str(exc)[:200], time.monotonic() - started, None))
                await asyncio.sleep(0.005)

        await asyncio.gather(*(reader() for _ in range(tasks)), asyncio.to_thread(outage))
        return {
            "max_wait": max(r[1] for r in results),
            "errors": sum(r[0] != "ok" for r in results),
            "error_kinds": sorted({r[0].split(":")[0] for r in results if r[0] != "ok"}),
            "slowest": sorted(results, key=lambda r: -r[1])[:3],
            "served_by": [r[2] for r in results],
            "total": len(results),
        }

    return arun(main())


@pytest.mark.slow
def test_replica_stopped_under_load_falls_back_and_returns(fresh_health: None, topology: Topology) -> None:
    checkout = 2.0

    def outage() -> None:
        time.sleep(1.0)
        topology.replica.stop("immediate")
        assert wait_for(lambda: health_report().get("readonly", {}).get("status") == "down")
        time.sleep(1.0)
        topology.replica.start()
        assert wait_for(lambda: health_report().get("readonly", {}).get("status") == "up")
        time.sleep(1.5)

    from tests.test_pool import pools_made_by, settings_for

    with pools_made_by(settings_for(checkout_timeout=checkout)), \
            ro_settings(HEALTH_CHECK_INTERVAL=0.1, FALLBACK="primary"):
        result = _load(6.0, 16, outage)
    served = result["served_by"]
    assert "default" in served  # fell back while the replica was down
    assert served[-1] == "readonly" and served[0] == "readonly"  # and came back, no restart
    assert result["max_wait"] < checkout + 10, result["slowest"]  # nobody hung
    topology.wait_for_replay()


@pytest.mark.slow
def test_fail_fast_when_configured(fresh_health: None, topology: Topology) -> None:
    def outage() -> None:
        time.sleep(0.5)
        topology.replica.stop("immediate")
        assert wait_for(lambda: health_report().get("readonly", {}).get("status") == "down")
        time.sleep(1.0)
        topology.replica.start()
        assert wait_for(lambda: health_report().get("readonly", {}).get("status") == "up")
        time.sleep(1.0)

    with ro_settings(HEALTH_CHECK_INTERVAL=0.1, FALLBACK="fail"):
        result = _load(4.0, 8, outage)
    assert "ReplicaUnavailable" in result["error_kinds"]
    assert "default" not in result["served_by"]
    assert result["served_by"][-1] == "readonly"
    topology.wait_for_replay()
    assert issubclass(ReplicaUnavailable, Exception)


def test_health_report_is_json_ready(fresh_health: None) -> None:
    current_read_alias()
    assert wait_for(lambda: "readonly" in health_report())
    json.dumps(health_report())

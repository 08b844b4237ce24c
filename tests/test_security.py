"""Secrets never leak; writes never pass through the read-only alias; TLS works."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from django.db import connections
from django.test import Client, override_settings

from django_readonly_pool import PrewarmFailed, ReadOnlyAliasError, databases_from_env
from django_readonly_pool.conf import AppSettings, ConnectionTarget
from django_readonly_pool.pool import open_pools, registry
from django_readonly_pool.testing.topology import Topology
from tests.conftest import arun
from tests.test_pool import pools_made_by, settings_for
from tests.testapp.models import Book, Note

pytestmark = pytest.mark.usefixtures("seeded", "db_access")


# -- the password appears nowhere ------------------------------------------------ #


def test_password_absent_from_errors_logs_reprs(topology: Topology, caplog: pytest.LogCaptureFixture) -> None:
    secret = topology.password  # "p@ss:w/o%rd 'q\"\\é-…": distinctive, every awkward character
    caplog.set_level(logging.DEBUG)  # every logger, psycopg's and Django's included
    texts: list[str] = []

    # run errors: a refused prewarm, a wrong password, a query error
    with pools_made_by(settings_for(pool_size=2, prewarm=True, prewarm_timeout=5), port=1), \
            pytest.raises(PrewarmFailed) as refused:
        arun(open_pools(["readonly"]))
    texts.append(str(refused.value))
    with pools_made_by(settings_for(pool_size=2, prewarm=True, prewarm_timeout=5), password=secret + "x"), \
            pytest.raises(PrewarmFailed) as wrong:
        arun(open_pools(["readonly"]))
    texts.append(str(wrong.value))

    async def reads() -> list[str]:
        pools = await open_pools(["readonly"])
        out = [repr(pool) for pool in pools.values()]
        out += [repr(registry.ready("readonly")), repr(registry.ready("readonly").session)]  # type: ignore[union-attr]
        with override_settings(DEBUG=True):
            await Book.objects.acount()
            try:
                [b async for b in Book.objects.raw("SELECT nope FROM testapp_book")]
            except Exception as exc:
                out.append(str(exc))
            out.append(json.dumps(connections["readonly"].queries))
        out.append(json.dumps(registry.ready("readonly").get_stats()))  # type: ignore[union-attr]
        return out

    texts += arun(reads())
    # reprs of settings objects
    wrapper = connections["readonly"]
    texts += [repr(wrapper.readonly_pool_settings), repr(ConnectionTarget.from_settings(wrapper.settings_dict)),
              repr(AppSettings()), str(wrapper.target.describe())]
    # the health JSON
    texts.append(Client().get("/health/").content.decode())
    # the check command, text and JSON
    for fmt in ("text", "json"):
        out = subprocess.run([sys.executable, "-m", "django", "check_readonly_pool", "--format", fmt],
                             capture_output=True, text=True, env={**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"},
                             timeout=120, check=False)
        texts += [out.stdout, out.stderr]
    texts += [r.getMessage() for r in caplog.records]
    texts += [str(r.exc_info[1]) for r in caplog.records if r.exc_info]
    everything = "\n".join(texts)
    assert "password authentication failed" in everything  # the errors did happen ...
    assert secret not in everything  # ... without the password in them
    assert secret.replace("'", "\\'") not in everything and "p@ss:w/o%rd" not in everything


def test_configuration_errors_mask_every_secret() -> None:
    environ = {
        "FIDES__DATABASE__PASSWORD": "Sup3r$ecret!",
        "FIDES__DATABASE__READONLY_PASSWORD": "R3adOnly$ecret!",
        "FIDES__DATABASE__READONLY_SERVER": "r",
        "FIDES__DATABASE__READONLY_PARAMS": '{"sslpassword": "K3y$ecret!", "bogus": 1}',
        "FIDES__DATABASE__PARAMS": '{"sslpassword": "K3y$ecret2!", ',
    }
    with pytest.raises(Exception) as info:
        databases_from_env(environ)
    text = str(info.value) + repr(info.value)
    for secret in ("Sup3r$ecret!", "R3adOnly$ecret!", "K3y$ecret!", "K3y$ecret2!"):
        assert secret not in text


# -- writes through the read-only alias -------------------------------------------- #


@pytest.mark.parametrize("attempt", [
    "save", "update", "delete", "bulk_create", "create", "raw cursor insert", "raw cursor delete",
    "raw cursor ddl", "copy from",
])
def test_sync_writes_on_the_readonly_alias_are_refused(attempt: str) -> None:
    book = Book.objects.using("default").first()
    actions = {
        "save": lambda: book.save(using="readonly"),
        "update": lambda: Book.objects.using("readonly").filter(pk=book.pk).update(pages=1),
        "delete": lambda: Note.objects.using("readonly").all().delete(),
        "bulk_create": lambda: Note.objects.using("readonly").bulk_create([Note(text="x")]),
        "create": lambda: Note.objects.db_manager("readonly").create(text="x"),
        "raw cursor insert": lambda: connections["readonly"].cursor().execute("INSERT INTO testapp_note (text, counter, created) VALUES ('x', 0, now())"),
        "raw cursor delete": lambda: connections["readonly"].cursor().execute("  /* hi */ DELETE FROM testapp_note"),
        "raw cursor ddl": lambda: connections["readonly"].cursor().execute("CREATE TABLE x (i int)"),
        "copy from": lambda: connections["readonly"].cursor().copy("COPY testapp_note FROM STDIN"),
    }
    with pytest.raises(ReadOnlyAliasError, match="'readonly'"):
        actions[attempt]()
    assert Book.objects.using("default").get(pk=book.pk).pages == book.pages


def test_reads_of_every_form_pass_the_guard() -> None:
    with connections["readonly"].cursor() as cursor:
        for statement in ("SELECT 1", "  select 1", "WITH a AS (SELECT 1) SELECT * FROM a", "(SELECT 1) UNION (SELECT 2)",
                          "-- comment\nSELECT 1", "/* c */ VALUES (1)", "SHOW server_version", "EXPLAIN SELECT 1"):
            cursor.execute(statement)


# -- TLS ---------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def tls_replica(topology: Topology, tmp_path_factory: pytest.TempPathFactory) -> Any:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1", "localhost")
    other_ca = trustme.CA()
    standby = topology.make_standby("tls")
    cert, key = standby.datadir / "server.crt", standby.datadir / "server.key"
    server_cert.cert_chain_pems[0].write_to_path(str(cert))
    server_cert.private_key_pem.write_to_path(str(key))
    key.chmod(0o600)
    for path in (cert, key):
        topology.os_user.chown(path)
    standby.set_override(ssl="on", ssl_cert_file="'server.crt'", ssl_key_file="'server.key'")
    standby.restart()
    files = tmp_path_factory.mktemp("tls")
    good, bad = files / "ca.pem", files / "other-ca.pem"
    ca.cert_pem.write_to_path(str(good))
    other_ca.cert_pem.write_to_path(str(bad))
    yield standby, good, bad
    standby.stop("immediate")


def _check_json(env: dict[str, str]) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "django", "check_readonly_pool", "--format", "json",
                          "--database", "readonly"], capture_output=True, text=True, timeout=120, check=False,
                         env={**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", **env})
    return json.loads(out.stdout) | {"returncode": out.returncode}


def test_tls_verify_full_with_the_right_ca(tls_replica: Any) -> None:
    standby, good, _ = tls_replica
    doc = _check_json({"FIDES__DATABASE__READONLY_PORT": str(standby.port),
                       "FIDES__DATABASE__READONLY_PARAMS": json.dumps({"sslmode": "verify-full", "sslrootcert": str(good)})})
    assert doc["returncode"] == 0 and doc["status"] == "healthy", doc
    # and the connection really is encrypted
    with psycopg.connect(**standby.conninfo(sslmode="verify-full", sslrootcert=str(good))) as conn:
        assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone() == (True,)


def test_tls_with_the_wrong_ca_fails_clearly(tls_replica: Any) -> None:
    standby, _, bad = tls_replica
    doc = _check_json({"FIDES__DATABASE__READONLY_PORT": str(standby.port),
                       "FIDES__DATABASE__READONLY_PARAMS": json.dumps({"sslmode": "verify-full", "sslrootcert": str(bad)})})
    assert doc["returncode"] == 1 and doc["status"] == "unhealthy"
    assert "certificate verify failed" in doc["aliases"][0]["errors"][0]["message"]


# -- no pool connection reports anything that could log in -------------------------- #


def _logs_in(params: dict[str, str]) -> bool:
    """Can these parameters (what conn.info.get_parameters() reports) authenticate?"""
    try:
        psycopg.connect(**{**params, "passfile": "/nonexistent", "connect_timeout": "5"}).close()
    except psycopg.OperationalError as exc:
        assert "password" in str(exc), exc  # refused for want of a password
        return False
    return True


def _assert_reports_no_credential(conn: Any, secret: str) -> None:
    from django_readonly_pool.conf import SECRET_KEYS

    params = conn.info.get_parameters()
    assert not set(params) & SECRET_KEYS, params
    assert secret not in conn.info.dsn and secret not in json.dumps(params)
    assert not _logs_in(params)


def test_no_async_pool_connection_reports_a_credential(topology: Topology) -> None:
    app = "dsn-async"
    settings = settings_for(pool_size=2, max_overflow=2, prewarm=True, pre_ping=True, pre_ping_interval=0.0)

    async def main() -> int:
        pool = (await open_pools(["readonly"]))["readonly"]
        held = [await pool.getconn() for _ in range(4)]  # two prewarmed, two grown
        for conn in held:
            _assert_reports_no_credential(conn, topology.password)
        pids = {conn.info.backend_pid for conn in held}
        for conn in held:
            await pool.putconn(conn)
        await asyncio.to_thread(topology.replica.sql, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                "WHERE application_name = %s", [app], "postgres")
        await pool.check()  # replaces the dead ones
        again = [await pool.getconn() for _ in range(2)]  # reconnected
        assert not pids & {conn.info.backend_pid for conn in again}
        for conn in again:
            _assert_reports_no_credential(conn, topology.password)
            await pool.putconn(conn)
        return len(held) + len(again)

    with pools_made_by(settings, application_name=app):
        assert arun(main()) == 6


def test_no_sync_pool_connection_reports_a_credential(topology: Topology) -> None:
    for alias in ("readonly", "readonly_bouncer", "default"):
        wrapper = connections[alias]
        wrapper.ensure_connection()
        _assert_reports_no_credential(wrapper.connection, topology.password)
        wrapper.close()
    pool = connections["readonly"].pool
    held = [pool.getconn() for _ in range(pool.max_size)]  # grown to the maximum
    try:
        for conn in held:
            _assert_reports_no_credential(conn, topology.password)
    finally:
        for conn in held:
            pool.putconn(conn)


def test_a_reported_secret_cannot_be_configured() -> None:
    from django_readonly_pool.conf import SECRET_KEYS

    for key in sorted(SECRET_KEYS - {"password"}):
        with pytest.raises(Exception, match=key) as info:
            databases_from_env({"FIDES__DATABASE__READONLY_SERVER": "r",
                                "FIDES__DATABASE__READONLY_PARAMS": json.dumps({key: "s3cr3t-value"})})
        assert "s3cr3t-value" not in str(info.value)


def test_the_removed_key_reuse_setting_is_an_error() -> None:
    from django.core import checks

    with override_settings(READONLY_POOL={"REUSE_SCRAM_KEYS": True}):
        errors = [m for m in checks.run_checks(tags=["readonly_pool"]) if m.id == "readonly_pool.E001"]
    assert errors and "was removed" in errors[0].msg and "conn.info.dsn" in errors[0].msg


# -- no borrower inherits another's session ------------------------------------------ #

ROLE = "guard_role"

# kind -> (statement that would leave state, query of that state, its clean value)
SESSION_STATE: dict[str, tuple[str, str, Any]] = {
    "search_path": ("SET search_path = pg_catalog",
                    "SELECT current_setting('search_path')", '"$user", public'),
    "set_config": ("SELECT set_config('search_path', 'pg_catalog', false)",
                   "SELECT current_setting('search_path')", '"$user", public'),
    "advisory lock": ("SELECT pg_advisory_lock(4242)",
                      "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()", 0),
    "role": (f"SET ROLE {ROLE}", "SELECT current_user = session_user", True),
    "listen": ("LISTEN guard_channel", "SELECT count(*) FROM pg_listening_channels()", 0),
    "temp table": ("CREATE TEMP TABLE guard_tmp (i int)",
                   "SELECT count(*) FROM pg_class WHERE relname = 'guard_tmp'", 0),
    "prepared statement": ("PREPARE guard_p AS SELECT 1", "SELECT count(*) FROM pg_prepared_statements", 0),
    "WITH HOLD cursor": ("DECLARE guard_c CURSOR WITH HOLD FOR SELECT 1", "SELECT count(*) FROM pg_cursors", 0),
}


@pytest.fixture(scope="module")
def guard_role(topology: Topology, django_db_setup: None, django_db_blocker: Any) -> str:
    with django_db_blocker.unblock():
        topology.primary.sql(f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}') "
                             f"THEN CREATE ROLE {ROLE}; END IF; END $$", dbname="postgres")
        topology.primary.sql(f"GRANT {ROLE} TO postgres", dbname="postgres")
    topology.wait_for_replay()
    return ROLE


def _one_statement(alias: str, statement: str) -> tuple[Any, int]:
    with connections[alias].cursor() as cursor:
        cursor.execute(statement)
        row = cursor.fetchone()
        cursor.execute("SELECT pg_backend_pid()")
        return (row[0] if row else None), int(cursor.fetchone()[0])


@pytest.mark.usefixtures("guard_role")
@pytest.mark.parametrize("route", ["readonly", "readonly_bouncer"], ids=["direct", "pgbouncer"])
@pytest.mark.parametrize("path", ["sync", "async"])
@pytest.mark.parametrize("kind", sorted(SESSION_STATE))
def test_session_state_is_refused_and_the_next_borrower_gets_a_clean_session(
        kind: str, path: str, route: str) -> None:
    statement, query, clean = SESSION_STATE[kind]

    def borrow_twice() -> tuple[Any, int, int]:
        with pytest.raises(ReadOnlyAliasError):
            _one_statement(route, statement)
        _, first = _one_statement(route, "SELECT 1")
        value, second = _one_statement(route, query)
        return value, first, second

    if path == "sync":
        value, first, second = borrow_twice()
        connections[route].close()
    else:
        async def main() -> tuple[Any, int, int]:
            from django_readonly_pool import run

            return await run(borrow_twice)

        with pools_made_by(settings_for(pool_size=1, max_overflow=0, pool_skip_rollback=True, autocommit=True)):
            value, first, second = arun(main())
    assert value == clean
    if route == "readonly":
        assert first == second  # the same server session served both borrowers


@pytest.fixture
def resetting_alias(db_access: None) -> Iterator[str]:
    """A pool of one connection on the primary that resets sessions (POOL_SKIP_ROLLBACK false)."""
    import os

    from tests.conftest import add_pool_alias, remove_pool_alias

    alias = "readonly_resetting"
    add_pool_alias(alias, {
        **{k: v for k, v in os.environ.items()
           if k not in ("FIDES__DATABASE__READONLY_SERVER", "FIDES__DATABASE__READONLY_PORT")},
        "FIDES__DATABASE__ASYNC_READONLY_DATABASE_POOL_SIZE": "1",
        "FIDES__DATABASE__ASYNC_READONLY_DATABASE_MAX_OVERFLOW": "0",
        "FIDES__DATABASE__ASYNC_READONLY_DATABASE_POOL_SKIP_ROLLBACK": "false",
        "FIDES__DATABASE__ASYNC_READONLY_DATABASE_AUTOCOMMIT": "true",
    })
    yield alias
    remove_pool_alias(alias)


CONFIGURED = ("SELECT current_setting('TimeZone'), current_setting('default_transaction_read_only'), "
              "current_user = session_user")


@pytest.mark.usefixtures("guard_role")
@pytest.mark.parametrize("path", ["sync", "async"])
def test_a_reset_clears_everything_a_session_can_hold(path: str, resetting_alias: str) -> None:
    """POOL_SKIP_ROLLBACK false: whatever a borrower left (here through the raw psycopg
    connection, past the guard) is gone for the next one, and Django's settings are back."""
    leave = ["SET default_transaction_read_only = off", *(s for s, _, _ in SESSION_STATE.values()),
             "SET TIME ZONE 'Asia/Tokyo'"]
    queries = [q for _, q, _ in SESSION_STATE.values()] + [CONFIGURED]
    expected = [c for _, _, c in SESSION_STATE.values()] + [("UTC", "on", True)]  # Django uses UTC with USE_TZ

    if path == "sync":
        wrapper = connections[resetting_alias]
        wrapper.ensure_connection()
        raw = wrapper.connection
        raw.autocommit = True
        for statement in leave:
            raw.execute(statement)
        pid = raw.info.backend_pid
        wrapper.close()  # back to the pool of one: reset before anyone gets it
        wrapper.ensure_connection()
        assert wrapper.connection.info.backend_pid == pid
        seen = [wrapper.connection.execute(q).fetchone() for q in queries]
        wrapper.close()
    else:
        async def main() -> tuple[list[Any], int, int]:
            pool = await registry.get(resetting_alias)
            conn = await pool.getconn()
            for statement in leave:
                await conn.execute(statement)
            pid = conn.info.backend_pid
            await pool.putconn(conn)
            again = await pool.getconn()
            try:
                return [await (await again.execute(q)).fetchone() for q in queries], pid, again.info.backend_pid
            finally:
                await pool.putconn(again)

        rows, pid, second = arun(main())
        assert pid == second
        seen = rows
    assert [row if len(row) > 1 else row[0] for row in seen] == expected

"""Secrets never leak; writes never pass through the read-only alias; TLS works."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
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

    derived: list[str] = []

    async def reads() -> list[str]:
        pools = await open_pools(["readonly"])
        if pools["readonly"]._scram_task is not None:  # without PREWARM: derived in the background
            await pools["readonly"]._scram_task
        derived.extend((pools["readonly"]._scram or {}).values())
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
    assert len(derived) == 2 and not any(key in everything for key in derived)  # nor the SCRAM keys
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


def test_a_read_only_role_stops_what_the_guard_cannot_see(topology: Topology) -> None:
    """Defence in depth: against the primary itself (no replica configured), a
    data-modifying CTE passes the keyword guard; the role's
    default_transaction_read_only stops it at the server."""
    topology.primary.sql("DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'app_reader') THEN "
                         "CREATE ROLE app_reader LOGIN PASSWORD 'reader-pw'; END IF; END $$", dbname="postgres")
    topology.primary.sql("ALTER ROLE app_reader SET default_transaction_read_only = on", dbname="postgres")
    dbname = connections["default"].settings_dict["NAME"]
    topology.primary.sql("GRANT SELECT, INSERT ON ALL TABLES IN SCHEMA public TO app_reader", dbname=dbname)
    topology.primary.sql("GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO app_reader", dbname=dbname)
    settings = settings_for(pool_size=1, prewarm=True)

    async def main() -> str:
        from django_readonly_pool import run

        def sneaky() -> Any:
            with connections["readonly"].cursor() as cursor:
                cursor.execute("WITH n AS (INSERT INTO testapp_note (text, counter, created) "
                               "VALUES ('sneaky', 0, now()) RETURNING id) SELECT id FROM n")
                return cursor.fetchall()

        try:
            await run(sneaky)
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        return "written"

    with pools_made_by(settings, port=topology.primary.port, user="app_reader", password="reader-pw"):
        outcome = arun(main())
    assert "read-only transaction" in outcome and outcome.startswith("InternalError")
    assert not Note.objects.using("default").filter(text="sneaky").exists()


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



def test_scram_keys_over_tls_only_with_the_right_ca(tls_replica: Any, topology: Topology) -> None:
    """The key probe checks the certificate as libpq would: with the wrong CA it
    does not even send the user name."""
    import asyncio

    from django_readonly_pool.scram import derive_keys

    standby, good, bad = tls_replica
    base = {"host": "127.0.0.1", "port": standby.port, "user": "postgres", "password": topology.password,
            "dbname": "postgres", "sslmode": "verify-full"}
    assert asyncio.run(derive_keys({**base, "sslrootcert": str(good)}, timeout=10)) is not None
    assert asyncio.run(derive_keys({**base, "sslrootcert": str(bad)}, timeout=10)) is None

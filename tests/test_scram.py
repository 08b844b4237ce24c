"""SCRAM keys derived once per pool (REUSE_SCRAM_KEYS), against real servers.

The keys must be exactly those the server's stored verifier expects (checked
against ``pg_authid``), libpq must really use them (a login with a wrong
password and the keys succeeds), and a pool must drop them as soon as they stop
working (the role's password set again) without a read failing.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
from typing import Any

import psycopg
import pytest
from django.conf import settings as django_settings
from django.db import connections
from django.test import override_settings
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg import sql

from django_readonly_pool import run
from django_readonly_pool.pool import open_pools
from django_readonly_pool.scram import ScramKeys, derive_keys, libpq_supports_keys, saslprep
from django_readonly_pool.testing.topology import Topology
from tests.conftest import arun
from tests.test_pool import first_pk, pools_made_by, settings_for
from tests.testapp.models import Book

pytestmark = [
    pytest.mark.usefixtures("seeded", "db_access"),
    pytest.mark.skipif(not libpq_supports_keys(), reason="needs libpq 18 (scram_client_key)"),
]

ROLE = "scram_reader"


# -- SASLprep as PostgreSQL does it -------------------------------------------------- #


@pytest.mark.parametrize(("password", "prepared"), [
    ("plain ascii", b"plain ascii"),
    ("ascii\x07control", b"ascii\x07control"),  # PostgreSQL: any ASCII password as it is
    ("I\u00adX", b"IX"),  # RFC 4013: soft hyphen mapped to nothing
    ("\u00aa", b"a"),  # NFKC
    ("\u2168", b"IX"),  # NFKC
    ("p\u00e4ss\u2003word", "p\u00e4ss word".encode()),  # non-ASCII space mapped to a space
    ("p\u00e4ss\u0007", "p\u00e4ss\u0007".encode()),  # prohibited: used as it is
    ("\u0627\u0031", "\u0627\u0031".encode()),  # bidi rule broken: used as it is
])
def test_saslprep(password: str, prepared: bytes) -> None:
    assert saslprep(password) == prepared


# -- keys equal to the server's verifier, used by libpq ---------------------------- #


@pytest.fixture(scope="module")
def role(topology: Topology, django_db_setup: Any, django_db_blocker: Any) -> Any:
    dbname = connections["default"].settings_dict["NAME"]

    def set_password(password: str) -> None:
        with psycopg.connect(**topology.primary.conninfo(dbname="postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                sql.Identifier(ROLE), sql.Literal(password)))

    with django_db_blocker.unblock():
        topology.primary.sql(f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}') "
                             f"THEN CREATE ROLE {ROLE} LOGIN; END IF; END $$", dbname="postgres")
        topology.primary.sql(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {ROLE}", dbname=dbname)
    return set_password


def stored_keys(topology: Topology) -> tuple[bytes, bytes, bytes, int]:
    """(StoredKey, ServerKey, salt, iterations) from the role's verifier."""
    secret = topology.primary.sql("SELECT rolpassword FROM pg_authid WHERE rolname = %s", [ROLE],
                                  dbname="postgres")[0][0]
    mechanism, rest = secret.split("$", 1)
    assert mechanism == "SCRAM-SHA-256"
    iterations_salt, keys = rest.split("$")
    iterations, salt = iterations_salt.split(":")
    stored, server = keys.split(":")
    return base64.b64decode(stored), base64.b64decode(server), base64.b64decode(salt), int(iterations)


def derive(topology: Topology, password: str, **extra: Any) -> ScramKeys | None:
    params = {"host": "127.0.0.1", "port": topology.primary.port, "user": ROLE, "password": password,
              "dbname": "postgres", **extra}
    return asyncio.run(derive_keys(params, timeout=10))


def assert_matches_server(topology: Topology, keys: ScramKeys | None) -> None:
    assert keys is not None
    stored, server, salt, iterations = stored_keys(topology)
    assert hashlib.sha256(keys.client_key).digest() == stored
    assert keys.server_key == server and keys.salt == salt and keys.iterations == iterations


PASSWORDS = [
    "plain-Pass1",
    "p@ss:w/o%rd 'q\"\\ with spaces",
    "\u2168-p\u00e4ssw\u00f6rd\u2026",  # NFKC changes it
    "pa\u00adss\u2003w\u00f6rd",  # mapped characters
    "p\u00e4ss\u0007w\u00f6rd",  # prohibited: the raw bytes are hashed
    "\u0627\u0031abc",  # bidi rule broken: the raw bytes are hashed
    "\u5bc6\u7801\U0001f511",  # CJK and an emoji (unassigned in Unicode 3.2: raw)
]


@pytest.mark.parametrize("password", PASSWORDS)
def test_derived_keys_are_the_servers_and_libpq_uses_them(topology: Topology, role: Any, password: str) -> None:
    role(password)
    keys = derive(topology, password)
    assert_matches_server(topology, keys)
    assert keys is not None
    # the keys alone log in: libpq did not hash the (wrong) password
    with psycopg.connect(**topology.primary.conninfo(dbname="postgres", user=ROLE, password="not the password"),
                         **keys.params()) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (ROLE,)


@settings(max_examples=40, deadline=None)
@given(password=st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                        min_size=1, max_size=24))
def test_any_password_gives_the_servers_keys_or_none(topology: Topology, role: Any, password: str) -> None:
    role(password)
    keys = derive(topology, password)
    if keys is not None:  # None only costs speed: connections then hash the password
        assert_matches_server(topology, keys)


def test_wrong_password_derives_nothing(topology: Topology, role: Any) -> None:
    role("the-right-one")
    assert derive(topology, "the-wrong-one") is None


def test_not_derived_where_the_salt_changes_or_no_scram(topology: Topology) -> None:
    assert topology.bouncer is not None
    password = topology.password
    base = {"host": "127.0.0.1", "user": "postgres", "password": password,
            "dbname": connections["default"].settings_dict["NAME"]}
    # PgBouncer with a plain-text auth_file makes a new salt for every login
    assert asyncio.run(derive_keys({**base, "port": topology.bouncer.port}, timeout=10)) is None
    # the Unix socket of the test servers trusts local users: no SCRAM at all
    assert asyncio.run(derive_keys({**base, "host": str(topology.primary.socket_dir),
                                    "port": topology.primary.port}, timeout=10)) is None
    # nothing listening
    assert asyncio.run(derive_keys({**base, "port": 1}, timeout=10)) is None


# -- the pool ------------------------------------------------------------------------ #


def read_many(pk: int, n: int) -> Any:
    async def one() -> Any:
        return await run(lambda: list(Book.objects.raw(
            "SELECT id, pg_sleep(0.05) FROM testapp_book WHERE id = %s", [pk])))
    return asyncio.gather(*(one() for _ in range(n)))


def test_pool_uses_the_keys_and_drops_them_when_the_password_is_set_again(
    topology: Topology, role: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    password = "rotating-Pass-42"
    role(password)
    topology.wait_for_replay()
    pk = first_pk()
    settings = settings_for(pool_size=1, max_overflow=4, prewarm=True, overflow_idle_timeout=0)
    caplog.set_level(logging.DEBUG, logger="django_readonly_pool")

    async def main() -> dict[str, Any]:
        pool = (await open_pools(["readonly"]))["readonly"]
        out: dict[str, Any] = {"before": pool.get_stats()["scram_keys"]}
        out["first"] = len(await read_many(pk, 5))  # grows with the keys
        await asyncio.to_thread(role, password)  # same password, new salt
        await asyncio.to_thread(topology.wait_for_replay)
        out["second"] = len(await read_many(pk, 5))  # grows again: keys refused, password works
        out["stats"] = pool.get_stats()
        return out

    with pools_made_by(settings, user=ROLE, password=password):
        result = arun(main())
    assert result["before"] == 1
    assert result["first"] == result["second"] == 5  # no read failed
    assert result["stats"]["scram_fallbacks"] >= 1 and result["stats"]["scram_keys"] == 0
    assert any("SCRAM keys was refused" in r.getMessage() for r in caplog.records)


def test_pool_without_keys_when_turned_off(topology: Topology) -> None:
    settings = settings_for(pool_size=2, prewarm=True)

    async def main() -> int:
        pool = (await open_pools(["readonly"]))["readonly"]
        await Book.objects.acount()
        return pool.get_stats()["scram_keys"]

    with pools_made_by(settings):
        assert arun(main()) == 1
    with override_settings(READONLY_POOL={**django_settings.READONLY_POOL, "REUSE_SCRAM_KEYS": False}), \
            pools_made_by(settings):
        assert arun(main()) == 0


def test_keys_never_shown(topology: Topology) -> None:
    keys = derive(topology, topology.password, user="postgres")
    assert keys is not None
    shown = repr(keys) + str(keys)
    for value in keys.params().values():
        assert value not in shown
    assert keys.client_key.hex() not in shown

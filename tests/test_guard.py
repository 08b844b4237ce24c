"""The read-only guard: one read per execute(), nothing that writes, changes the
server or leaves session state; and the server's own read-only sessions behind it.

The hostile statements run against a pool alias on the *primary* (no replica:
a documented mode), where nothing but the guard and the session's
default_transaction_read_only stands between them and the data.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from django.core import checks
from django.db import connections
from psycopg import sql

from django_readonly_pool import ReadOnlyAliasError, run
from django_readonly_pool.guard import refuse_unless_read, verdict
from django_readonly_pool.testing.topology import PgBouncer, Topology, free_port
from tests.conftest import add_pool_alias, arun, remove_pool_alias
from tests.test_pool import pools_made_by, settings_for

pytestmark = pytest.mark.usefixtures("seeded", "db_access")

# -- the verdicts ------------------------------------------------------------------ #

HOSTILE = [
    "SELECT 1; DELETE FROM testapp_note",
    ";DELETE FROM testapp_note",
    "/* /* */ SELECT */ DELETE FROM testapp_note",
    "WITH d AS (DELETE FROM testapp_note RETURNING id) SELECT * FROM d",
    "EXPLAIN ANALYZE DELETE FROM testapp_note",
    "EXPLAIN (ANALYZE true) DELETE FROM testapp_note",
    "BEGIN READ WRITE; DELETE FROM testapp_note; COMMIT",
    " " * 300 + "DELETE FROM testapp_note",
    "SELECT setval('testapp_note_id_seq', 100000)",
    "SELECT nextval('testapp_note_id_seq')",
    "SELECT pg_catalog.nextval ('testapp_note_id_seq')",
    'SELECT "nextval"(\'testapp_note_id_seq\')',
    "SELECT lo_create(0)",
    "SELECT * INTO guard_new_table FROM testapp_note",
    "COPY (DELETE FROM testapp_note RETURNING id) TO STDOUT",
    "TABLE testapp_note; TRUNCATE testapp_note",
    "COPY (SELECT 1) TO PROGRAM 'touch /tmp/drp-guard-program'",
    "COPY testapp_note TO '/tmp/drp-guard-file'",
    "COPY testapp_note FROM STDIN",
    "SELECT 1 FROM testapp_note FOR UPDATE",
    "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
    "SET TRANSACTION READ WRITE",
    "START TRANSACTION READ WRITE",
    "SET LOCAL transaction_read_only = off",
    "INSERT INTO testapp_note (text, counter, created) VALUES ('x', 0, now())",
    "UPDATE testapp_note SET counter = 1",
    "MERGE INTO testapp_note USING (SELECT 1 AS i) s ON false WHEN NOT MATCHED THEN DO NOTHING",
    "CREATE TABLE guard_t (i int)",
    "DROP TABLE testapp_note",
    "TRUNCATE testapp_note",
    "CALL guard_proc()",
    "DO $$BEGIN DELETE FROM testapp_note; END$$",
    "NOTIFY guard_channel",
    "SELECT pg_notify('guard_channel', 'x')",
    "LOCK testapp_note",
    "VACUUM testapp_note",
    "SELECT '\\'; DELETE FROM testapp_note; --'",  # one string, or two statements: depends on a setting
    "SELECT 'unterminated",
    "SELECT 1 $",
    "COMMIT PREPARED 'x'",
    # session state for the next borrower
    "SET search_path = guard_schema",
    "SET ROLE guard_role",
    "SET SESSION AUTHORIZATION guard_role",
    "RESET ALL",
    "SELECT set_config('search_path', 'guard_schema', false)",
    "SELECT pg_advisory_lock(4242)",
    "LISTEN guard_channel",
    "PREPARE guard_p AS SELECT 1",
    "DECLARE guard_c CURSOR WITH HOLD FOR SELECT 1",
    "DISCARD ALL",
]

READS = [
    "SELECT 1",
    "  select 1",
    "SELECT 1;",
    "WITH a AS (SELECT 1) SELECT * FROM a",
    "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) SELECT * FROM r",
    "(SELECT 1) UNION (SELECT 2)",
    "-- comment\nSELECT 1",
    "/* c /* nested */ still */ VALUES (1)",
    "SHOW server_version",
    "EXPLAIN SELECT 1",
    "EXPLAIN (ANALYZE, FORMAT JSON) SELECT 1",
    "TABLE testapp_note",
    "SELECT 'a; DELETE FROM t'",
    "SELECT $$; DELETE FROM t$$",
    "SELECT $x$ $$; DELETE $$ $x$",
    'SELECT 1 AS "; DELETE"',
    "SELECT E'\\'; DELETE FROM t'",
    "SELECT updated_at, deleted FROM (SELECT now() AS updated_at, true AS deleted) s",
    "SELECT currval FROM (SELECT 1 AS currval) s",
    "SELECT pg_advisory_xact_lock(1)",
    "COPY testapp_note TO STDOUT",
    "COPY (SELECT id FROM testapp_note) TO STDOUT WITH (FORMAT csv)",
    "BEGIN",
    "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
    "SET LOCAL statement_timeout = '5s'",
    "COMMIT",
    "DECLARE c CURSOR FOR SELECT 1",
    "FETCH ALL FROM c",
    "CLOSE ALL",
    "DISCARD PLANS",
    "",
]


@pytest.mark.parametrize("statement", HOSTILE)
def test_hostile_statements_are_refused(statement: str) -> None:
    assert verdict(statement, has_params=False) is not None
    with pytest.raises(ReadOnlyAliasError, match="'readonly'"):
        refuse_unless_read(statement, None, "readonly")
    with pytest.raises(ReadOnlyAliasError):  # as bytes too
        refuse_unless_read(statement.encode(), None, "readonly")


@pytest.mark.parametrize("statement", READS)
def test_reads_pass(statement: str) -> None:
    assert verdict(statement, has_params=False) is None


@pytest.mark.parametrize(("template", "refused"), [
    ("SELECT %s", False),
    ("SELECT * FROM t WHERE a = %s AND b = %(name)s", False),
    ("SELECT x FROM t WHERE y LIKE '%%' || %s || '%%'", False),
    ("SELECT '100%%s'", False),
    ("SELECT '%s'", True),  # its structure would depend on the value
    ("SELECT \"%s\"", True),
    ("SELECT $$%s$$", True),
    ("SELECT 1 -- %s", True),
    ("SELECT 1 /* %s */", True),
    ("SELECT %s; DELETE FROM t", True),
])
def test_placeholders_stand_for_one_literal(template: str, refused: bool) -> None:
    assert (verdict(template, has_params=True) is not None) is refused


def test_composed_statements_are_judged_rendered() -> None:
    refuse_unless_read(sql.SQL("SELECT {}").format(sql.Literal("x; DELETE")), None, "readonly")
    with pytest.raises(ReadOnlyAliasError):
        refuse_unless_read(sql.SQL("SELECT 1; {}").format(sql.SQL("DELETE FROM t")), None, "readonly")


# -- against the primary, sync and async -------------------------------------------- #


def _state(topology: Topology) -> tuple[Any, ...]:
    """Everything the hostile statements would change on the primary."""
    import os

    return (
        topology.primary.sql("SELECT count(*) FROM testapp_note", dbname=_dbname())[0][0],
        topology.primary.sql("SELECT last_value FROM testapp_note_id_seq", dbname=_dbname())[0][0],
        topology.primary.sql("SELECT count(*) FROM pg_largeobject_metadata", dbname=_dbname())[0][0],
        topology.primary.sql("SELECT count(*) FROM pg_class WHERE relname LIKE 'guard_%%'", dbname=_dbname())[0][0],
        os.path.exists("/tmp/drp-guard-program"), os.path.exists("/tmp/drp-guard-file"),
    )


def _dbname() -> str:
    return str(connections["default"].settings_dict["NAME"])


@pytest.fixture
def a_note(db_access: None) -> Iterator[None]:
    from tests.testapp.models import Note

    note = Note.objects.using("default").create(text="guarded")
    yield
    note.delete(using="default")


@pytest.mark.usefixtures("a_note")
@pytest.mark.parametrize("path", ["sync", "async"])
def test_nothing_hostile_reaches_the_primary(path: str, primary_alias: str, topology: Topology) -> None:
    before = _state(topology)
    outcomes: dict[str, str] = {}

    def attempt(statement: str) -> None:
        try:
            with connections[primary_alias].cursor() as cursor:
                cursor.execute(statement)
        except ReadOnlyAliasError:
            outcomes[statement] = "refused"
        except Exception as exc:
            outcomes[statement] = f"{type(exc).__name__}: {exc}"
        else:
            outcomes[statement] = "ran"

    if path == "sync":
        for statement in HOSTILE:
            attempt(statement)
    else:
        async def main() -> None:
            for statement in HOSTILE:
                await run(attempt, statement)

        with pools_made_by(settings_for(pool_size=1, max_overflow=0)):
            arun(main())
    assert {s: o for s, o in outcomes.items() if o != "refused"} == {}
    assert _state(topology) == before


# -- the server's own read-only sessions behind the guard ------------------------------ #


@pytest.fixture(scope="module")
def writing_function(topology: Topology, django_db_setup: None, django_db_blocker: Any) -> str:
    """A function that writes without saying so: the guard cannot see it."""
    with django_db_blocker.unblock():
        topology.primary.sql(
            "CREATE OR REPLACE FUNCTION guard_sneaky() RETURNS bigint LANGUAGE sql AS "
            "$$ INSERT INTO testapp_note (text, counter, created) VALUES ('sneaky', 0, now()) RETURNING id $$",
            dbname=_dbname())
    topology.wait_for_replay()
    return "SELECT guard_sneaky()"


def _sneaky_outcome(alias: str, statement: str, path: str) -> str:
    def attempt() -> str:
        try:
            with connections[alias].cursor() as cursor:
                cursor.execute(statement)
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        return "written"

    if path == "sync":
        return attempt()

    async def main() -> str:
        return await run(attempt)

    with pools_made_by(settings_for(pool_size=1, max_overflow=0)):
        return arun(main())


@pytest.mark.parametrize("path", ["sync", "async"])
def test_direct_sessions_are_read_only_on_the_server(path: str, primary_alias: str, writing_function: str) -> None:
    from tests.testapp.models import Note

    assert verdict(writing_function, has_params=False) is None  # the guard lets it through ...
    outcome = _sneaky_outcome(primary_alias, writing_function, path)
    assert "read-only transaction" in outcome, outcome  # ... the server does not
    assert not Note.objects.using("default").filter(text="sneaky").exists()


@pytest.fixture
def bouncer_on_primary(topology: Topology, tmp_path: Any) -> Iterator[PgBouncer]:
    """PgBouncer (transaction mode) in front of the primary, and a pool alias through it."""
    import os

    assert topology.primary is not None and topology.pgbouncer_binary is not None
    assert topology.base is not None
    bouncer = PgBouncer(topology.pgbouncer_binary, topology.base / "pgbouncer-primary", free_port(),
                        topology.primary.port, topology.os_user, topology.password)
    bouncer.start()
    env = {**os.environ, "FIDES__DATABASE__READONLY_PORT": str(bouncer.port)}
    add_pool_alias("readonly_primary_bouncer", env)
    try:
        yield bouncer
    finally:
        remove_pool_alias("readonly_primary_bouncer")
        bouncer.stop()


def _role_read_only(topology: Topology, on: bool) -> None:
    value = "SET default_transaction_read_only = on" if on else "RESET default_transaction_read_only"
    topology.primary.sql(f"ALTER ROLE postgres IN DATABASE {_dbname()} {value}", dbname="postgres")


def test_through_a_pooler_only_the_role_setting_makes_sessions_read_only(
        bouncer_on_primary: PgBouncer, topology: Topology, writing_function: str) -> None:
    from tests.testapp.models import Note

    alias = "readonly_primary_bouncer"
    # The pool cannot set it through PgBouncer: the system check and check_readonly_pool say so.
    warned = checks.run_checks(databases=[alias], tags=["readonly_pool"])
    assert [m.id for m in warned if m.id == "readonly_pool.W008"], warned
    assert "ALTER ROLE" in next(m.hint for m in warned if m.id == "readonly_pool.W008")
    from django_readonly_pool.diagnose import diagnose

    report = asyncio.run(diagnose(alias))
    assert report["server"]["pooler"] is True and report["server"]["transaction_read_only"] is False
    assert "readonly_pool.W104" in [w["id"] for w in report["warnings"]]
    outcome = _sneaky_outcome(alias, writing_function, "sync")
    assert outcome == "written"  # what the warning is about
    Note.objects.using("default").filter(text="sneaky").delete()

    _role_read_only(topology, True)
    try:
        bouncer_on_primary.restart()  # new server connections pick up the role's setting
        connections[alias].close()
        connections[alias].close_pool()
        assert not [m for m in checks.run_checks(databases=[alias], tags=["readonly_pool"])
                    if m.id == "readonly_pool.W008"]
        assert "read-only transaction" in _sneaky_outcome(alias, writing_function, "sync")
        report = asyncio.run(diagnose(alias))
        assert "readonly_pool.W104" not in [w["id"] for w in report["warnings"]]
    finally:
        _role_read_only(topology, False)
    assert not Note.objects.using("default").filter(text="sneaky").exists()


def test_a_hot_standby_needs_no_setting() -> None:
    assert not [m for m in checks.run_checks(databases=["readonly", "readonly_bouncer"], tags=["readonly_pool"])
                if m.id == "readonly_pool.W008"]


# -- the hot path ------------------------------------------------------------------- #


def test_orm_reads_are_judged_once_per_sql_text() -> None:
    from django_readonly_pool import guard
    from tests.testapp.models import Book

    calls: list[str] = []
    original: Callable[[str, bool], str | None] = guard._uncached_verdict

    def counting(text: str, has_params: bool) -> str | None:
        calls.append(text)
        return original(text, has_params)

    guard._with_params.clear()
    guard._uncached_verdict = counting  # type: ignore[assignment]
    try:
        pks = list(Book.objects.using("default").values_list("pk", flat=True)[:5])

        async def main() -> None:
            for pk in pks:
                await Book.objects.filter(pages__gte=0).aget(pk=pk)

        arun(main())
    finally:
        guard._uncached_verdict = original  # type: ignore[assignment]
    assert len(calls) == 1, calls


def test_a_refused_statement_never_reaches_the_server(topology: Topology) -> None:
    """Refused before a connection is even borrowed: no error in the server's log."""
    marker = "guard_marker_4711"
    offset = topology.replica.logfile.stat().st_size

    def attempt() -> None:
        with connections["readonly"].cursor() as cursor:
            cursor.execute(f"SELECT 1; SELECT '{marker}'")

    async def main() -> None:
        with pytest.raises(ReadOnlyAliasError):
            await run(attempt)

    arun(main())
    with pytest.raises(ReadOnlyAliasError):
        attempt()
    with topology.replica.logfile.open() as log:
        log.seek(offset)
        assert marker not in log.read()
    with psycopg.connect(**topology.replica.conninfo(dbname="postgres")) as conn:
        assert not conn.execute("SELECT 1 FROM pg_stat_activity WHERE query LIKE %s",
                                [f"%{marker}%"]).fetchall()

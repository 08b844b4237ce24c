"""Configuration: FIDES__DATABASE__* -> DATABASES, strict parsing, precedence, secrets."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured

from django_readonly_pool import databases_from_env
from django_readonly_pool.conf import (
    ENGINE,
    POOL_FIELDS,
    AppSettings,
    ConnectionTarget,
    PoolSettings,
)
from django_readonly_pool.errors import ConfigurationError

P = "FIDES__DATABASE__"
POOL = P + "ASYNC_READONLY_DATABASE_"
SECRET = "s3cr3t:@/%'\" \\é-pass"


def env(**values: str) -> dict[str, str]:
    return {P + k: v for k, v in values.items()}


def problems_of(environ: dict[str, str]) -> str:
    with pytest.raises(ImproperlyConfigured) as info:
        databases_from_env(environ)
    return str(info.value)


# -- shape and defaults ------------------------------------------------------ #


def test_defaults_are_the_references() -> None:
    dbs = databases_from_env({})
    assert set(dbs) == {"default", "readonly"}
    default = dbs["default"]
    assert default["ENGINE"] == "django.db.backends.postgresql"
    assert (default["HOST"], default["PORT"], default["USER"], default["PASSWORD"], default["NAME"]) == (
        "default-db", "5432", "defaultuser", "defaultpassword", "default_db",
    )
    assert default["OPTIONS"] == {}
    pool = dbs["readonly"]["OPTIONS"]["readonly_pool"]
    assert (pool["pool_size"], pool["max_overflow"], pool["prewarm"], pool["pool_skip_rollback"],
            pool["autocommit"], pool["pre_ping"]) == (5, 10, False, False, False, True)


def test_readonly_alias_shape() -> None:
    ro = databases_from_env(env(SERVER="p", READONLY_SERVER="r"))["readonly"]
    assert ro["ENGINE"] == ENGINE
    assert ro["TEST"] == {"MIRROR": "default"}
    assert ro["CONN_MAX_AGE"] == 0
    assert ro["HOST"] == "r"
    assert ro["OPTIONS"]["readonly_pool"]["replica_configured"] is True


def test_custom_alias_name() -> None:
    dbs = databases_from_env(env(READONLY_SERVER="r"), readonly_alias="replica")
    assert set(dbs) == {"default", "replica"}
    with pytest.raises(ImproperlyConfigured):
        databases_from_env({}, readonly_alias="default")


def test_every_primary_variable() -> None:
    dbs = databases_from_env(env(
        SERVER="db.example", PORT="6543", USER="app", PASSWORD=SECRET, DB="prod",
        PARAMS='{"sslmode": "require", "application_name": "web", "keepalives": true}',
    ))
    d = dbs["default"]
    assert (d["HOST"], d["PORT"], d["USER"], d["PASSWORD"], d["NAME"]) == ("db.example", "6543", "app", SECRET, "prod")
    assert d["OPTIONS"] == {"sslmode": "require", "application_name": "web", "keepalives": 1}


def test_readonly_falls_back_to_primary_values() -> None:
    ro = databases_from_env(env(
        SERVER="p", PORT="6543", USER="app", PASSWORD=SECRET, DB="prod",
        PARAMS='{"sslmode": "require"}', READONLY_SERVER="replica.example",
    ))["readonly"]
    assert (ro["HOST"], ro["PORT"], ro["USER"], ro["PASSWORD"], ro["NAME"]) == (
        "replica.example", "6543", "app", SECRET, "prod")
    assert ro["OPTIONS"]["sslmode"] == "require"


def test_every_readonly_variable_overrides() -> None:
    ro = databases_from_env(env(
        SERVER="p", PORT="6543", USER="app", PASSWORD="x", DB="prod", PARAMS='{"sslmode": "require"}',
        READONLY_SERVER="r", READONLY_PORT="7000", READONLY_USER="ro", READONLY_PASSWORD=SECRET,
        READONLY_DB="replica_db", READONLY_PARAMS='{"sslmode": "verify-full"}',
    ))["readonly"]
    assert (ro["HOST"], ro["PORT"], ro["USER"], ro["PASSWORD"], ro["NAME"]) == ("r", "7000", "ro", SECRET, "replica_db")
    assert ro["OPTIONS"]["sslmode"] == "verify-full"


def test_no_replica_targets_the_primary() -> None:
    dbs = databases_from_env(env(SERVER="p", PORT="6000", READONLY_USER="ignored-without-server"))
    ro = dbs["readonly"]
    assert (ro["HOST"], ro["PORT"]) == ("p", "6000")
    assert ro["OPTIONS"]["readonly_pool"]["replica_configured"] is False


def test_empty_values_count_as_unset() -> None:
    ro = databases_from_env(env(SERVER="p", READONLY_SERVER="r", READONLY_PORT="", READONLY_USER=" "))["readonly"]
    assert (ro["PORT"], ro["USER"]) == ("5432", "defaultuser")
    assert databases_from_env({POOL + "POOL_SIZE": ""})["readonly"]["OPTIONS"]["readonly_pool"]["pool_size"] == 5


def test_pool_variables() -> None:
    pool = databases_from_env({
        POOL + "POOL_SIZE": "300", POOL + "MAX_OVERFLOW": "50", POOL + "PREWARM": "true",
        POOL + "POOL_SKIP_ROLLBACK": "YES", POOL + "AUTOCOMMIT": "On", POOL + "PRE_PING": "0",
        POOL + "CHECKOUT_TIMEOUT": "2.5", POOL + "PREWARM_TIMEOUT": "9", POOL + "CONNECT_TIMEOUT": "4",
        POOL + "MAX_LIFETIME": "600", POOL + "OVERFLOW_IDLE_TIMEOUT": "0", POOL + "PRE_PING_INTERVAL": "0.25",
        POOL + "CHECK_TIMEOUT": "1", POOL + "QUERY_TIMEOUT": "30",
    })["readonly"]["OPTIONS"]["readonly_pool"]
    assert pool == {
        "pool_size": 300, "max_overflow": 50, "prewarm": True, "pool_skip_rollback": True,
        "autocommit": True, "pre_ping": False, "checkout_timeout": 2.5, "prewarm_timeout": 9.0,
        "connect_timeout": 4, "max_lifetime": 600.0, "overflow_idle_timeout": 0.0,
        "pre_ping_interval": 0.25, "check_timeout": 1.0, "query_timeout": 30.0,
        "replica_configured": False,
    }


@pytest.mark.parametrize("word,value", [
    ("true", True), ("TRUE", True), ("1", True), ("yes", True), ("On", True), (" on ", True),
    ("false", False), ("False", False), ("0", False), ("no", False), ("OFF", False),
])
def test_boolean_words(word: str, value: bool) -> None:
    pool = databases_from_env({POOL + "PREWARM": word})["readonly"]["OPTIONS"]["readonly_pool"]
    assert pool["prewarm"] is value


@pytest.mark.parametrize("word", ["maybe", "t", "y", "2", "-1", "truee", "enabled", "1.0", "nope"])
def test_boolean_refuses_anything_else(word: str) -> None:
    message = problems_of({POOL + "PREWARM": word})
    assert POOL + "PREWARM" in message and repr(word) in message
    assert "true/false, 1/0, yes/no or on/off" in message


@pytest.mark.parametrize("value", ["abc", "1.5", "1e3", "0x10", "five", "١٢", "1_000", "+", "0", "-3", "10001"])
def test_pool_size_refuses(value: str) -> None:
    message = problems_of({POOL + "POOL_SIZE": value})
    assert POOL + "POOL_SIZE" in message and repr(value) in message
    assert "integer from 1 to 10000" in message


def test_max_overflow_minus_one_explained() -> None:
    message = problems_of({POOL + "MAX_OVERFLOW": "-1"})
    assert POOL + "MAX_OVERFLOW=-1" in message
    assert "SQLAlchemy" in message and "max_connections" in message


@pytest.mark.parametrize("name,value", [
    ("CHECKOUT_TIMEOUT", "0"), ("CHECKOUT_TIMEOUT", "-1"), ("CHECKOUT_TIMEOUT", "nan"),
    ("CHECKOUT_TIMEOUT", "inf"), ("PREWARM_TIMEOUT", "1e3"), ("CONNECT_TIMEOUT", "1"),
    ("CONNECT_TIMEOUT", "2.5"), ("MAX_LIFETIME", "0"), ("QUERY_TIMEOUT", "-0.5"),
    ("PRE_PING_INTERVAL", "soon"), ("OVERFLOW_IDLE_TIMEOUT", "1,5"),
])
def test_numbers_refused(name: str, value: str) -> None:
    message = problems_of({POOL + name: value})
    assert POOL + name in message and repr(value) in message


@pytest.mark.parametrize("name,value", [("PORT", "0"), ("PORT", "65536"), ("PORT", "99999"),
                                        ("PORT", "http"), ("READONLY_PORT", "5432;"), ("READONLY_PORT", "5432,")])
def test_ports_refused(name: str, value: str) -> None:
    message = problems_of(env(READONLY_SERVER="r", **{name: value}))
    assert P + name in message and "1 to 65535" in message


def test_multi_host_lists() -> None:
    ro = databases_from_env(env(
        READONLY_SERVER="r1,r2,r3", READONLY_PORT="5432,5433,5434",
        READONLY_PARAMS='{"target_session_attrs": "standby", "load_balance_hosts": "random"}',
    ))["readonly"]
    assert (ro["HOST"], ro["PORT"]) == ("r1,r2,r3", "5432,5433,5434")
    assert ro["OPTIONS"]["target_session_attrs"] == "standby"
    # one port for every host is fine too
    assert databases_from_env(env(READONLY_SERVER="r1,r2", READONLY_PORT="6000"))["readonly"]["PORT"] == "6000"


def test_multi_host_mismatch() -> None:
    message = problems_of(env(READONLY_SERVER="r1,r2,r3", READONLY_PORT="5432,5433"))
    assert "2 ports" in message and "3 hosts" in message
    message = problems_of(env(SERVER="p1,p2", PORT="1,2", READONLY_SERVER="r1,r2,r3"))
    assert "PORT (inherited)" in message


@pytest.mark.parametrize("value", ["a,,b", " a", "a b", ",", "a,"])
def test_bad_host_lists(value: str) -> None:
    assert P + "READONLY_SERVER" in problems_of(env(READONLY_SERVER=value))


@pytest.mark.parametrize("value,expected", [
    ("[1]", "not a JSON array"), ('"x"', "not a JSON string"), ("{", "not valid JSON"),
    ('{"sslmode": {"a": 1}}', "not a JSON object"), ('{"sslmode": [1]}', "not a JSON array"),
    ('{"sslmode": null}', "not a JSON null"), ('{"sslmod": "require"}', "did you mean 'sslmode'"),
    ('{"host": "x"}', "FIDES__DATABASE__SERVER instead"), ('{"client_encoding": "latin1"}', "UTF8"),
])
def test_params_refused(value: str, expected: str) -> None:
    message = problems_of(env(PARAMS=value))
    assert P + "PARAMS" in message and expected in message


def test_readonly_params_names_its_own_variable() -> None:
    message = problems_of(env(READONLY_SERVER="r", READONLY_PARAMS='{"password": "x"}'))
    assert "READONLY_PARAMS" in message and "FIDES__DATABASE__READONLY_PASSWORD instead" in message


def test_all_problems_reported_together_without_password() -> None:
    environ = {
        POOL + "POOL_SIZE": "abc", POOL + "PREWARM": "maybe", P + "READONLY_SERVER": "r",
        P + "READONLY_PORT": "99999", P + "PARAMS": "[1]", P + "PASSWORD": SECRET,
        P + "READONLY_PASSWORD": SECRET + "2",
    }
    with pytest.raises(ConfigurationError) as info:
        databases_from_env(environ)
    message = str(info.value)
    for name in ("ASYNC_READONLY_DATABASE_POOL_SIZE", "ASYNC_READONLY_DATABASE_PREWARM", "READONLY_PORT", "PARAMS"):
        assert P + name in message
    assert len(info.value.problems) == 4
    assert "4 problems" in message
    assert SECRET not in message and "s3cr3t" not in message
    assert isinstance(info.value, ImproperlyConfigured)


def test_secret_params_masked() -> None:
    message = problems_of(env(PARAMS='{"sslpassword": ["s3cr3t"]}'))
    assert "s3cr3t" not in message and "********" in message
    message = problems_of(env(PARAMS='{"sslpassword": "s3cr3t", broken'))
    assert "s3cr3t" not in message


def test_unknown_pool_variable_suggests() -> None:
    message = problems_of({POOL + "POOLSIZE": "5"})
    assert POOL + "POOLSIZE" in message and "did you mean" in message and "POOL_SIZE" in message


def test_passwords_pass_through_unchanged() -> None:
    for password in [SECRET, "p@ss word", "%41%42", "a'b\"c\\d", "ünïcødé 密码", "x" * 200]:
        dbs = databases_from_env(env(PASSWORD=password, READONLY_SERVER="r"))
        assert dbs["default"]["PASSWORD"] == password
        assert dbs["readonly"]["PASSWORD"] == password


def test_database_name_length() -> None:
    assert P + "DB" in problems_of(env(DB="x" * 64))
    assert databases_from_env(env(DB="x" * 63))["default"]["NAME"] == "x" * 63


def test_connect_timeout_from_params() -> None:
    ro = databases_from_env(env(READONLY_SERVER="r", READONLY_PARAMS='{"connect_timeout": 7}'))["readonly"]
    assert ro["OPTIONS"]["readonly_pool"]["connect_timeout"] == 7
    assert "connect_timeout" not in ro["OPTIONS"]
    ro = databases_from_env({**env(READONLY_SERVER="r", READONLY_PARAMS='{"connect_timeout": 7}'),
                             POOL + "CONNECT_TIMEOUT": "3"})["readonly"]
    assert ro["OPTIONS"]["readonly_pool"]["connect_timeout"] == 3


# -- PoolSettings from OPTIONS (explicit settings beat the environment) -------- #


def test_options_round_trip() -> None:
    settings = PoolSettings(pool_size=7, max_overflow=0, prewarm=True, autocommit=True)
    assert PoolSettings.from_options(settings.as_options(), alias="x", environ={}) == settings


def test_explicit_setting_beats_environment() -> None:
    environ = {POOL + "POOL_SIZE": "300", POOL + "AUTOCOMMIT": "true"}
    parsed = PoolSettings.from_options({"pool_size": 20}, alias="ro", environ=environ)
    assert parsed.pool_size == 20  # the settings.py value wins
    assert parsed.autocommit is True  # unset there: the environment's
    assert PoolSettings.from_options({}, alias="ro", environ={}).autocommit is False  # default


def test_options_strict() -> None:
    with pytest.raises(ConfigurationError) as info:
        PoolSettings.from_options(
            {"pool_size": True, "max_overflow": -1, "prewarm": "maybe", "pool_sise": 3, "check_timeout": "x"},
            alias="ro", environ={},
        )
    message = str(info.value)
    assert "DATABASES['readonly']" not in message  # the alias given is named
    for key in ("pool_size", "max_overflow", "prewarm", "pool_sise", "check_timeout"):
        assert key in message
    assert "did you mean 'pool_size'" in message
    assert len(info.value.problems) == 5


def test_fields_table_matches_dataclass() -> None:
    import dataclasses

    names = [f.name for f in dataclasses.fields(PoolSettings)]
    assert names == [f.key for f in POOL_FIELDS] + ["replica_configured"]
    defaults = PoolSettings()
    for field in POOL_FIELDS:
        assert getattr(defaults, field.key) == field.default


def test_max_size() -> None:
    assert PoolSettings(pool_size=300, max_overflow=50).max_size == 350


# -- masking ------------------------------------------------------------------ #


def test_connection_target_masks() -> None:
    dbs = databases_from_env(env(READONLY_SERVER="r1,r2", READONLY_PORT="1,2", PASSWORD=SECRET))
    dbs["readonly"]["OPTIONS"]["sslpassword"] = "k3y"  # written in settings.py (E006 reports it)
    target = ConnectionTarget.from_settings(dbs["readonly"])
    text = repr(target) + target.describe() + str(target)
    assert SECRET not in text and "k3y" not in text
    assert target.describe() == "r1:1,r2:2/default_db as defaultuser"


# -- READONLY_POOL ------------------------------------------------------------ #


def test_app_settings_defaults_and_values() -> None:
    assert AppSettings.from_setting(None) == AppSettings()
    parsed = AppSettings.from_setting({"FALLBACK": "fail", "STICKY_SECONDS": 3, "MAX_LAG_BYTES": 1024,
                                       "READONLY_ALIASES": ["a", "b"]})
    assert (parsed.fallback, parsed.sticky_seconds, parsed.max_lag_bytes, parsed.readonly_aliases) == (
        "fail", 3.0, 1024, ("a", "b"))


def test_app_settings_strict() -> None:
    with pytest.raises(ConfigurationError) as info:
        AppSettings.from_setting({"FALLBACK": "maybe", "STICKY_SECONDS": -1, "ASYNC_ORMS": True,
                                  "MAX_LAG_SECONDS": "5", "READONLY_ALIASES": []})
    assert len(info.value.problems) == 5
    assert "did you mean 'ASYNC_ORM'" in str(info.value)


def test_every_variable_is_in_the_readme() -> None:
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    for name in ("SERVER", "PORT", "USER", "PASSWORD", "DB", "PARAMS", "READONLY_SERVER", "READONLY_PORT",
                 "READONLY_USER", "READONLY_PASSWORD", "READONLY_DB", "READONLY_PARAMS"):
        assert f"`FIDES__DATABASE__{name}`" in readme, name
    for field in POOL_FIELDS:
        assert f"| `{field.key.upper()}` |" in readme, field.key
    for name in ("ASYNC_ORM", "PRIMARY", "READONLY_ALIASES", "PIN_AFTER_WRITE", "STICKY_SECONDS",
                 "STICKY_COOKIE", "FALLBACK", "HEALTH_CHECK_INTERVAL", "MAX_LAG_SECONDS", "TESTS_READ_PRIMARY",
                 "SKIP_REQUEST_THREAD_HOP"):
        assert f"`{name}`" in readme, name

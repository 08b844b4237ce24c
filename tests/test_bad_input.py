"""Property-based tests over every variable: invalid values raise
ImproperlyConfigured naming the variable (never another exception), valid values
round-trip. Each test counts the inputs hypothesis tried; the session prints
the total (the README's Reliability section quotes it)."""

from __future__ import annotations

import json
import math
import os
import string
from collections import Counter
from decimal import Decimal
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from django_readonly_pool import databases_from_env
from django_readonly_pool.conf import POOL_FIELDS, SECRET_KEYS, PoolSettings, _libpq_keywords

P = "FIDES__DATABASE__"
TRIED: Counter[str] = Counter()
EXAMPLES = int(os.environ.get("READONLY_POOL_HYPOTHESIS_EXAMPLES", "300"))  # raise it to search harder
config = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BOOL_WORDS = ["true", "false", "1", "0", "yes", "no", "on", "off"]


def reject(environ: dict[str, str], variable: str) -> str:
    try:
        databases_from_env(environ)
    except ImproperlyConfigured as exc:
        message = str(exc)
        assert variable in message, message
        return message
    raise AssertionError(f"{environ!r} was accepted")


def accept(environ: dict[str, str]) -> dict[str, Any]:
    return databases_from_env(environ)


def case_variants(word: str) -> st.SearchStrategy[str]:
    return st.tuples(st.lists(st.booleans(), min_size=len(word), max_size=len(word)),
                     st.sampled_from(["", " ", "\t"])).map(
        lambda t: t[1] + "".join(c.upper() if up else c for c, up in zip(word, t[0], strict=True)) + t[1])


BOOL_FIELDS = [f for f in POOL_FIELDS if f.kind == "bool"]
INT_FIELDS = [f for f in POOL_FIELDS if f.kind == "int"]
FLOAT_FIELDS = [f for f in POOL_FIELDS if f.kind == "float"]


@pytest.mark.parametrize("field", BOOL_FIELDS, ids=lambda f: f.key)
@config
@given(data=st.data())
def test_booleans(field: Any, data: st.DataObject) -> None:
    TRIED[f"bool:{field.key}"] += 1
    word = data.draw(st.sampled_from(BOOL_WORDS))
    value = data.draw(case_variants(word))
    pool = accept({field.env: value})["readonly"]["OPTIONS"]["readonly_pool"]
    assert pool[field.key] is (word in ("true", "1", "yes", "on"))
    bad = data.draw(st.text(min_size=1).filter(lambda t: t.strip().lower() not in BOOL_WORDS and t.strip()))
    reject({field.env: bad}, field.env)


@pytest.mark.parametrize("field", INT_FIELDS, ids=lambda f: f.key)
@config
@given(data=st.data())
def test_integers(field: Any, data: st.DataObject) -> None:
    TRIED[f"int:{field.key}"] += 1
    good = data.draw(st.integers(int(field.minimum), int(field.maximum)))
    pool = accept({field.env: str(good)})["readonly"]["OPTIONS"]["readonly_pool"]
    assert pool[field.key] == good
    assert PoolSettings.from_options(pool, alias="x", environ={}) == PoolSettings(**pool)
    bad = data.draw(st.one_of(
        st.integers().filter(lambda i: not field.minimum <= i <= field.maximum).map(str),
        st.text(min_size=1).filter(lambda t: (t.strip() and not t.strip().lstrip("+-").isascii())
                                   or (t.strip() and not t.strip().lstrip("+-").isdigit())),
        st.floats(allow_nan=True).map(repr),
    ))
    reject({field.env: bad}, field.env)


@pytest.mark.parametrize("field", FLOAT_FIELDS, ids=lambda f: f.key)
@config
@given(data=st.data())
def test_numbers(field: Any, data: st.DataObject) -> None:
    TRIED[f"float:{field.key}"] += 1
    good = data.draw(st.decimals(min_value=Decimal(str(field.minimum)), max_value=Decimal(str(field.maximum)), places=3, allow_nan=False))
    pool = accept({field.env: str(good)})["readonly"]["OPTIONS"]["readonly_pool"]
    assert pool[field.key] == float(good)
    bad = data.draw(st.one_of(
        st.floats(allow_nan=True, allow_infinity=True).filter(
            lambda x: not (field.minimum <= x <= field.maximum) or math.isnan(x)).map(repr),
        st.text(min_size=1).filter(lambda t: t.strip() and not _is_plain_number(t.strip())),
    ))
    reject({field.env: bad}, field.env)


def _is_plain_number(text: str) -> bool:
    import re

    return re.fullmatch(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)", text, re.ASCII) is not None


@config
@given(port=st.integers(1, 65535), bad=st.one_of(st.integers().filter(lambda p: not 1 <= p <= 65535).map(str),
                                                 st.text(min_size=1).filter(lambda t: t.strip() and not t.strip().isdigit()
                                                                            and "," not in t)))
def test_ports(port: int, bad: str) -> None:
    TRIED["port"] += 1
    dbs = accept({P + "PORT": str(port), P + "READONLY_SERVER": "r", P + "READONLY_PORT": str(port)})
    assert dbs["default"]["PORT"] == dbs["readonly"]["PORT"] == str(port)
    reject({P + "READONLY_SERVER": "r", P + "READONLY_PORT": bad}, P + "READONLY_PORT")


HOST = st.text(alphabet=string.ascii_lowercase + string.digits + ".-", min_size=1, max_size=30)


@config
@given(hosts=st.lists(HOST, min_size=1, max_size=4), data=st.data())
def test_host_lists(hosts: list[str], data: st.DataObject) -> None:
    TRIED["hosts"] += 1
    ports = [str(data.draw(st.integers(1, 65535))) for _ in hosts]
    dbs = accept({P + "READONLY_SERVER": ",".join(hosts), P + "READONLY_PORT": ",".join(ports)})
    assert dbs["readonly"]["HOST"] == ",".join(hosts) and dbs["readonly"]["PORT"] == ",".join(ports)
    # libpq: one port serves every host; otherwise exactly one port per host.
    one = accept({P + "READONLY_SERVER": ",".join(hosts), P + "READONLY_PORT": ports[0]})
    assert one["readonly"]["PORT"] == ports[0]
    reject({P + "READONLY_SERVER": ",".join(hosts), P + "READONLY_PORT": ",".join([*ports, "5432"])},
           P + "READONLY_PORT")
    if len(hosts) > 2:
        reject({P + "READONLY_SERVER": ",".join(hosts), P + "READONLY_PORT": ",".join(ports[:-1])},
               P + "READONLY_PORT")


SCALAR = st.one_of(st.text(max_size=20), st.integers(-10**6, 10**6), st.booleans())
ALLOWED_KEYS = sorted(_libpq_keywords() - {"host", "port", "user", "password", "dbname", "client_encoding"}
                      - SECRET_KEYS)
REPORTED_SECRETS = sorted(SECRET_KEYS - {"password"})  # libpq reports them through conn.info.dsn


@config
@given(params=st.dictionaries(st.sampled_from(ALLOWED_KEYS), SCALAR, max_size=5),
       bad=st.one_of(
           st.lists(SCALAR).map(json.dumps),
           SCALAR.map(json.dumps),
           st.dictionaries(st.text(min_size=1).filter(lambda k: k not in _libpq_keywords()), SCALAR,
                           min_size=1).map(json.dumps),
           st.dictionaries(st.sampled_from(ALLOWED_KEYS), st.one_of(st.none(), st.lists(SCALAR, min_size=1)),
                           min_size=1).map(json.dumps),
           st.text(min_size=1).filter(lambda t: t.strip() and not _is_json(t)),
       ))
def test_params(params: dict[str, Any], bad: str) -> None:
    TRIED["params"] += 1
    options = {k: v for k, v in params.items() if k != "connect_timeout"}
    dbs = accept({P + "READONLY_SERVER": "r", P + "READONLY_PARAMS": json.dumps(options)})
    expected = {k: (int(v) if isinstance(v, bool) else v) for k, v in options.items()}
    assert {k: v for k, v in dbs["readonly"]["OPTIONS"].items() if k != "readonly_pool"} == expected
    reject({P + "PARAMS": bad}, P + "PARAMS")


@config
@given(key=st.sampled_from(REPORTED_SECRETS), value=st.text(min_size=6, alphabet="abcdefXYZ0123456789"),
       where=st.sampled_from(["PARAMS", "READONLY_PARAMS"]))
def test_params_libpq_would_report_back_are_refused(key: str, value: str, where: str) -> None:
    TRIED["reported secrets"] += 1
    message = reject({P + "READONLY_SERVER": "r", P + where: json.dumps({key: value})}, P + where)
    assert repr(key) in message and "conn.info.dsn" in message
    assert value not in message


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


@config
@given(password=st.text(min_size=1, alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"))
       .filter(lambda p: p.strip() and len(p.strip()) > 3))
def test_passwords_round_trip_and_never_show(password: str) -> None:
    TRIED["password"] += 1
    dbs = accept({P + "PASSWORD": password, P + "READONLY_SERVER": "r"})
    assert dbs["default"]["PASSWORD"] == dbs["readonly"]["PASSWORD"] == password
    # an error next to the password says nothing that depends on it
    bad = {P + "ASYNC_READONLY_DATABASE_POOL_SIZE": "x", P + "READONLY_PARAMS": '{"sslmode": []}'}
    message = reject({P + "PASSWORD": password, P + "READONLY_PASSWORD": password, **bad},
                     P + "ASYNC_READONLY_DATABASE_POOL_SIZE")
    assert message == reject({P + "PASSWORD": "sentinel", P + "READONLY_PASSWORD": "sentinel", **bad},
                             P + "READONLY_PARAMS")


@config
@given(environ=st.dictionaries(st.sampled_from([f.env for f in POOL_FIELDS] + [P + n for n in (
    "SERVER", "PORT", "USER", "DB", "PARAMS", "READONLY_SERVER", "READONLY_PORT", "READONLY_PARAMS")]),
    st.text(max_size=12), max_size=6))
def test_any_environment_gives_databases_or_improperly_configured(environ: dict[str, str]) -> None:
    TRIED["any environment"] += 1
    try:
        dbs = databases_from_env(environ)
    except ImproperlyConfigured as exc:
        assert any(name in str(exc) for name in environ)
    else:
        assert set(dbs) == {"default", "readonly"}
        PoolSettings.from_options(dbs["readonly"]["OPTIONS"]["readonly_pool"], alias="readonly", environ={})

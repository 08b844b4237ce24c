"""``FIDES__DATABASE__*`` to ``settings.DATABASES``: :func:`databases_from_env`.

The reference guide's variables for the primary and the replica, and the pool's
(``ASYNC_READONLY_DATABASE_*``), parsed strictly: every problem is collected
and reported at once, naming the variable, its value (secrets masked) and what
is allowed. How a bad environment shows depends on who reads it (see
:func:`databases_from_env`).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import sys
import warnings
from collections.abc import Mapping
from typing import Any, Final

from django.conf import settings as django_settings

from django_readonly_pool.errors import ConfigurationError, ConfigurationWarning

from .base import (
    ENGINE,
    ENV_PREFIX,
    OPTIONS_KEY,
    POOL_ENV_PREFIX,
    SECRET_KEYS,
    libpq_keywords,
    mask,
    refused_keyword,
    show,
    suggest,
)
from .pool import INT_RE, POOL_FIELDS, PoolSettings

__all__ = ["MISCONFIGURED_ENGINE", "databases_from_env", "deferred_error", "near_misses"]

# The reference's defaults for the primary (fides.config.DatabaseSettings).
PRIMARY_DEFAULTS: Final[Mapping[str, str]] = {
    "SERVER": "default-db",
    "PORT": "5432",
    "USER": "defaultuser",
    "PASSWORD": "defaultpassword",
    "DB": "default_db",
    "PARAMS": "{}",
}
# The variables of the primary and the replica (the pool's are in POOL_FIELDS).
_ENV_NAMES: Final = (
    "SERVER", "PORT", "USER", "PASSWORD", "DB", "PARAMS",
    "READONLY_SERVER", "READONLY_PORT", "READONLY_USER", "READONLY_PASSWORD", "READONLY_DB", "READONLY_PARAMS",
)
# libpq keywords that have a dedicated variable: refused inside *PARAMS.
_DEDICATED_KEYS: Final[Mapping[str, str]] = {
    "host": "SERVER", "port": "PORT", "user": "USER", "password": "PASSWORD", "dbname": "DB",
}
_MAX_IDENTIFIER_BYTES: Final = 63  # PostgreSQL's NAMEDATALEN - 1


class _EnvReader:
    """Reads ``FIDES__DATABASE__*`` values and collects every problem."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.problems: list[str] = []

    def get(self, name: str) -> str | None:
        """The value of ``FIDES__DATABASE__<name>``; empty counts as unset."""
        raw = self.environ.get(ENV_PREFIX + name)
        if raw is None or raw.strip() == "":
            return None
        return raw

    def error(self, name: str, raw: str | None, message: str, *, secret: bool = False) -> None:
        shown = mask(raw) if secret else show(raw)
        self.problems.append(f"{ENV_PREFIX}{name}={shown} {message}")

    def hosts(self, name: str, raw: str) -> list[str] | None:
        hosts = raw.split(",")
        bad = [h for h in hosts if not h.strip() or h != h.strip() or any(c.isspace() for c in h)]
        if bad:
            self.error(
                name, raw,
                "is not valid: expected a host name, an IP address or a socket directory, "
                "or a comma-separated list of them (libpq multi-host) with no spaces or empty items",
            )
            return None
        return hosts

    def ports(self, name: str, raw: str) -> list[str] | None:
        ports = [p.strip() for p in raw.split(",")]
        for port in ports:
            if not (INT_RE.fullmatch(port) and 1 <= int(port) <= 65535):
                self.error(
                    name, raw,
                    "is not valid: expected a port from 1 to 65535, or a comma-separated "
                    "list of ports, one per host",
                )
                return None
        return [str(int(p)) for p in ports]

    def params(self, name: str, raw: str) -> dict[str, Any] | None:
        secretish = "password" in raw.lower() or "secret" in raw.lower() or any(k in raw for k in SECRET_KEYS)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            shown = "(masked: it mentions a secret)" if secretish else show(raw)
            self.problems.append(
                f"{ENV_PREFIX}{name}={shown} is not valid JSON ({exc.msg} at character "
                f"{exc.pos}): expected a JSON object of libpq parameters such as "
                '{"sslmode": "verify-full", "sslrootcert": "/path/ca.pem"}'
            )
            return None
        if not isinstance(value, dict):
            self.error(
                name, "(masked)" if secretish else raw,
                f"is not valid: expected a JSON object of libpq parameters, not a JSON "
                f"{_json_type(value)}",
            )
            return None
        result: dict[str, Any] = {}
        ok = True
        keywords = libpq_keywords()
        for key, item in value.items():
            shown_item = mask(item) if key in SECRET_KEYS else repr(item)
            if key in _DEDICATED_KEYS:
                base = "READONLY_" if name.startswith("READONLY_") else ""
                self.problems.append(
                    f"{ENV_PREFIX}{name}: key {key!r} is not allowed here; set "
                    f"{ENV_PREFIX}{base}{_DEDICATED_KEYS[key]} instead"
                )
                ok = False
            elif (refusal := refused_keyword(key)) is not None:
                self.problems.append(f"{ENV_PREFIX}{name}: {refusal} (value {shown_item})")
                ok = False
            elif key == "client_encoding":
                self.problems.append(
                    f"{ENV_PREFIX}{name}: key 'client_encoding' is not allowed: Django "
                    "always connects with UTF8"
                )
                ok = False
            elif key not in keywords:
                self.problems.append(
                    f"{ENV_PREFIX}{name}: {key!r} is not a libpq connection parameter"
                    + suggest(key, keywords)
                )
                ok = False
            elif isinstance(item, bool):
                result[key] = int(item)
            elif isinstance(item, (str, int)) or (isinstance(item, float) and math.isfinite(item)):
                result[key] = item
            else:
                self.problems.append(
                    f"{ENV_PREFIX}{name}: the value of {key!r} ({shown_item}) must be a "
                    f"string, a number or a boolean, not a JSON {_json_type(item)}"
                )
                ok = False
        return result if ok else None

    def dbname(self, name: str, raw: str) -> str | None:
        if len(raw.encode()) > _MAX_IDENTIFIER_BYTES:
            self.error(
                name, raw,
                f"is too long: PostgreSQL names are at most {_MAX_IDENTIFIER_BYTES} bytes",
            )
            return None
        return raw


def _json_type(value: object) -> str:
    return {
        dict: "object", list: "array", str: "string", bool: "boolean",
        int: "number", float: "number", type(None): "null",
    }.get(type(value), type(value).__name__)


def _check_unknown_pool_variables(environ: Mapping[str, str], problems: list[str]) -> None:
    known = {f.env for f in POOL_FIELDS}
    for name in environ:
        if name.startswith(POOL_ENV_PREFIX) and name not in known:
            problems.append(
                f"{name} is not a variable of django-readonly-pool"
                + suggest(name, known)
            )


MISCONFIGURED_ENGINE: Final = "django_readonly_pool.backend.misconfigured"
_deferred: list[ConfigurationError] = []


def deferred_error() -> ConfigurationError | None:
    """The problems of the process environment, when a management command started with them."""
    return _deferred[-1] if _deferred else None


def _management_command() -> str | None:
    """The command when this process is ``manage.py <command>`` / ``django-admin``."""
    argv = sys.argv
    if len(argv) < 2 or argv[1].startswith("-"):
        return None
    program = os.path.basename(argv[0])
    django_main = os.path.join("django", "__main__.py")
    if "manage" in program or program.startswith("django-admin") or argv[0].endswith(django_main):
        return argv[1]
    return None


def _message_alone(error: ConfigurationError) -> None:
    """An uncaught bad-environment error prints as its list of problems, without a traceback
    (``READONLY_POOL_TRACEBACK=1`` shows it)."""
    previous = sys.excepthook
    if getattr(previous, "readonly_pool", False):
        return

    def hook(kind: type[BaseException], value: BaseException, traceback: Any) -> None:
        if isinstance(value, ConfigurationError) and not os.environ.get("READONLY_POOL_TRACEBACK"):
            sys.stderr.write(f"{value}\n(READONLY_POOL_TRACEBACK=1 shows where it was raised)\n")
            return
        previous(kind, value, traceback)

    hook.readonly_pool = True  # type: ignore[attr-defined]
    sys.excepthook = hook


def near_misses(environ: Mapping[str, str]) -> list[str]:
    """``FIDES__DATABASE__*`` names that are not ours but look like one of ours
    (other software shares the prefix: only close matches count)."""
    known = {ENV_PREFIX + name for name in _ENV_NAMES} | {f.env for f in POOL_FIELDS}
    found = []
    for name in sorted(environ):
        if name.startswith(ENV_PREFIX) and name not in known and not name.startswith(POOL_ENV_PREFIX):
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.85)
            if close:
                found.append(f"{name} is not a variable of django-readonly-pool (did you mean {close[0]}?); "
                             "it is ignored")
    return found


def databases_from_env(
    environ: Mapping[str, str] | None = None, *, readonly_alias: str = "readonly"
) -> dict[str, dict[str, Any]]:
    """Build ``settings.DATABASES`` from the ``FIDES__DATABASE__*`` variables.

    Returns ``{"default": ..., readonly_alias: ...}``: ``default`` uses Django's
    PostgreSQL backend on the primary; *readonly_alias* uses this package's
    backend on the replica (``READONLY_*``), each unset ``READONLY_*`` value
    falling back to the primary's. When ``READONLY_SERVER`` is unset the alias
    targets the primary itself: async reads still get the pool, and
    ``check_readonly_pool`` warns that no replica is configured. The alias is a
    test mirror of ``default``, so ``manage.py test`` never creates a database
    on a replica.

    Raises :class:`~django_readonly_pool.errors.ConfigurationError` (an
    ``ImproperlyConfigured``) listing every invalid variable at once, except
    while a management command (``manage.py``, ``django-admin``) loads its
    settings: then the aliases get a placeholder engine, Django starts, its
    system checks list every problem (``readonly_pool.E007``: most commands stop
    with them, exit code 1) and ``check_readonly_pool`` reports ``misconfigured``
    (exit code 2, a JSON document with ``--format json``); any use of the
    database raises the error. Elsewhere (an ASGI or WSGI server importing the
    settings) a bad process environment stops the start, and the error prints as
    its list of problems alone, without a traceback.

    A variable under the prefix that is not one of these but looks like one
    (``READONLY_SERVR``) gives a warning (``readonly_pool.W009``).
    """
    if environ is None:
        environ = os.environ
        for message in near_misses(environ):
            warnings.warn(message, ConfigurationWarning, stacklevel=2)
    try:
        return _databases(environ, readonly_alias)
    except ConfigurationError as exc:
        if _management_command() is None or django_settings.configured:
            if environ is os.environ:
                _message_alone(exc)
            raise
        # A management command is loading its settings: let it start and report.
        _deferred.append(exc)
        return {alias: {"ENGINE": MISCONFIGURED_ENGINE} for alias in ("default", readonly_alias)}


def _databases(environ: Mapping[str, str], readonly_alias: str) -> dict[str, dict[str, Any]]:
    if not readonly_alias or readonly_alias == "default":
        raise ConfigurationError(
            [f"readonly_alias={readonly_alias!r}: choose a non-empty alias other than 'default'"],
            source="arguments",
        )
    env = _EnvReader(environ)

    def primary(name: str) -> str:
        return env.get(name) or PRIMARY_DEFAULTS[name]

    server = primary("SERVER")
    hosts = env.hosts("SERVER", server)
    port_raw = primary("PORT")
    ports = env.ports("PORT", port_raw)
    user = primary("USER")
    password = env.get("PASSWORD") or PRIMARY_DEFAULTS["PASSWORD"]
    db = env.dbname("DB", primary("DB"))
    params = env.params("PARAMS", primary("PARAMS"))
    if hosts and ports and len(ports) > 1 and len(ports) != len(hosts):
        env.problems.append(
            f"{ENV_PREFIX}PORT={port_raw!r} lists {len(ports)} ports but "
            f"{ENV_PREFIX}SERVER={server!r} lists {len(hosts)} hosts: give one port, "
            "or one port per host"
        )

    ro_server = env.get("READONLY_SERVER")
    replica_configured = ro_server is not None
    ro_hosts = env.hosts("READONLY_SERVER", ro_server) if ro_server is not None else hosts
    ro_port_raw = env.get("READONLY_PORT")
    ro_ports = env.ports("READONLY_PORT", ro_port_raw) if ro_port_raw is not None else ports
    ro_user = env.get("READONLY_USER") or user
    ro_password = env.get("READONLY_PASSWORD") or password
    ro_db_raw = env.get("READONLY_DB")
    ro_db = env.dbname("READONLY_DB", ro_db_raw) if ro_db_raw is not None else db
    ro_params_raw = env.get("READONLY_PARAMS")
    ro_params = (
        env.params("READONLY_PARAMS", ro_params_raw) if ro_params_raw is not None else params
    )
    if ro_hosts and ro_ports and len(ro_ports) > 1 and len(ro_ports) != len(ro_hosts):
        source = "READONLY_PORT" if ro_port_raw is not None else "PORT (inherited)"
        env.problems.append(
            f"{ENV_PREFIX}{source} lists {len(ro_ports)} ports but the read-only alias has "
            f"{len(ro_hosts)} hosts ({ENV_PREFIX}READONLY_SERVER"
            f"{'' if ro_server is not None else ' unset, so SERVER'}): give one port, "
            "or one port per host"
        )

    pool: PoolSettings | None = None
    try:
        pool = PoolSettings.from_env(environ)
    except ConfigurationError as exc:
        env.problems.extend(exc.problems)
    _check_unknown_pool_variables(environ, env.problems)

    if env.problems:
        raise ConfigurationError(env.problems, source="environment")
    assert hosts is not None and ports is not None and db is not None and params is not None
    assert ro_hosts is not None and ro_ports is not None and ro_db is not None
    assert ro_params is not None and pool is not None

    pool = dataclasses.replace(pool, replica_configured=replica_configured)
    if "connect_timeout" in ro_params and POOL_ENV_PREFIX + "CONNECT_TIMEOUT" not in environ:
        # A connect_timeout given as a libpq parameter becomes the pool's value.
        try:
            pool = dataclasses.replace(pool, connect_timeout=max(2, int(ro_params["connect_timeout"])))
        except (TypeError, ValueError):
            raise ConfigurationError(
                [f"connect_timeout={ro_params['connect_timeout']!r} in the read-only "
                 "PARAMS must be an integer number of seconds"],
                source="environment",
            ) from None
    ro_params = {k: v for k, v in ro_params.items() if k != "connect_timeout"}

    return {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "HOST": ",".join(hosts),
            "PORT": ",".join(ports),
            "NAME": db,
            "USER": user,
            "PASSWORD": password,
            "OPTIONS": dict(params),
        },
        readonly_alias: {
            "ENGINE": ENGINE,
            "HOST": ",".join(ro_hosts),
            "PORT": ",".join(ro_ports),
            "NAME": ro_db,
            "USER": ro_user,
            "PASSWORD": ro_password,
            "OPTIONS": {**ro_params, OPTIONS_KEY: pool.as_options()},
            "CONN_MAX_AGE": 0,
            "TEST": {"MIRROR": "default"},
        },
    }

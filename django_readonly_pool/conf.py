"""Configuration: ``FIDES__DATABASE__*`` variables and ``DATABASES`` options.

Everything the package reads from the outside is parsed here, once, into frozen
objects:

* :func:`databases_from_env` turns the reference guide's environment variables
  into a ``DATABASES`` dict for ``settings.py``;
* :class:`PoolSettings` is the parsed form of ``DATABASES[alias]["OPTIONS"]
  ["readonly_pool"]``; the backend builds it when a pool alias is first used;
* :class:`ConnectionTarget` describes a server for messages (password masked).

Precedence, highest first: what ``settings.DATABASES`` says (a value you write
in ``settings.py``, including edits to the dict :func:`databases_from_env`
returned), then the ``FIDES__DATABASE__*`` environment, then the defaults.

Parsing is strict and collects every problem before raising one
:class:`~django_readonly_pool.errors.ConfigurationError` that names each
variable, its value (secrets masked) and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import sys
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final, Literal

from django.conf import settings as django_settings

from .errors import ConfigurationError, ConfigurationWarning

__all__ = [
    "ENGINE",
    "ENV_PREFIX",
    "OPTIONS_KEY",
    "POOL_ENV_PREFIX",
    "POOL_FIELDS",
    "AppSettings",
    "ConnectionTarget",
    "PoolSettings",
    "app_settings",
    "databases_from_env",
    "mask",
]

ENGINE: Final = "django_readonly_pool.backend"
ENV_PREFIX: Final = "FIDES__DATABASE__"
POOL_ENV_PREFIX: Final = ENV_PREFIX + "ASYNC_READONLY_DATABASE_"
OPTIONS_KEY: Final = "readonly_pool"
MASK: Final = "********"

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
    "host": "SERVER",
    "port": "PORT",
    "user": "USER",
    "password": "PASSWORD",
    "dbname": "DB",
}



@lru_cache(maxsize=1)
def _libpq_options() -> dict[str, bytes]:
    """libpq's connection keywords and their display class (b"*" secret, b"D" debug)."""
    from psycopg import pq

    return {o.keyword.decode(): o.dispchar for o in pq.Conninfo.get_defaults()}


def _libpq_keywords() -> frozenset[str]:
    return frozenset(_libpq_options())


# libpq keywords whose values are secrets (masked in every message), from
# libpq itself: its "password" and "debug" classes.
SECRET_KEYS: Final = frozenset(k for k, dispchar in _libpq_options().items() if dispchar in (b"*", b"D"))


def refused_keyword(key: str) -> str | None:
    """Why the libpq parameter *key* may not be configured, or None.

    libpq reports every parameter but ``password`` back through
    ``conn.info.dsn`` and ``conn.info.get_parameters()``, which psycopg
    documents as password-free and which get logged: any other secret (or a
    debug option, some of which are as good as the password) would leak there.
    """
    dispchar = _libpq_options().get(key)
    if dispchar == b"*":
        hint = ("use a client key without a passphrase, readable only by the application (chmod 600)"
                if key == "sslpassword" else "give the credential another way (a file, the password)")
        return (f"{key!r} is refused: libpq reports it back through conn.info.dsn and "
                f"conn.info.get_parameters() (documented as password-free, and often logged), "
                f"so it would leak; {hint}")
    if dispchar == b"D":
        return (f"{key!r} is refused: it is a libpq debug option, and libpq reports it back "
                "through conn.info.dsn, where some (derived keys) are as good as the password")
    return None
_MAX_IDENTIFIER_BYTES: Final = 63  # PostgreSQL's NAMEDATALEN - 1


def mask(value: object) -> str:
    """The masked form of a secret, as shown in every message."""
    return MASK if value else "(empty)"


# --------------------------------------------------------------------------- #
# Pool settings
# --------------------------------------------------------------------------- #

Kind = Literal["bool", "int", "float"]


@dataclass(frozen=True, slots=True)
class PoolField:
    """One pool setting: its ``OPTIONS`` key, variable, type, default and bounds."""

    key: str
    kind: Kind
    default: bool | int | float
    effect: str
    minimum: float | None = None
    maximum: float | None = None
    reference: bool = False  # defined by the reference guide (else an extension)
    unit: str = ""

    @property
    def env(self) -> str:
        return POOL_ENV_PREFIX + self.key.upper()

    def allowed(self) -> str:
        if self.kind == "bool":
            return "a boolean: true/false, 1/0, yes/no or on/off (any case)"
        noun = "an integer" if self.kind == "int" else "a number"
        unit = f" {self.unit}" if self.unit else ""
        if self.maximum is None:
            return f"{noun} >= {_fmt(self.minimum)}{unit}"
        return f"{noun} from {_fmt(self.minimum)} to {_fmt(self.maximum)}{unit}"


def _fmt(value: float | None) -> str:
    if value is None:
        return "?"
    return str(int(value)) if float(value).is_integer() else str(value)


POOL_FIELDS: Final[tuple[PoolField, ...]] = (
    PoolField(
        "pool_size", "int", 5, "Connections kept open in the pool (psycopg_pool min_size).",
        minimum=1, maximum=10_000, reference=True,
    ),
    PoolField(
        "max_overflow", "int", 10,
        "Extra connections opened under a burst, closed again once idle for "
        "OVERFLOW_IDLE_TIMEOUT; max_size = POOL_SIZE + MAX_OVERFLOW. -1 (unlimited) is refused.",
        minimum=0, maximum=10_000, reference=True,
    ),
    PoolField(
        "prewarm", "bool", False,
        "Open and verify all POOL_SIZE connections, in parallel, before the first "
        "query is served; startup fails if that takes longer than PREWARM_TIMEOUT.",
        reference=True,
    ),
    PoolField(
        "pool_skip_rollback", "bool", False,
        "Send nothing when a connection is returned. When false, each returned connection "
        "is reset (RESET ALL, then Django's session settings again) in one round trip. "
        "An open transaction is always rolled back, whatever this says.",
        reference=True,
    ),
    PoolField(
        "autocommit", "bool", False,
        "Pool connections run in autocommit: no BEGIN/ROLLBACK around each read.",
        reference=True,
    ),
    PoolField(
        "pre_ping", "bool", True,
        "Check a connection before handing it out, unless it was used less than "
        "PRE_PING_INTERVAL ago; the first dead one found flushes the idle ones.",
        reference=True,
    ),
    PoolField(
        "checkout_timeout", "float", 30.0,
        "Longest wait for a free connection before a clear PoolExhausted error.",
        minimum=0.001, maximum=3600, unit="seconds",
    ),
    PoolField(
        "prewarm_timeout", "float", 30.0,
        "Deadline for PREWARM; past it startup fails naming the server and the cause.",
        minimum=0.001, maximum=3600, unit="seconds",
    ),
    PoolField(
        "connect_timeout", "int", 10,
        "libpq connect_timeout for every connection attempt (also background reconnects).",
        minimum=2, maximum=3600, unit="seconds",
    ),
    PoolField(
        "max_lifetime", "float", 3600.0,
        "Connections older than this are replaced (with 5% jitter) when returned.",
        minimum=1, maximum=7 * 86_400, unit="seconds",
    ),
    PoolField(
        "overflow_idle_timeout", "float", 2.0,
        "Overflow connections idle this long are closed (0: closed as soon as returned).",
        minimum=0, maximum=86_400, unit="seconds",
    ),
    PoolField(
        "pre_ping_interval", "float", 0.5,
        "A connection used this recently is handed out without a ping (0: always ping).",
        minimum=0, maximum=3600, unit="seconds",
    ),
    PoolField(
        "check_timeout", "float", 5.0,
        "Bound on one pre-ping; a connection that does not answer in time is discarded.",
        minimum=0.001, maximum=3600, unit="seconds",
    ),
    PoolField(
        "query_timeout", "float", 0.0,
        "Client-side bound on one statement of the async path (0: none). Past it the "
        "connection is closed and QueryTimeout is raised; protects against frozen networks.",
        minimum=0, maximum=86_400, unit="seconds",
    ),
)
_FIELDS_BY_KEY: Final = {f.key: f for f in POOL_FIELDS}
# Not a tunable: recorded by databases_from_env when READONLY_SERVER is unset.
_REPLICA_KEY: Final = "replica_configured"


@dataclass(frozen=True, slots=True)
class PoolSettings:
    """Parsed pool settings of one alias (``OPTIONS["readonly_pool"]``)."""

    pool_size: int = 5
    max_overflow: int = 10
    prewarm: bool = False
    pool_skip_rollback: bool = False
    autocommit: bool = False
    pre_ping: bool = True
    checkout_timeout: float = 30.0
    prewarm_timeout: float = 30.0
    connect_timeout: int = 10
    max_lifetime: float = 3600.0
    overflow_idle_timeout: float = 2.0
    pre_ping_interval: float = 0.5
    check_timeout: float = 5.0
    query_timeout: float = 0.0
    replica_configured: bool = True

    @property
    def max_size(self) -> int:
        return self.pool_size + self.max_overflow

    def as_options(self) -> dict[str, Any]:
        """The ``OPTIONS["readonly_pool"]`` dict that parses back to ``self``."""
        return dataclasses.asdict(self)

    @classmethod
    def from_options(
        cls,
        options: Mapping[str, Any] | None,
        *,
        alias: str,
        environ: Mapping[str, str] | None = None,
    ) -> PoolSettings:
        """Parse ``DATABASES[alias]["OPTIONS"]["readonly_pool"]``.

        Keys present in *options* win; a missing key takes its
        ``FIDES__DATABASE__ASYNC_READONLY_DATABASE_*`` variable from *environ*
        (``os.environ`` by default), else its default.
        """
        environ = os.environ if environ is None else environ
        problems: list[str] = []
        where = f"DATABASES[{alias!r}]['OPTIONS'][{OPTIONS_KEY!r}]"
        options = {} if options is None else options
        if not isinstance(options, Mapping):
            raise ConfigurationError(
                [f"{where} must be a dict, not {type(options).__name__}"], source="settings"
            )
        known = set(_FIELDS_BY_KEY) | {_REPLICA_KEY}
        for key in options:
            if key not in known:
                problems.append(
                    f"{where}[{key!r}] is not a setting of django-readonly-pool"
                    + _suggest(str(key), known)
                )
        values: dict[str, Any] = {}
        for field in POOL_FIELDS:
            if field.key in options:
                raw = options[field.key]
                value = _parse_setting(field, raw, f"{where}[{field.key!r}]", problems)
            else:
                value = _pool_value_from_env(field, environ, problems)
            if value is not None:
                values[field.key] = value
        replica = options.get(_REPLICA_KEY, True)
        if not isinstance(replica, bool):
            problems.append(f"{where}[{_REPLICA_KEY!r}] must be True or False, not {replica!r}")
        else:
            values[_REPLICA_KEY] = replica
        if problems:
            raise ConfigurationError(problems, source="settings")
        return cls(**values)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> PoolSettings:
        """Parse only the environment (defaults for unset variables)."""
        environ = os.environ if environ is None else environ
        problems: list[str] = []
        values: dict[str, Any] = {}
        for field in POOL_FIELDS:
            value = _pool_value_from_env(field, environ, problems)
            if value is not None:
                values[field.key] = value
        if problems:
            raise ConfigurationError(problems, source="environment")
        return cls(**values)


def _pool_value_from_env(
    field: PoolField, environ: Mapping[str, str], problems: list[str]
) -> bool | int | float | None:
    raw = environ.get(field.env)
    if raw is None or raw.strip() == "":
        return field.default
    return _parse_setting(field, raw, field.env, problems)


_BOOL_WORDS: Final = {
    "true": True, "1": True, "yes": True, "on": True,
    "false": False, "0": False, "no": False, "off": False,
}
_INT_RE: Final = re.compile(r"[+-]?[0-9]+", re.ASCII)
_FLOAT_RE: Final = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)", re.ASCII)


def _parse_setting(
    field: PoolField, raw: object, name: str, problems: list[str]
) -> bool | int | float | None:
    """Parse *raw* (a string from the environment or a Python value from settings)."""
    value: bool | int | float
    if field.kind == "bool":
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.strip().lower() in _BOOL_WORDS:
            return _BOOL_WORDS[raw.strip().lower()]
        problems.append(f"{name}={_show(raw)} is not valid: expected {field.allowed()}")
        return None
    if isinstance(raw, bool):  # bool is an int subclass: refuse True as 1
        problems.append(f"{name}={_show(raw)} is not valid: expected {field.allowed()}")
        return None
    if field.kind == "int":
        if isinstance(raw, int):
            value = raw
        elif isinstance(raw, str) and _INT_RE.fullmatch(raw.strip()):
            value = int(raw.strip())
        else:
            problems.append(f"{name}={_show(raw)} is not valid: expected {field.allowed()}")
            return None
    elif isinstance(raw, (int, float)) and math.isfinite(raw):
        value = float(raw)
    elif isinstance(raw, str) and _FLOAT_RE.fullmatch(raw.strip()):
        value = float(raw.strip())
    else:
        problems.append(f"{name}={_show(raw)} is not valid: expected {field.allowed()}")
        return None
    if field.key == "max_overflow" and value == -1:
        problems.append(
            f"{name}=-1 is refused: in SQLAlchemy -1 means 'no limit on overflow', and an "
            "unbounded pool can take every connection the server allows (max_connections). "
            f"Give the largest number of extra connections you can afford instead, {field.allowed()}"
        )
        return None
    if (field.minimum is not None and value < field.minimum) or (
        field.maximum is not None and value > field.maximum
    ):
        problems.append(f"{name}={_show(raw)} is out of range: expected {field.allowed()}")
        return None
    return value


def _show(raw: object, limit: int = 80) -> str:
    text = repr(raw)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# --------------------------------------------------------------------------- #
# Connection targets
# --------------------------------------------------------------------------- #


@dataclass(frozen=True, slots=True)
class ConnectionTarget:
    """Where an alias connects. ``repr`` and :meth:`describe` mask the password."""

    host: str
    port: str
    dbname: str
    user: str
    password: str = dataclasses.field(repr=False, default="")
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __repr__(self) -> str:
        return (
            f"ConnectionTarget(host={self.host!r}, port={self.port!r}, "
            f"dbname={self.dbname!r}, user={self.user!r}, password={mask(self.password)!r}, "
            f"params={masked_params(self.params)!r})"
        )

    def describe(self) -> str:
        """``host:port/dbname as user``; multi-host lists are paired up."""
        hosts = self.host.split(",") if self.host else ["(local socket)"]
        ports = self.port.split(",") if self.port else [""]
        if len(ports) == 1:
            ports = ports * len(hosts)
        pairs = ",".join(f"{h}:{p}" if p else h for h, p in zip(hosts, ports, strict=False))
        return f"{pairs}/{self.dbname} as {self.user or '(default user)'}"

    @classmethod
    def from_settings(cls, settings_dict: Mapping[str, Any]) -> ConnectionTarget:
        options = settings_dict.get("OPTIONS") or {}
        params = {k: v for k, v in options.items() if k != OPTIONS_KEY}
        return cls(
            host=str(settings_dict.get("HOST") or ""),
            port=str(settings_dict.get("PORT") or ""),
            dbname=str(settings_dict.get("NAME") or ""),
            user=str(settings_dict.get("USER") or ""),
            password=str(settings_dict.get("PASSWORD") or ""),
            params=params,
        )


def masked_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """*params* with the values of secret libpq keywords masked."""
    return {k: (mask(v) if k in SECRET_KEYS else v) for k, v in params.items()}


# --------------------------------------------------------------------------- #
# databases_from_env
# --------------------------------------------------------------------------- #


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
        shown = mask(raw) if secret else _show(raw)
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
            if not (_INT_RE.fullmatch(port) and 1 <= int(port) <= 65535):
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
            shown = "(masked: it mentions a secret)" if secretish else _show(raw)
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
        keywords = _libpq_keywords()
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
                    + _suggest(key, keywords)
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
                + _suggest(name, known)
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


# --------------------------------------------------------------------------- #
# The READONLY_POOL Django setting (routing and integration)
# --------------------------------------------------------------------------- #

SETTING_NAME: Final = "READONLY_POOL"


@dataclass(frozen=True, slots=True)
class AppSettings:
    """Parsed ``settings.READONLY_POOL`` (every key optional).

    ``ASYNC_ORM``: run Django's async QuerySet reads on pool aliases through the
    bridge (default True; False keeps Django's ``sync_to_async`` everywhere).
    ``PRIMARY``: the alias that takes writes and pinned reads ("default").
    ``READONLY_ALIASES``: the aliases the router sends reads to (default: every
    alias whose ENGINE is ``django_readonly_pool.backend``; several are used
    round-robin).
    ``PIN_AFTER_WRITE``: after a write, the rest of the request or task reads
    from the primary (True).
    ``STICKY_SECONDS``: the middleware pins a client to the primary for this
    long after an unsafe request (15.0; 0 turns the cookie off).
    ``STICKY_COOKIE``: the name of that cookie ("readonly_pool_pin").
    ``FALLBACK``: when the replica is down or too far behind: "primary" (reads
    go to the primary) or "fail" (reads fail fast with ReplicaUnavailable).
    ``HEALTH_CHECK_INTERVAL``: seconds between replica health probes (1.0).
    ``MAX_LAG_SECONDS`` / ``MAX_LAG_BYTES``: replica lag beyond which reads go
    to the primary (None: not checked).
    ``TESTS_READ_PRIMARY``: while Django's test runner has set the alias up as a
    test mirror, reads go to the mirrored alias, so tests see their own
    uncommitted data (True).
    ``SKIP_REQUEST_THREAD_HOP``: under ASGI, close sync connections at the end
    of a request only when the request opened one, instead of hopping to a
    thread for every request (True).
    ``FAST_LANE``: cache the compiled SQL of ``aget(**kwargs)`` on untouched
    querysets per query shape (True); see django_readonly_pool.fastlane.
    ``HEALTH_DETAILS``: who gets the per-alias details of the health view:
    "staff" (active staff users, the default), "always" or "never".
    """

    async_orm: bool = True
    primary: str = "default"
    readonly_aliases: tuple[str, ...] | None = None
    pin_after_write: bool = True
    sticky_seconds: float = 15.0
    sticky_cookie: str = "readonly_pool_pin"
    fallback: str = "primary"
    health_check_interval: float = 1.0
    max_lag_seconds: float | None = None
    max_lag_bytes: int | None = None
    tests_read_primary: bool = True
    skip_request_thread_hop: bool = True
    fast_lane: bool = True
    health_details: str = "staff"

    @classmethod
    def from_setting(cls, value: Any) -> AppSettings:
        if value is None:
            return cls()
        if not isinstance(value, Mapping):
            raise ConfigurationError(
                [f"settings.{SETTING_NAME} must be a dict, not {type(value).__name__}"],
                source="settings",
            )
        problems: list[str] = []
        fields = {f.name.upper(): f.name for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, raw in value.items():
            name = fields.get(str(key))
            where = f"settings.{SETTING_NAME}[{key!r}]"
            if key in REMOVED_SETTINGS:
                problems.append(f"{where} was removed: {REMOVED_SETTINGS[key]}; delete the key")
                continue
            if name is None:
                problems.append(f"{where} is not a setting of django-readonly-pool"
                                + _suggest(str(key), fields))
                continue
            checked = _check_app_value(name, raw, where, problems)
            if checked is not _INVALID:
                values[name] = checked
        if problems:
            raise ConfigurationError(problems, source="settings")
        return cls(**values)


_INVALID: Final = object()
REMOVED_SETTINGS: Final = {
    "REUSE_SCRAM_KEYS": "the SCRAM keys it derived were reported by libpq through conn.info.dsn and "
                        "could log in as the role; every login now goes through libpq with the password",
}


def _check_app_value(name: str, raw: Any, where: str, problems: list[str]) -> Any:
    def bad(expected: str) -> object:
        problems.append(f"{where}={raw!r} is not valid: expected {expected}")
        return _INVALID

    if name in ("async_orm", "pin_after_write", "tests_read_primary", "skip_request_thread_hop", "fast_lane"):
        return raw if isinstance(raw, bool) else bad("True or False")
    if name in ("primary", "sticky_cookie"):
        return raw if isinstance(raw, str) and raw else bad("a non-empty string")
    if name == "readonly_aliases":
        if raw is None:
            return None
        if isinstance(raw, (list, tuple)) and raw and all(isinstance(a, str) and a for a in raw):
            return tuple(raw)
        return bad("a non-empty list of aliases, or None")
    if name == "fallback":
        return raw if raw in ("primary", "fail") else bad("'primary' or 'fail'")
    if name == "health_details":
        return raw if raw in ("staff", "always", "never") else bad("'staff', 'always' or 'never'")
    if name in ("sticky_seconds", "health_check_interval"):
        minimum = 0.0 if name == "sticky_seconds" else 0.05
        if isinstance(raw, (int, float)) and not isinstance(raw, bool) and math.isfinite(raw) \
                and minimum <= raw <= 86_400:
            return float(raw)
        return bad(f"a number of seconds from {minimum:g} to 86400")
    if name == "max_lag_seconds":
        if raw is None:
            return None
        if isinstance(raw, (int, float)) and not isinstance(raw, bool) and math.isfinite(raw) and raw > 0:
            return float(raw)
        return bad("a positive number of seconds, or None")
    if name == "max_lag_bytes":
        if raw is None:
            return None
        if isinstance(raw, int) and not isinstance(raw, bool) and raw > 0:
            return raw
        return bad("a positive number of bytes, or None")
    raise AssertionError(name)  # pragma: no cover


_app_settings: AppSettings | None = None


def app_settings() -> AppSettings:
    """The parsed ``settings.READONLY_POOL`` (cached; reset when it changes)."""
    global _app_settings
    if _app_settings is None:
        _app_settings = AppSettings.from_setting(getattr(django_settings, SETTING_NAME, None))
    return _app_settings


def reset_app_settings(**kwargs: Any) -> None:
    """``setting_changed`` receiver: forget the cached settings."""
    global _app_settings
    if kwargs.get("setting") in (None, SETTING_NAME, "DATABASES", "DATABASE_ROUTERS"):
        _app_settings = None

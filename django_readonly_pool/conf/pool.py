"""The pool settings of one alias: their table (defaults written once) and their parser.

:class:`PoolSettings` is the parsed form of ``DATABASES[alias]["OPTIONS"]["readonly_pool"]``;
each of its fields carries the setting's description, bounds and unit, from
which :data:`POOL_FIELDS` (the environment variables, the README's table, the
error messages) is derived. An explicit ``OPTIONS`` value beats the
``FIDES__DATABASE__ASYNC_READONLY_DATABASE_*`` variable, which beats the default.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from django_readonly_pool.errors import ConfigurationError

from .base import OPTIONS_KEY, POOL_ENV_PREFIX, show, suggest

__all__ = ["POOL_FIELDS", "PoolField", "PoolSettings"]

Kind = Literal["bool", "int", "float"]


def _setting(default: bool | float, effect: str, *, minimum: float | None = None,
             maximum: float | None = None, reference: bool = False, unit: str = "") -> Any:
    """A field of :class:`PoolSettings` that is a setting (a variable, a row of the table)."""
    return dataclasses.field(default=default, metadata={
        "effect": effect, "minimum": minimum, "maximum": maximum, "reference": reference, "unit": unit})


@dataclass(frozen=True, slots=True)
class PoolSettings:
    """Parsed pool settings of one alias (``OPTIONS["readonly_pool"]``)."""

    pool_size: int = _setting(
        5, "Connections kept open in the pool (psycopg_pool min_size).",
        minimum=1, maximum=10_000, reference=True)
    max_overflow: int = _setting(
        10, "Extra connections opened under a burst, closed again once idle for "
        "OVERFLOW_IDLE_TIMEOUT; max_size = POOL_SIZE + MAX_OVERFLOW. -1 (unlimited) is refused.",
        minimum=0, maximum=10_000, reference=True)
    prewarm: bool = _setting(
        False, "Open and verify all POOL_SIZE connections, in parallel, before the first "
        "query is served; startup fails if that takes longer than PREWARM_TIMEOUT.", reference=True)
    pool_skip_rollback: bool = _setting(
        False, "Send nothing when a connection is returned. When false, each returned connection "
        "is cleared completely (what DISCARD ALL does) and configured again, in one round trip. "
        "An open transaction is always rolled back, whatever this says.", reference=True)
    autocommit: bool = _setting(
        False, "Pool connections run in autocommit: no BEGIN/ROLLBACK around each read.", reference=True)
    pre_ping: bool = _setting(
        True, "Check a connection before handing it out, unless it was used less than "
        "PRE_PING_INTERVAL ago; the first dead one found flushes the idle ones.", reference=True)
    checkout_timeout: float = _setting(
        30.0, "Longest wait for a free connection before a clear PoolExhausted error.",
        minimum=0.001, maximum=3600, unit="seconds")
    prewarm_timeout: float = _setting(
        30.0, "Deadline for PREWARM; past it startup fails naming the server and the cause.",
        minimum=0.001, maximum=3600, unit="seconds")
    connect_timeout: int = _setting(
        10, "libpq connect_timeout for every connection attempt (also background reconnects).",
        minimum=2, maximum=3600, unit="seconds")
    max_lifetime: float = _setting(
        3600.0, "Connections older than this are replaced (with 5% jitter) when returned.",
        minimum=1, maximum=7 * 86_400, unit="seconds")
    overflow_idle_timeout: float = _setting(
        2.0, "Overflow connections idle this long are closed (0: closed as soon as returned).",
        minimum=0, maximum=86_400, unit="seconds")
    pre_ping_interval: float = _setting(
        0.5, "A connection used this recently is handed out without a ping (0: always ping).",
        minimum=0, maximum=3600, unit="seconds")
    check_timeout: float = _setting(
        5.0, "Bound on one pre-ping and on the health probe; a connection or replica that does not "
        "answer in time is discarded or marked down.", minimum=0.001, maximum=3600, unit="seconds")
    query_timeout: float = _setting(
        0.0, "Client-side bound on one statement of the async path (0: none). Past it the "
        "connection is closed and QueryTimeout is raised.", minimum=0, maximum=86_400, unit="seconds")
    # Not a tunable: recorded by databases_from_env when READONLY_SERVER is unset.
    replica_configured: bool = True

    @property
    def max_size(self) -> int:
        return self.pool_size + self.max_overflow

    def as_options(self) -> dict[str, Any]:
        """The ``OPTIONS["readonly_pool"]`` dict that parses back to ``self``."""
        return dataclasses.asdict(self)

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | None, *, alias: str,
                     environ: Mapping[str, str] | None = None) -> PoolSettings:
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
            raise ConfigurationError([f"{where} must be a dict, not {type(options).__name__}"], source="settings")
        known = {f.key for f in POOL_FIELDS} | {_REPLICA_KEY}
        for key in options:
            if key not in known:
                problems.append(f"{where}[{key!r}] is not a setting of django-readonly-pool"
                                + suggest(str(key), known))
        values: dict[str, Any] = {}
        for field in POOL_FIELDS:
            if field.key in options:
                value = field.parse(options[field.key], f"{where}[{field.key!r}]", problems)
            else:
                value = field.from_env(environ, problems)
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
            value = field.from_env(environ, problems)
            if value is not None:
                values[field.key] = value
        if problems:
            raise ConfigurationError(problems, source="environment")
        return cls(**values)


_REPLICA_KEY: Final = "replica_configured"
_BOOL_WORDS: Final = {
    "true": True, "1": True, "yes": True, "on": True,
    "false": False, "0": False, "no": False, "off": False,
}
INT_RE: Final = re.compile(r"[+-]?[0-9]+", re.ASCII)
_FLOAT_RE: Final = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)", re.ASCII)


@dataclass(frozen=True, slots=True)
class PoolField:
    """One pool setting, as its field of :class:`PoolSettings` describes it."""

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

    def from_env(self, environ: Mapping[str, str], problems: list[str]) -> bool | int | float | None:
        raw = environ.get(self.env)
        if raw is None or raw.strip() == "":
            return self.default
        return self.parse(raw, self.env, problems)

    def parse(self, raw: object, name: str, problems: list[str]) -> bool | int | float | None:
        """Parse *raw* (a string from the environment or a Python value from settings)."""
        value: bool | int | float
        if self.kind == "bool":
            if isinstance(raw, bool):
                return raw
            if isinstance(raw, str) and raw.strip().lower() in _BOOL_WORDS:
                return _BOOL_WORDS[raw.strip().lower()]
            problems.append(f"{name}={show(raw)} is not valid: expected {self.allowed()}")
            return None
        if isinstance(raw, bool):  # bool is an int subclass: refuse True as 1
            problems.append(f"{name}={show(raw)} is not valid: expected {self.allowed()}")
            return None
        if self.kind == "int":
            if isinstance(raw, int):
                value = raw
            elif isinstance(raw, str) and INT_RE.fullmatch(raw.strip()):
                value = int(raw.strip())
            else:
                problems.append(f"{name}={show(raw)} is not valid: expected {self.allowed()}")
                return None
        elif isinstance(raw, (int, float)) and math.isfinite(raw):
            value = float(raw)
        elif isinstance(raw, str) and _FLOAT_RE.fullmatch(raw.strip()):
            value = float(raw.strip())
        else:
            problems.append(f"{name}={show(raw)} is not valid: expected {self.allowed()}")
            return None
        if self.key == "max_overflow" and value == -1:
            problems.append(
                f"{name}=-1 is refused: in SQLAlchemy -1 means 'no limit on overflow', and an "
                "unbounded pool can take every connection the server allows (max_connections). "
                f"Give the largest number of extra connections you can afford instead, {self.allowed()}"
            )
            return None
        if (self.minimum is not None and value < self.minimum) or (
                self.maximum is not None and value > self.maximum):
            problems.append(f"{name}={show(raw)} is out of range: expected {self.allowed()}")
            return None
        return value


def _fmt(value: float | None) -> str:
    if value is None:
        return "?"
    return str(int(value)) if float(value).is_integer() else str(value)


POOL_FIELDS: Final[tuple[PoolField, ...]] = tuple(
    PoolField(f.name, f.type, f.default, **f.metadata)  # type: ignore[arg-type]
    for f in dataclasses.fields(PoolSettings) if f.metadata
)

"""Names, masking, and libpq's keyword classes: what every other part of the configuration uses."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any, Final

from psycopg import pq

__all__ = [
    "ENGINE",
    "ENV_PREFIX",
    "MASK",
    "OPTIONS_KEY",
    "POOL_ENV_PREFIX",
    "SECRET_KEYS",
    "libpq_keywords",
    "mask",
    "masked_params",
    "refused_keyword",
    "scrub",
    "show",
    "suggest",
]

ENGINE: Final = "django_readonly_pool.backend"
ENV_PREFIX: Final = "FIDES__DATABASE__"
POOL_ENV_PREFIX: Final = ENV_PREFIX + "ASYNC_READONLY_DATABASE_"
OPTIONS_KEY: Final = "readonly_pool"
MASK: Final = "********"


@lru_cache(maxsize=1)
def _libpq_options() -> dict[str, bytes]:
    """libpq's connection keywords and their display class (b"*" secret, b"D" debug)."""
    return {o.keyword.decode(): o.dispchar for o in pq.Conninfo.get_defaults()}


def libpq_keywords() -> frozenset[str]:
    return frozenset(_libpq_options())


# libpq keywords whose values are secrets (masked in every message), from libpq
# itself: its "password" and "debug" classes.
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


def mask(value: object) -> str:
    """The masked form of a secret, as shown in every message."""
    return MASK if value else "(empty)"


def masked_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """*params* with the values of secret libpq keywords masked."""
    return {k: (mask(v) if k in SECRET_KEYS else v) for k, v in params.items()}


def scrub(text: str, secrets: Iterable[object]) -> str:
    """*text* with every (non-empty) secret replaced by the mask."""
    for secret in secrets:
        if secret:
            text = text.replace(str(secret), MASK)
    return text


def show(raw: object, limit: int = 80) -> str:
    """*raw* as a message shows a value (repr, shortened)."""
    text = repr(raw)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def suggest(word: str, choices: Iterable[str], cutoff: float = 0.6) -> str:
    """`` (did you mean 'x'?)`` for the closest of *choices*, or ''."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=cutoff)
    return f" (did you mean {close[0]!r}?)" if close else ""

"""SCRAM keys derived once per pool, so new connections skip the password hashing.

A SCRAM-SHA-256 login makes the client run PBKDF2 over the password (4,096
HMAC rounds by default): about 3 ms of CPU per connection in libpq, more than
the server spends forking the backend. The result only depends on the password
and the role's salt and iteration count, which stay the same until the password
is set again. libpq 18 accepts the two derived keys as connection parameters
(``scram_client_key``, ``scram_server_key``) and then skips the hashing.

:func:`derive_keys` reads the salt with the first half of a SCRAM exchange
(as ``psql`` does before it asks for a password, this leaves nothing in the
server's log), derives the keys from the password the way libpq does
(SASLprep, PBKDF2), and proves them with one complete login that also checks
the server's signature. Every host of a multi-host list must answer with the
same salt (streaming replicas share the primary's roles); a server or pooler
that makes a new salt per login (PgBouncer with a plain-text ``auth_file``)
turns the shortcut off. The pool also drops the keys at once if a login with
them fails where the password alone succeeds (the password was set again).

The keys are as sensitive as the password: they stay in the pool's connection
parameters and are never logged or shown. Anything this module does not handle
(client certificates, ``hostaddr``, services, ``channel_binding=require``,
GSS encryption required ...) leaves the pool connecting the usual way.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import os
import secrets
import ssl
import stringprep
import struct
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

__all__ = ["ScramKeys", "derive_keys", "libpq_supports_keys", "saslprep"]

logger = logging.getLogger("django_readonly_pool")

_PROTOCOL_3_0: Final = 196_608
_SSL_REQUEST: Final = 80_877_103
_AUTH_OK: Final = 0
_AUTH_SASL: Final = 10
_AUTH_SASL_CONTINUE: Final = 11
_AUTH_SASL_FINAL: Final = 12
_MECHANISM: Final = "SCRAM-SHA-256"
_KEY_PARAMS: Final = ("scram_client_key", "scram_server_key")


class _Unsupported(Exception):
    """This connection setup is not one the probe handles; connect as usual."""


@dataclass(frozen=True)
class ScramKeys:
    """The two keys libpq takes instead of hashing the password."""

    client_key: bytes = field(repr=False)
    server_key: bytes = field(repr=False)
    salt: bytes = field(repr=False)
    iterations: int

    def params(self) -> dict[str, str]:
        return {
            "scram_client_key": base64.b64encode(self.client_key).decode(),
            "scram_server_key": base64.b64encode(self.server_key).decode(),
        }

    def __repr__(self) -> str:
        return f"ScramKeys(iterations={self.iterations}, keys=<hidden>)"


def libpq_supports_keys() -> bool:
    """True when the libpq in use takes ``scram_client_key`` (libpq 18+)."""
    from psycopg import pq

    try:
        keywords = {o.keyword for o in pq.Conninfo.get_defaults()}
    except Exception:  # noqa: BLE001 - an unusual libpq: no shortcut
        return False
    return all(k.encode() in keywords for k in _KEY_PARAMS)


# --------------------------------------------------------------------------- #
# SASLprep, as PostgreSQL applies it (src/common/saslprep.c)
# --------------------------------------------------------------------------- #


def saslprep(password: str) -> bytes:
    """The bytes libpq hashes for *password*.

    PostgreSQL's rules: an ASCII password is used as it is; otherwise RFC 4013
    (map, NFKC, prohibit, bidi); a password SASLprep refuses is used as it is.
    """
    raw = password.encode("utf-8", "surrogateescape")
    if password.isascii():
        return raw
    mapped = "".join(
        " " if stringprep.in_table_c12(ch) else ch
        for ch in password
        if not stringprep.in_table_b1(ch)
    )
    normalized = unicodedata.normalize("NFKC", mapped)
    if not normalized:
        return raw
    prohibited = (
        stringprep.in_table_c12, stringprep.in_table_c21_c22, stringprep.in_table_c3,
        stringprep.in_table_c4, stringprep.in_table_c5, stringprep.in_table_c6,
        stringprep.in_table_c7, stringprep.in_table_c8, stringprep.in_table_c9,
        stringprep.in_table_a1,
    )
    if any(test(ch) for ch in normalized for test in prohibited):
        return raw
    if any(stringprep.in_table_d1(ch) for ch in normalized) and (
        any(stringprep.in_table_d2(ch) for ch in normalized)
        or not stringprep.in_table_d1(normalized[0])
        or not stringprep.in_table_d1(normalized[-1])
    ):
        return raw
    return normalized.encode("utf-8")


def _keys_for(password: str, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
    salted = hashlib.pbkdf2_hmac("sha256", saslprep(password), salt, iterations)
    return (
        hmac.new(salted, b"Client Key", "sha256").digest(),
        hmac.new(salted, b"Server Key", "sha256").digest(),
    )


# --------------------------------------------------------------------------- #
# The probe
# --------------------------------------------------------------------------- #


def _effective_params(params: dict[str, Any]) -> dict[str, str]:
    """libpq's view: its defaults (environment included) under *params*."""
    from psycopg import pq

    out: dict[str, str] = {}
    keywords = set()
    for option in pq.Conninfo.get_defaults():
        keyword = option.keyword.decode()
        keywords.add(keyword)
        if option.compiled is not None:
            out[keyword] = option.compiled.decode()
    for key, value in params.items():
        if key in keywords and value is not None and value != "":
            out[key] = str(int(value) if isinstance(value, bool) else value)
    return out


@dataclass
class _Endpoint:
    host: str
    port: int


def _endpoints(p: dict[str, str]) -> list[_Endpoint]:
    hosts = p.get("host", "").split(",")
    ports = (p.get("port") or "5432").split(",")
    if len(ports) == 1:
        ports = ports * len(hosts)
    if len(ports) != len(hosts) or any(not h for h in hosts):
        raise _Unsupported("host list")
    return [_Endpoint(h.strip(), int(port or 5432)) for h, port in zip(hosts, ports, strict=True)]


def _check_supported(p: dict[str, str]) -> None:
    for key in ("hostaddr", "service", "sslcert", "sslkey", "sslcrl", "sslcrldir"):
        if p.get(key):
            raise _Unsupported(key)
    if p.get("channel_binding") == "require":
        raise _Unsupported("channel_binding=require")
    if p.get("gssencmode") == "require":
        raise _Unsupported("gssencmode=require")
    if p.get("sslnegotiation", "postgres") != "postgres":
        raise _Unsupported("sslnegotiation")
    if p.get("require_auth") and "scram-sha-256" not in p["require_auth"].split(","):
        raise _Unsupported("require_auth")
    if not p.get("password"):
        raise _Unsupported("no password")


def _ssl_context(p: dict[str, str], host: str) -> tuple[ssl.SSLContext | None, bool]:
    """(context or None for no TLS, whether TLS is required) for *host*, as libpq decides."""
    mode = p.get("sslmode", "prefer")
    if host.startswith("/") or mode in ("disable", "allow"):
        return None, False
    rootcert = p.get("sslrootcert") or str(Path.home() / ".postgresql" / "root.crt")
    if p.get("sslrootcert") == "system":
        mode = "verify-full"
    if mode == "require" and Path(rootcert).exists():
        mode = "verify-ca"  # libpq verifies when a root certificate is there
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if mode in ("verify-ca", "verify-full"):
        if rootcert == "system":
            context.load_default_certs()
        else:
            context.load_verify_locations(cafile=rootcert)
        context.check_hostname = mode == "verify-full"
        context.verify_mode = ssl.CERT_REQUIRED
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context, mode != "prefer"


class _Wire:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def send(self, kind: bytes, body: bytes) -> None:
        self.writer.write(kind + struct.pack("!i", len(body) + 4) + body)
        await self.writer.drain()

    async def receive(self) -> tuple[bytes, bytes]:
        header = await self.reader.readexactly(5)
        kind, length = header[:1], struct.unpack("!i", header[1:])[0]
        if not 4 <= length <= 1 << 20:
            raise _Unsupported("protocol")
        return kind, await self.reader.readexactly(length - 4)

    async def auth(self) -> tuple[int, bytes]:
        kind, body = await self.receive()
        if kind == b"E":
            raise _Unsupported("server error")  # not shown: it may name the user
        if kind != b"R" or len(body) < 4:
            raise _Unsupported("protocol")
        return struct.unpack("!i", body[:4])[0], body[4:]

    def close(self) -> None:
        self.writer.close()


async def _open(p: dict[str, str], endpoint: _Endpoint) -> _Wire:
    if endpoint.host.startswith("/"):
        path = os.path.join(endpoint.host, f".s.PGSQL.{endpoint.port}")
        reader, writer = await asyncio.open_unix_connection(path)
        return _Wire(reader, writer)
    context, required = _ssl_context(p, endpoint.host)
    reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
    wire = _Wire(reader, writer)
    try:
        if context is not None:
            writer.write(struct.pack("!ii", 8, _SSL_REQUEST))
            await writer.drain()
            answer = await reader.readexactly(1)
            if answer == b"S":
                await writer.start_tls(context, server_hostname=endpoint.host)
            elif required:
                raise _Unsupported("server refuses TLS")
    except BaseException:
        wire.close()
        raise
    return wire


async def _first_half(p: dict[str, str], endpoint: _Endpoint) -> tuple[_Wire, str, str, str, bytes, int]:
    """Start a login up to the server's first SCRAM message (salt, iterations)."""
    wire = await _open(p, endpoint)
    try:
        user = p.get("user", "")
        startup = b"user\0" + user.encode() + b"\0database\0" + (p.get("dbname") or user).encode() + b"\0\0"
        wire.writer.write(struct.pack("!ii", len(startup) + 8, _PROTOCOL_3_0) + startup)
        code, body = await wire.auth()
        if code != _AUTH_SASL or _MECHANISM.encode() not in body.split(b"\0"):
            raise _Unsupported("not SCRAM")
        nonce = base64.b64encode(secrets.token_bytes(18)).decode()
        client_first_bare = f"n=,r={nonce}"
        first = f"n,,{client_first_bare}".encode()
        await wire.send(b"p", _MECHANISM.encode() + b"\0" + struct.pack("!i", len(first)) + first)
        code, body = await wire.auth()
        if code != _AUTH_SASL_CONTINUE:
            raise _Unsupported("protocol")
        server_first = body.decode()
        attrs = dict(item.split("=", 1) for item in server_first.split(",") if "=" in item)
        if not attrs.get("r", "").startswith(nonce) or "s" not in attrs:
            raise _Unsupported("protocol")
        iterations = int(attrs.get("i", "0"))
        if iterations < 1:
            raise _Unsupported("protocol")
        return wire, client_first_bare, server_first, attrs["r"], base64.b64decode(attrs["s"]), iterations
    except BaseException:
        wire.close()
        raise


async def _login(p: dict[str, str], endpoint: _Endpoint) -> ScramKeys:
    """A complete login with derived keys: proves them (and the server's signature)."""
    wire, client_first_bare, server_first, nonce, salt, iterations = await _first_half(p, endpoint)
    try:
        client_key, server_key = _keys_for(p["password"], salt, iterations)
        final_bare = f"c=biws,r={nonce}"
        message = f"{client_first_bare},{server_first},{final_bare}".encode()
        stored_key = hashlib.sha256(client_key).digest()
        signature = hmac.new(stored_key, message, "sha256").digest()
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        await wire.send(b"p", f"{final_bare},p={base64.b64encode(proof).decode()}".encode())
        code, body = await wire.auth()
        expected = hmac.new(server_key, message, "sha256").digest()
        if code != _AUTH_SASL_FINAL or not hmac.compare_digest(
            body.decode().strip(), "v=" + base64.b64encode(expected).decode()
        ):
            raise _Unsupported("server signature")
        code, _ = await wire.auth()
        if code != _AUTH_OK:
            raise _Unsupported("protocol")
        await wire.send(b"X", b"")
        return ScramKeys(client_key, server_key, salt, iterations)
    finally:
        wire.close()


async def _salt_of(p: dict[str, str], endpoint: _Endpoint) -> tuple[bytes, int]:
    wire, _, _, _, salt, iterations = await _first_half(p, endpoint)
    wire.close()
    return salt, iterations


async def derive_keys(params: dict[str, Any], *, timeout: float) -> ScramKeys | None:
    """The SCRAM keys for *params* (libpq keywords), or None to connect as usual.

    Never raises for a server that is down or set up differently: the pool's
    own connections report such problems with libpq's messages.
    """
    try:
        async with asyncio.timeout(timeout):
            p = _effective_params(params)
            _check_supported(p)
            endpoints = _endpoints(p)
            # a fresh salt per login (a pooler without stored verifiers) is useless
            salts = set(await asyncio.gather(*(_salt_of(p, endpoint) for endpoint in endpoints)))
            keys = await _login(p, endpoints[0])
            salts.add((keys.salt, keys.iterations))
            if len(salts) != 1:
                raise _Unsupported("the salt differs between logins or hosts")
            return keys
    except _Unsupported as exc:
        logger.debug("SCRAM keys not derived (%s): connections hash the password", exc)
    except (OSError, TimeoutError, asyncio.IncompleteReadError, ssl.SSLError, ValueError) as exc:
        logger.debug("SCRAM keys not derived (%s): connections hash the password", type(exc).__name__)
    return None

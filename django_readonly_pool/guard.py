"""The read-only guard: what one ``execute()`` on a pool alias may send.

Every statement that Django's cursor wrapper sends to a pool alias (the ORM's,
raw SQL, ``cursor.execute()``, ``copy()``) passes :func:`refuse_unless_read`
first. It lexes the SQL as PostgreSQL does (strings, ``E''``/``U&''`` strings,
quoted identifiers, dollar quotes, nested block comments) and refuses, before
anything reaches the server:

* a second statement in the same string (``SELECT 1; DELETE ...``);
* anything that can write or change the server: DML anywhere (CTEs and
  ``EXPLAIN ANALYZE`` included), ``SELECT ... INTO``, row locks, ``COPY``
  other than ``TO STDOUT``, DDL, ``CALL``/``DO``, transaction control that opens
  a read-write transaction, and functions known to write (``nextval``,
  ``setval``, large objects, replication slots, ``dblink`` ...);
* anything that leaves state in the session for the next borrower of the
  connection: ``SET``/``RESET`` (``SET LOCAL`` is allowed), ``set_config()``,
  session advisory locks, ``SET ROLE``, ``LISTEN``, ``PREPARE``, ``WITH HOLD``
  cursors, ``DISCARD ALL``.

With client-side binding the parameters are spliced into the SQL, so the
template is judged with each placeholder standing for one literal, and a
placeholder inside a string, identifier or comment is refused (the statement's
structure would then depend on the values). Verdicts are cached per SQL text:
the ORM's reads cost one dictionary lookup.

This is a seat belt, not a wall: a function can write without saying so. The
wall is the server: a hot standby, or a role with
``default_transaction_read_only`` (the pool also sets it on direct sessions).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from itertools import pairwise
from typing import Any, Final

from .errors import ReadOnlyAliasError

__all__ = ["refusal", "refuse_unless_read", "statement_text", "verdict"]

_CACHE_LIMIT: Final = 4096
_PARAM: Final = "\x00"  # stands for a placeholder (a NUL never reaches PostgreSQL)

# psycopg's own placeholder syntax (psycopg._queries): %% is a percent sign,
# %s / %b / %t and %(name)s are placeholders.
_PLACEHOLDER: Final = re.compile(r"%(?:\(([^)]+)\).|.)")

_IDENT_START: Final = r"A-Za-z_\x80-\U0010ffff"
_IDENT_CHAR: Final = r"A-Za-z0-9_$\x80-\U0010ffff"


def _token_pattern(standard_strings: bool) -> re.Pattern[str]:
    plain = r"'(?:[^']|'')*'" if standard_strings else r"'(?:[^'\\]|\\.|'')*'"
    return re.compile(
        rf"""
          (?P<ws>\s+)
        | (?P<line>--[^\n\r]*)
        | (?P<block>/\*)
        | (?P<str>[eE]'(?:[^'\\]|\\.|'')*'|[uU]&'(?:[^']|'')*'|[bBxXnN]'(?:[^']|'')*'|{plain})
        | (?P<qid>(?:[uU]&)?"(?:[^"]|"")*")
        | (?P<dollar>\$(?:[{_IDENT_START}][{_IDENT_CHAR.replace('$', '')}]*)?\$)
        | (?P<pos>\$[0-9]+)
        | (?P<word>[{_IDENT_START}][{_IDENT_CHAR}]*)
        | (?P<num>(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)
        | (?P<param>{_PARAM})
        | (?P<punct>[;(),\[\]])
        | (?P<op>[^\s;(),\[\]'"$A-Za-z0-9_{_PARAM}\x80-\U0010ffff])
        """,
        re.X | re.S,
    )


_TOKENS: Final = {True: _token_pattern(True), False: _token_pattern(False)}


class _Unsafe(Exception):
    """The statement cannot be judged (unterminated quote, placeholder in a string ...)."""


def _tokens(text: str, standard_strings: bool) -> Iterator[tuple[str, str]]:
    """(kind, value) of every significant token; words upper-cased."""
    pattern = _TOKENS[standard_strings]
    pos, end = 0, len(text)
    while pos < end:
        match = pattern.match(text, pos)
        if match is None:
            raise _Unsafe(f"cannot read the SQL at character {pos} (an unterminated quote or comment?)")
        kind = match.lastgroup
        value = match.group()
        pos = match.end()
        if kind == "ws":
            continue
        if kind == "line":
            if _PARAM in value:
                raise _Unsafe("a placeholder inside a comment")
            continue
        if kind == "block":
            pos = _end_of_comment(text, pos)
            continue
        if kind == "dollar":
            close = text.find(value, pos)
            if close < 0:
                raise _Unsafe("an unterminated dollar-quoted string")
            body, pos = text[pos:close], close + len(value)
            if _PARAM in body:
                raise _Unsafe("a placeholder inside a dollar-quoted string")
            yield "str", body
            continue
        if kind in ("str", "qid") and _PARAM in value:
            raise _Unsafe("a placeholder inside a quoted string or identifier")
        if kind == "word":
            yield kind, value.upper()
        elif kind == "qid":
            yield kind, value[value.index('"') + 1:-1].replace('""', '"')
        else:
            yield kind, value  # type: ignore[misc]


def _end_of_comment(text: str, pos: int) -> int:
    """The end of a block comment opened just before *pos* (they nest)."""
    depth = 1
    while depth:
        opening, closing = text.find("/*", pos), text.find("*/", pos)
        if closing < 0:
            raise _Unsafe("an unterminated /* comment")
        if _PARAM in text[pos:closing if opening < 0 or opening > closing else opening]:
            raise _Unsafe("a placeholder inside a comment")
        if 0 <= opening < closing:
            depth, pos = depth + 1, opening + 2
        else:
            depth, pos = depth - 1, closing + 2
    return pos


# --------------------------------------------------------------------------- #
# What a statement does
# --------------------------------------------------------------------------- #

_QUERIES: Final = frozenset({"SELECT", "WITH", "VALUES", "TABLE"})
_DML: Final = frozenset({"INSERT", "UPDATE", "DELETE", "MERGE"})
_TRANSACTION_END: Final = frozenset({"COMMIT", "END", "ROLLBACK", "ABORT", "SAVEPOINT", "RELEASE"})
_HARMLESS: Final = frozenset({"SHOW", "FETCH", "MOVE", "CLOSE", "UNLISTEN", "DEALLOCATE"})
_SESSION: Final = {
    "SET": "SET changes the session for the next borrower of the connection (SET LOCAL inside "
           "a transaction is allowed)",
    "RESET": "RESET changes the session Django configured, for the next borrower of the connection",
    "LISTEN": "LISTEN leaves a listener on the pooled connection",
    "PREPARE": "PREPARE leaves a prepared statement on the pooled connection",
    "EXECUTE": "EXECUTE runs a prepared statement, which the pool never keeps",
}
_LOCKING: Final = frozenset({"UPDATE", "SHARE", "NO", "KEY"})  # FOR UPDATE / FOR SHARE / FOR NO KEY UPDATE ...
_READ_ONLY_SETTINGS: Final = frozenset({
    "TRANSACTION_READ_ONLY", "DEFAULT_TRANSACTION_READ_ONLY", "ROLE", "SESSION_AUTHORIZATION",
    "SESSION", "TRANSACTION",
})

# Functions that write, change the server, or leave session state. Best effort:
# a function of your own can do any of these without the guard seeing it.
_WRITING_FUNCTIONS: Final = frozenset({
    "nextval", "setval", "set_config", "txid_current", "pg_current_xact_id",
    "lo_create", "lo_creat", "lo_import", "lo_export", "lo_unlink", "lo_from_bytea", "lo_put",
    "lo_truncate", "lo_truncate64", "lowrite",
    "pg_advisory_lock", "pg_advisory_lock_shared", "pg_try_advisory_lock", "pg_try_advisory_lock_shared",
    "pg_notify", "pg_terminate_backend", "pg_cancel_backend", "pg_reload_conf", "pg_rotate_logfile",
    "pg_switch_wal", "pg_create_restore_point", "pg_backup_start", "pg_backup_stop", "pg_start_backup",
    "pg_stop_backup", "pg_promote", "pg_wal_replay_pause", "pg_wal_replay_resume",
    "pg_replication_slot_advance", "pg_import_system_collations", "pg_log_backend_memory_contexts",
    "pg_file_write", "pg_file_rename", "pg_file_unlink", "pg_file_sync",
})
_WRITING_PREFIXES: Final = (
    "dblink", "pg_create_", "pg_drop_", "pg_copy_", "pg_replication_origin_", "pg_logical_",
    "pg_stat_reset",
)


def _statements(text: str, standard_strings: bool) -> list[list[tuple[str, str]]]:
    statements: list[list[tuple[str, str]]] = [[]]
    for token in _tokens(text, standard_strings):
        if token == ("punct", ";"):
            statements.append([])
        else:
            statements[-1].append(token)
    return [s for s in statements if s]


def _words(statement: list[tuple[str, str]]) -> list[str]:
    return [value for kind, value in statement if kind == "word"]


def _function_names(statement: list[tuple[str, str]]) -> Iterator[str]:
    for (kind, value), following in pairwise(statement):
        if following == ("punct", "(") and kind in ("word", "qid"):
            yield value.lower() if kind == "word" else value


def _judge(statement: list[tuple[str, str]]) -> str | None:
    """Why *statement* is refused, or None for a read."""
    words = _words(statement)
    position = 0
    while position < len(statement) and statement[position] == ("punct", "("):
        position += 1  # (SELECT ...) UNION (SELECT ...)
    first_kind, first = statement[position] if position < len(statement) else ("", "")
    if first_kind != "word":
        return "it does not start with a keyword"

    dml = _DML.intersection(words)
    if dml:
        for index, word in enumerate(words):
            if word in ("UPDATE", "SHARE") and index and words[index - 1] in ("FOR", "KEY", "NO"):
                return f"SELECT ... FOR {word} takes row locks"
        return f"{sorted(dml)[0]} writes (data-modifying statements are refused anywhere in a statement)"
    for name in _function_names(statement):
        if name in _WRITING_FUNCTIONS or name.startswith(_WRITING_PREFIXES):
            return f"{name}() writes, changes the server or the session"

    if first in _QUERIES:
        return _judge_query(words)
    if first == "EXPLAIN":
        return _judge_explain(statement, position)
    if first in _HARMLESS or first in _TRANSACTION_END:
        if first in ("COMMIT", "ROLLBACK") and "PREPARED" in words:
            return f"{first} PREPARED ends a two-phase transaction"
        return None
    if first == "SET":
        return _judge_set(statement[position:])
    if first in ("BEGIN", "START"):
        return "it opens a read-write transaction" if _read_write(words) else None
    if first == "DECLARE":
        if "FOR" not in words:
            return "DECLARE without a query"
        options = words[:words.index("FOR")]
        if "HOLD" in options and options[options.index("HOLD") - 1] != "WITHOUT":
            return "a WITH HOLD cursor outlives the transaction on the pooled connection"
        return _judge_query(words[len(options) + 1:])
    if first == "DISCARD":
        if len(words) > 1 and words[1] in ("PLANS", "SEQUENCES", "TEMP", "TEMPORARY"):
            return None
        return "DISCARD ALL resets the session Django configured"
    if first == "COPY":
        return _judge_copy(statement)
    if first in _SESSION:
        return _SESSION[first]
    return f"{first} is not a read"


def _judge_query(words: list[str]) -> str | None:
    if "INTO" in words:
        return "SELECT ... INTO creates a table"
    for index, word in enumerate(words[:-1]):
        if word == "FOR" and words[index + 1] in _LOCKING:
            return f"SELECT ... FOR {words[index + 1]} takes row locks"
    return None


def _judge_explain(statement: list[tuple[str, str]], position: int) -> str | None:
    rest = statement[position + 1:]
    if rest[:1] == [("punct", "(")]:  # EXPLAIN (ANALYZE, FORMAT JSON) ...
        depth = 0
        for index, token in enumerate(rest):
            depth += {("punct", "("): 1, ("punct", ")"): -1}.get(token, 0)
            if depth == 0:
                rest = rest[index + 1:]
                break
    while rest and rest[0][0] == "word" and rest[0][1] in ("ANALYZE", "ANALYSE", "VERBOSE"):
        rest = rest[1:]
    if not rest:
        return "EXPLAIN without a statement"
    inner = _judge(rest)
    return None if inner is None else f"EXPLAIN of a statement that is refused: {inner}"


def _read_write(words: list[str]) -> bool:
    return any(a == "READ" and b == "WRITE" for a, b in pairwise(words))


def _judge_set(statement: list[tuple[str, str]]) -> str | None:
    # GUC names are case-insensitive, quoted or not: SET LOCAL "Role" = ...
    names = [value.upper() for kind, value in statement if kind in ("word", "qid")]
    scope = names[1] if len(names) > 1 else ""
    if scope == "SESSION" and names[2:3] == ["CHARACTERISTICS"]:
        return "SET SESSION CHARACTERISTICS changes every later transaction of the session"
    if scope == "TRANSACTION":
        return "it opens a read-write transaction" if _read_write(names) else None
    if scope == "LOCAL":
        target = names[2] if len(names) > 2 else ""
        if target in _READ_ONLY_SETTINGS:
            return f"SET LOCAL {target.lower()} changes who may write"
        return None
    return _SESSION["SET"]


def _judge_copy(statement: list[tuple[str, str]]) -> str | None:
    depth = 0
    direction: list[str] = []
    for kind, value in statement[1:]:
        if (kind, value) == ("punct", "("):
            depth += 1
        elif (kind, value) == ("punct", ")"):
            depth -= 1
        elif depth == 0 and kind == "word" and (direction or value in ("TO", "FROM")):
            direction.append(value)
    if direction[:2] == ["TO", "STDOUT"]:
        return None
    if direction and direction[0] == "FROM":
        return "COPY ... FROM writes"
    if "PROGRAM" in direction:
        return "COPY ... PROGRAM runs a program on the server"
    return "COPY to a file writes on the server (only COPY ... TO STDOUT is a read)"


# --------------------------------------------------------------------------- #
# The verdict, cached
# --------------------------------------------------------------------------- #

_with_params: dict[str, str | None] = {}
_without_params: dict[str, str | None] = {}


def _placeholders_marked(text: str) -> str:
    """*text* as psycopg binds it client-side: %% a percent sign, each placeholder a marker."""
    return _PLACEHOLDER.sub(lambda m: "%" if m.group() == "%%" else (
        _PARAM if m.group()[-1] in "sbt" else m.group()), text)


def _uncached_verdict(text: str, has_params: bool) -> str | None:
    if _PARAM in text:
        return "it contains a NUL character"
    if has_params:
        text = _placeholders_marked(text)
    try:
        statements = _statements(text, standard_strings=True)
    except _Unsafe as exc:
        return str(exc)
    if "\\" in text:  # standard_conforming_strings off reads backslashes in '...' as escapes
        try:
            other = _statements(text, standard_strings=False)
        except _Unsafe:
            other = None
        if other != statements:
            return ("it reads differently with standard_conforming_strings on and off (write "
                    "backslashes in E'...' strings)")
    if len(statements) > 1:
        return f"it holds {len(statements)} statements (one statement per execute() on a read-only alias)"
    if not statements:
        return None  # an empty query
    return _judge(statements[0])


def verdict(text: str, has_params: bool) -> str | None:
    """Why *text* is refused on a read-only alias, or None when it is a read."""
    cache = _with_params if has_params else _without_params
    try:
        return cache[text]
    except KeyError:
        pass
    reason = _uncached_verdict(text, has_params)
    if len(cache) >= _CACHE_LIMIT:
        cache.clear()
    cache[text] = reason
    return reason


def statement_text(statement: Any, context: Any = None) -> str | None:
    """*statement* (str, bytes, psycopg ``sql.Composable``) as text, or None if it cannot be read."""
    if type(statement) is str:
        return statement
    if isinstance(statement, (bytes, bytearray, memoryview)):
        try:
            return bytes(statement).decode("utf-8")
        except UnicodeDecodeError:
            return None
    as_string = getattr(statement, "as_string", None)  # psycopg.sql.Composable
    if as_string is not None:
        try:
            return str(as_string(context))
        except Exception:  # noqa: BLE001 - cannot render: refused
            return None
    return statement if isinstance(statement, str) else None


def refuse_unless_read(statement: Any, params: Any, alias: str,
                       adapters: Callable[[], Any] | None = None) -> None:
    """Raise :class:`~django_readonly_pool.errors.ReadOnlyAliasError` unless *statement* is one read.

    *adapters* gives the psycopg adaptation context that renders a ``sql.Composable``
    (called only for those).
    """
    if type(statement) is str:
        try:  # the hot path: one lookup
            reason = (_without_params if params is None else _with_params)[statement]
        except KeyError:
            reason = verdict(statement, params is not None)
    else:
        text = statement_text(statement, adapters() if adapters is not None else None)
        reason = "it cannot be read as text" if text is None else verdict(text, params is not None)
    if reason is not None:
        raise refusal("statement", alias, reason)


def refusal(subject: str, alias: str, reason: str) -> ReadOnlyAliasError:
    """The error for *subject* (a statement, ``callproc(...)``) refused on *alias*."""
    return ReadOnlyAliasError(
        f"{subject} refused on the read-only alias {alias!r}: {reason}. It serves reads only: "
        f"send writes to the primary (drop .using({alias!r}) and let "
        "django_readonly_pool.router.ReadOnlyRouter route them, or use .using('default'))."
    )

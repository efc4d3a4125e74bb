"""Guard 1 of ad-hoc SQL, the statement check: is this text one statement that only reads?

See :mod:`filterdb.warehouse.query` for how it works with the connection guards.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from filterdb.errors import QueryRefused

READ_STATEMENTS = frozenset({"select", "with", "values", "table", "show", "describe", "from"})
# EXPLAIN ANALYZE runs its statement, so EXPLAIN is allowed only in front of a read statement.
EXPLAIN_OPTIONS = frozenset({"analyze", "analyse", "verbose"})
WRITE_KEYWORDS = frozenset({"insert", "update", "delete", "merge", "into"})
# set_config('role', ...) undoes SET LOCAL ROLE; the others run SQL given as a string, where
# set_config could hide from this check (PostgreSQL functions-xml.html, textsearch docs).
ROLE_ESCAPES = frozenset(
    {
        "set_config",
        "query_to_xml",
        "query_to_xmlschema",
        "query_to_xml_and_xmlschema",
        "ts_stat",
        "ts_rewrite",
    }
)
# Roles that can reach the server's files or programs (PostgreSQL predefined roles).
SERVER_FILE_ROLES = ("pg_read_server_files", "pg_write_server_files", "pg_execute_server_program")

WRITE_HINT = "add --write to run statements that change the database"


def check_read_only(sql: str) -> None:
    """Raise :class:`QueryRefused` unless ``sql`` is one statement that only reads (guard 1).

    Comments and a trailing ``;`` are ignored; string literals and quoted names are never
    read as keywords.
    """
    statements = _statements(sql)
    if not statements:
        raise QueryRefused("refused: the query is empty; give one SQL statement")
    if len(statements) > 1:
        raise QueryRefused(
            f"refused: {len(statements)} statements given, read-only queries take one; "
            "run them one at a time, or add --write to run them in one transaction"
        )
    tokens = statements[0]
    if not _is_read_statement(tokens):
        first_words = [token.text for token in tokens[:2] if token.kind == "word"]
        head = " ".join(first_words) if tokens[0].kind == "word" else tokens[0].text
        raise QueryRefused(f'refused: "{head}" is not a read-only statement; {WRITE_HINT}')
    for token in tokens:
        if token.kind == "word" and token.value in WRITE_KEYWORDS:
            raise QueryRefused(
                f'refused: "{token.text}" may change the database (quote it if it is a '
                f"column name); {WRITE_HINT}"
            )
        if token.kind in ("word", "name") and token.value in ROLE_ESCAPES:
            raise QueryRefused(
                f"refused: {token.value}() can switch to the login role's rights, which "
                f"read-only queries drop; {WRITE_HINT}"
            )


@dataclass(frozen=True)
class _Token:
    kind: str  # word, name (quoted identifier), literal, punct
    text: str  # as written
    value: str  # words lower-cased, quoted names unquoted, otherwise the text


_LEXEME = re.compile(
    r"""
      (?P<space>\s+)
    | (?P<line_comment>--[^\n]*)
    | (?P<escape_string>[eE]'(?:[^'\\]|\\.|'')*')
    | (?P<string>(?:[uU]&|[bBxXnN])?'(?:[^']|'')*')
    | (?P<unicode_name>[uU]&"(?:[^"]|"")*")
    | (?P<name>"(?:[^"]|"")*")
    | (?P<dollar_quote>\$(?:[^\W\d]\w*)?\$)
    | (?P<word>[^\W\d]\w*(?:\$\w*)*)
    | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
    | (?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)


def _statements(sql: str) -> list[list[_Token]]:
    """The tokens of each non-empty statement in ``sql``, split at ``;``."""
    statements: list[list[_Token]] = [[]]
    for token in _tokens(sql):
        if token.kind == "punct" and token.text == ";":
            statements.append([])
        else:
            statements[-1].append(token)
    return [tokens for tokens in statements if tokens]


def _tokens(sql: str) -> Iterator[_Token]:
    """PostgreSQL's lexical rules, as far as telling code from literals and comments needs."""
    position = 0
    while position < len(sql):
        if sql.startswith("/*", position):
            position = _end_of_block_comment(sql, position)
            continue
        match = _LEXEME.match(sql, position)
        kind, text = match.lastgroup, match.group()
        position = match.end()
        if kind in ("space", "line_comment"):
            continue
        if kind == "dollar_quote":
            end = sql.find(text, position)
            if end < 0:
                raise QueryRefused(f"refused: the {text} quoted string is never closed")
            position = end + len(text)
            yield _Token("literal", sql[match.start() : position], "")
        elif kind in ("string", "escape_string", "number"):
            yield _Token("literal", text, "")
        elif kind == "name":
            yield _Token("name", text, text[1:-1].replace('""', '"'))
        elif kind == "unicode_name":
            # Escapes such as \0073 spell any name, set_config too; nobody needs them here.
            raise QueryRefused(
                f'refused: U&"..." names are not allowed in read-only queries; {WRITE_HINT}'
            )
        elif kind == "word":
            yield _Token("word", text, text.lower())
        elif text in "'\"":
            raise QueryRefused(f"refused: a {text} quote is never closed; close it")
        else:
            yield _Token("punct", text, text)


def _end_of_block_comment(sql: str, start: int) -> int:
    """Position after the ``/* ... */`` comment at ``start``; they nest in PostgreSQL."""
    depth, position = 0, start
    while position < len(sql):
        if sql.startswith("/*", position):
            depth, position = depth + 1, position + 2
        elif sql.startswith("*/", position):
            depth, position = depth - 1, position + 2
            if depth == 0:
                return position
        else:
            position += 1
    raise QueryRefused("refused: a /* comment is never closed; close it with */")


def _is_read_statement(tokens: list[_Token]) -> bool:
    """Whether the statement starts with a read keyword (after opening parentheses)."""
    words = iter(tokens)
    first = next((token for token in words if token.text != "("), None)
    if first is None or first.kind != "word":
        return False
    if first.value != "explain":
        return first.value in READ_STATEMENTS
    depth = 0
    for token in words:  # skip EXPLAIN's options: ANALYZE, VERBOSE, (FORMAT JSON, ...)
        if token.text == "(":
            depth += 1
        elif token.text == ")":
            depth -= 1
        elif depth == 0 and token.value not in EXPLAIN_OPTIONS:
            return token.kind == "word" and token.value in READ_STATEMENTS - {"show", "describe"}
    return False

"""Guard 1 of ad-hoc SQL, the statement check: is this text one statement that only reads?

The check decides with each database's own parser, on the very text the server receives:
PostgreSQL's (``pglast`` is libpg_query, the server's grammar and scanner as a library) and
DuckDB's (``extract_statements`` and ``json_serialize_sql`` of the installed DuckDB). A
hand-written lexer read ``'a\\' , $$'`` differently from a server with
``standard_conforming_strings = off`` and let ``set_config`` through (issue 9); a parser
cannot disagree with itself, and the execution side pins the settings that change how
PostgreSQL tokenizes to the values libpg_query assumes (:data:`POSTGRES_PARSER_SETTINGS`).

See :mod:`filterdb.warehouse.query` for how it works with the connection guards.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator

import duckdb
import pglast
from pglast import ast
from pglast.parser import ParseError, scan

from filterdb.errors import QueryRefused

WRITE_HINT = "add --write to run statements that change the database"

# How libpg_query's scanner reads text (its defaults, which pglast does not change): the
# read-only transaction sets the server to the same before the statement is parsed, so
# that server and check see the same tokens. ``backslash_quote`` and
# ``escape_string_warning`` only matter inside E'' strings; pinned all the same.
POSTGRES_PARSER_SETTINGS = {
    "standard_conforming_strings": "on",
    "backslash_quote": "safe_encoding",
    "escape_string_warning": "on",
}

# PostgreSQL functions refused by name (the last part of the name, so pg_catalog.x too).
# set_config('role', ...) undoes SET LOCAL ROLE on a superuser login; the *_to_xml family,
# ts_stat and ts_rewrite run SQL given as text, where set_config could hide; the rest read
# or write server files, large objects or other databases, or signal the server.
REFUSED_FUNCTIONS = {
    "set_config": "can switch to the login role's rights, which read-only queries drop",
    "ts_stat": "runs SQL given as text",
    "ts_rewrite": "runs SQL given as text",
    "lo_import": "reads server files",
    "lo_export": "writes server files",
    "pg_reload_conf": "signals the server",
    "pg_rotate_logfile": "signals the server",
    "pg_cancel_backend": "signals other sessions",
    "pg_terminate_backend": "signals other sessions",
    "pg_promote": "changes the server",
    "pg_file_write": "writes server files",
    "pg_file_rename": "writes server files",
    "pg_file_unlink": "writes server files",
}
REFUSED_FUNCTION_PATTERNS = {
    re.compile(r".*_to_xml.*"): "runs SQL given as text",
    re.compile(r"pg_(read|ls)_.*|pg_stat_file"): "reads server files",
    re.compile(r"dblink.*"): "reaches other databases",
}

# DuckDB's parse tree names statement nodes ...QUERY_NODE; these change data.
_DUCKDB_WRITE_NODE = re.compile(r"(INSERT|UPDATE|DELETE|MERGE_INTO)_QUERY_NODE|MERGE_INTO_NODE")
# query('...') parses and runs its text at bind time, out of this check's sight.
DUCKDB_REFUSED_FUNCTIONS = {"query": "runs SQL given as text"}


def check_read_only(sql: str, *, backend: str) -> None:
    """Raise :class:`QueryRefused` unless ``sql`` is one statement that only reads (guard 1).

    ``backend`` is ``"postgresql"`` or ``"duckdb"``: the statement is parsed by that
    database's own parser. Read statements are one SELECT (``WITH ... SELECT`` without a
    data-changing CTE, VALUES, TABLE, and on DuckDB SHOW, DESCRIBE, SUMMARIZE and FROM-first),
    PostgreSQL's SHOW, and EXPLAIN of one of those (with ANALYZE too, since the statement
    analysed only reads). SELECT ... INTO, FOR UPDATE/SHARE and the PostgreSQL functions in
    :data:`REFUSED_FUNCTIONS` are refused. A statement that does not parse is refused with
    the parser's message. Comments and a trailing ``;`` are ignored.
    """
    if backend == "postgresql":
        _check_postgres(sql)
    elif backend == "duckdb":
        _check_duckdb(sql)
    else:
        raise ValueError(f"unknown backend {backend!r}")


# --- PostgreSQL --------------------------------------------------------------------------


def _check_postgres(sql: str) -> None:
    try:
        statements = pglast.parse_sql(sql)
    except ParseError as error:
        raise QueryRefused(
            f"the statement does not parse: {error} (PostgreSQL's parser); correct the SQL"
        ) from None
    _count(len(statements))
    statement = statements[0].stmt
    inner = statement.query if isinstance(statement, ast.ExplainStmt) else statement
    if not isinstance(inner, ast.SelectStmt | ast.VariableShowStmt) or (
        inner is not statement and not isinstance(inner, ast.SelectStmt)
    ):
        head = _head(sql, statements[0])
        raise QueryRefused(f'refused: "{head}" is not a read-only statement; {WRITE_HINT}')
    for node in _nodes(statement):
        _refuse_postgres_node(node)


def _refuse_postgres_node(node: ast.Node) -> None:
    if isinstance(node, ast.InsertStmt | ast.UpdateStmt | ast.DeleteStmt | ast.MergeStmt):
        verb = type(node).__name__.removesuffix("Stmt").upper()
        raise QueryRefused(
            f"refused: {verb} inside the query may change the database; {WRITE_HINT}"
        )
    if isinstance(node, ast.IntoClause):
        raise QueryRefused(f"refused: SELECT ... INTO creates a table; {WRITE_HINT}")
    if isinstance(node, ast.LockingClause):
        raise QueryRefused(f"refused: FOR UPDATE/SHARE locks rows for writing; {WRITE_HINT}")
    if isinstance(node, ast.FuncCall):
        name = node.funcname[-1].sval
        reason = REFUSED_FUNCTIONS.get(name) or next(
            (why for pattern, why in REFUSED_FUNCTION_PATTERNS.items() if pattern.fullmatch(name)),
            None,
        )
        if reason:
            raise QueryRefused(f"refused: {name}() {reason}; {WRITE_HINT}")


def _nodes(node: object) -> Iterator[ast.Node]:
    """Every parse-tree node under ``node``, itself included."""
    if isinstance(node, ast.Node):
        yield node
        for name in node:  # a Node iterates over its attribute names
            yield from _nodes(getattr(node, name))
    elif isinstance(node, tuple | list):
        for item in node:
            yield from _nodes(item)


def _head(sql: str, raw: ast.RawStmt) -> str:
    """The first two words of the statement as written (PostgreSQL's scanner), for messages."""
    words = [
        sql[token.start : token.end + 1]
        for token in scan(sql)
        if token.start >= (raw.stmt_location or 0) and not token.name.endswith("COMMENT")
    ]
    return " ".join(words[:2])


# --- DuckDB ------------------------------------------------------------------------------


_duckdb_parsers = threading.local()


def _duckdb_parser() -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB per thread that only parses (opening one costs about 90 ms)."""
    parser = getattr(_duckdb_parsers, "connection", None)
    if parser is None:
        parser = duckdb.connect(":memory:", config={"enable_external_access": False})
        _duckdb_parsers.connection = parser
    return parser


def _check_duckdb(sql: str) -> None:
    parser = _duckdb_parser()
    try:
        statements = parser.extract_statements(sql)
    except duckdb.ParserException as error:
        raise QueryRefused(
            f"the statement does not parse: {_first_line(error)} (DuckDB's parser); correct the SQL"
        ) from None
    _count(len(statements))
    statement = statements[0]
    query = statement.query
    if statement.type == duckdb.StatementType.EXPLAIN:
        query = _explained(query)
        inner = parser.extract_statements(query) if query else []
        if len(inner) != 1 or inner[0].type != duckdb.StatementType.SELECT:
            head = _duckdb_head(statement.query, 3)
            raise QueryRefused(f'refused: "{head}" is not a read-only statement; {WRITE_HINT}')
    elif statement.type != duckdb.StatementType.SELECT:
        head = _duckdb_head(query, 2)
        raise QueryRefused(f'refused: "{head}" is not a read-only statement; {WRITE_HINT}')
    tree = parser.execute("SELECT json_serialize_sql(?)", [query]).fetchone()[0]
    for node in _json_nodes(json.loads(tree)):
        node_type = str(node.get("type"))
        if _DUCKDB_WRITE_NODE.fullmatch(node_type):
            verb = node_type.removesuffix("_NODE").removesuffix("_QUERY").replace("_", " ")
            raise QueryRefused(
                f"refused: {verb} inside the query may change the database; {WRITE_HINT}"
            )
        name = str(node.get("function_name", "")).lower()
        if node.get("class") == "FUNCTION" and name in DUCKDB_REFUSED_FUNCTIONS:
            raise QueryRefused(f"refused: {name}() {DUCKDB_REFUSED_FUNCTIONS[name]}; {WRITE_HINT}")


def _explained(query: str) -> str:
    """The statement after ``EXPLAIN [ANALYZE] [(options)]``, found with DuckDB's tokenizer."""
    tokens = [(position, query[position:end]) for position, end in _token_spans(query)]
    index = 1  # tokens[0] is EXPLAIN
    if index < len(tokens) and tokens[index][1].lower() in ("analyze", "analyse"):
        index += 1
    if index < len(tokens) and tokens[index][1] == "(":
        depth = 0
        while index < len(tokens):
            depth += {"(": 1, ")": -1}.get(tokens[index][1], 0)
            index += 1
            if depth == 0:
                break
    return query[tokens[index][0] :] if index < len(tokens) else ""


def _duckdb_head(query: str, n_words: int) -> str:
    return " ".join(query[start:end] for start, end in list(_token_spans(query))[:n_words])


def _token_spans(query: str) -> Iterator[tuple[int, int]]:
    """(start, end) of each non-comment token, by DuckDB's own tokenizer."""
    tokens = duckdb.tokenize(query)
    for index, (position, kind) in enumerate(tokens):
        if kind == duckdb.token_type.comment:
            continue
        end = tokens[index + 1][0] if index + 1 < len(tokens) else len(query)
        text = query[position:end].rstrip()
        # The tokenizer reports "(" and ")" only as parts of the next token's span.
        yield position, position + (len(text) if text[:1] not in "()" else 1)


def _json_nodes(tree: object) -> Iterator[dict]:
    """Every object in DuckDB's JSON parse tree."""
    if isinstance(tree, dict):
        yield tree
        for value in tree.values():
            yield from _json_nodes(value)
    elif isinstance(tree, list):
        for item in tree:
            yield from _json_nodes(item)


# --- Both ----------------------------------------------------------------------------------


def _count(n_statements: int) -> None:
    if n_statements == 0:
        raise QueryRefused("refused: the query is empty; give one SQL statement")
    if n_statements > 1:
        raise QueryRefused(
            f"refused: {n_statements} statements given, read-only queries take one; "
            "run them one at a time, or add --write to run them in one transaction"
        )


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__

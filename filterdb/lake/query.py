"""Ad-hoc SQL over a lake: the documented views defined by DuckDB over its Parquet.

``v_models``, ``v_layers`` and ``v_layer_metrics`` read the lake's dimension files and
``v_filters`` joins the fact files (partitioned by model) to ``v_layers``, with the columns
:data:`filterdb.warehouse.views.V_FILTERS` documents. The guards are those of
``filterdb query``: the statement check (:func:`filterdb.warehouse.query.check_read_only`),
then an in-memory DuckDB whose only data are the lake's files, opened by pyarrow (local or
object store) before file and network access are switched off and the configuration is
locked, so ``read_csv``, ``COPY ... TO``, ``ATTACH`` and ``SET`` fail in the engine.
"""

from __future__ import annotations

import threading
from pathlib import Path

import duckdb
import polars as pl
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from filterdb.errors import QueryFailed, QueryRefused
from filterdb.lake.layout import DIMENSIONS, FACT_SCHEMA, FILTERS_DIR, LakeError, open_lake
from filterdb.warehouse.query import check_read_only
from filterdb.warehouse.views import V_FILTERS


def query_lake(sql: str, *, lake: str | Path, timeout_s: float = 60.0) -> pl.DataFrame:
    """Run one read-only statement over the views of the lake at ``lake``; its rows.

    Raises :class:`QueryRefused` for what ``filterdb query`` refuses without ``--write``,
    :class:`QueryFailed` with DuckDB's message in one line, and
    :class:`~filterdb.lake.layout.LakeError` when ``lake`` is not a filterdb lake.
    """
    check_read_only(sql, backend="duckdb")
    target = open_lake(lake)
    if target.read_manifest() is None:
        raise LakeError(
            f"{target.location} is not a filterdb lake (no manifest); write one with "
            "`filterdb export --format parquet --out ...`"
        )
    connection = duckdb.connect(":memory:")
    try:
        for view, name in DIMENSIONS.items():
            table = pq.read_table(target.path(name), filesystem=target.filesystem)
            connection.register(f"lake_{view.removeprefix('v_')}", table)
            connection.execute(
                f"CREATE VIEW {view} AS SELECT * FROM lake_{view.removeprefix('v_')}"
            )
        facts = ds.dataset(
            target.path(FILTERS_DIR),
            filesystem=target.filesystem,
            format="parquet",
            partitioning="hive",
        )
        connection.register("lake_filters", facts)
        columns = ", ".join(
            f"f.{name}" if name in FACT_SCHEMA.names or name == "model_id" else f"l.{name}"
            for name in V_FILTERS.columns
        )
        connection.execute(
            f"CREATE VIEW v_filters AS SELECT {columns} FROM lake_filters f "
            "JOIN lake_layers l ON l.layer_id = f.layer_id"
        )
        connection.execute("SET enable_external_access = false")
        connection.execute("SET lock_configuration = true")
        return _run(connection, sql, timeout_s=timeout_s)
    finally:
        connection.close()


def _run(connection: duckdb.DuckDBPyConnection, sql: str, *, timeout_s: float) -> pl.DataFrame:
    timer = threading.Timer(timeout_s, connection.interrupt)
    timer.start()
    try:
        statements = connection.extract_statements(sql)
        if len(statements) != 1:
            raise QueryRefused(
                f"refused: {len(statements)} statements given, read-only queries take one"
            )
        result = connection.sql(statements[0])
        return pl.DataFrame() if result is None else result.pl()
    except duckdb.InterruptException:
        raise QueryFailed(f"query cancelled after {timeout_s:g} s; narrow it") from None
    except duckdb.Error as error:
        raise QueryFailed(" ".join(str(error).split("\n")[0].split())) from None
    finally:
        timer.cancel()

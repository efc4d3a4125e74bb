"""filterdb: a data warehouse of trained 3x3 convolution filters.

>>> import filterdb
>>> db = filterdb.connect()            # $FILTERDB_URL, else ./filterdb.duckdb
>>> db.layer_metrics().head()          # a Polars DataFrame

The package is laid out by the data flow, upstream first: ``ingest`` (sources, extraction,
the pipeline) and ``warehouse`` (schema, views, writes and reads, ad-hoc SQL), ``metrics``
(kernels, registry, cache), ``analysis``, ``reports``, ``demo``; ``cli`` parses and prints.
Attributes load on first use (PEP 562), so ``import filterdb`` imports neither torch nor
the database drivers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from filterdb.api import FilterDB, connect

__all__ = ["FilterDB", "__version__", "connect"]


def __getattr__(name: str) -> object:
    if name in ("FilterDB", "connect"):
        from filterdb import api

        return getattr(api, name)
    raise AttributeError(f"module 'filterdb' has no attribute {name!r}")

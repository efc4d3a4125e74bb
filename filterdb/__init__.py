"""filterdb: a data warehouse of trained 3x3 convolution filters.

>>> import filterdb
>>> db = filterdb.connect()            # $FILTERDB_URL, else ./filterdb.duckdb
>>> db.layer_metrics().head()          # a Polars DataFrame
"""

__version__ = "0.1.0"

from filterdb.api import FilterDB, connect  # noqa: E402  (after __version__, which others read)

__all__ = ["FilterDB", "__version__", "connect"]

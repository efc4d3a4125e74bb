"""What is stored: models and layers as Polars frames, read through the documented views."""

from __future__ import annotations

import polars as pl

from filterdb.database import engine_for, read_frame
from filterdb.migrate import require_head

MODEL_SUMMARY_COLUMNS = (
    "model_name",
    "architecture",
    "training_dataset",
    "training_type",
    "threat_model",
    "eps",
    "clean_acc",
    "robust_acc",
    "n_layers",
    "n_filters",
)


def models(url: str | None = None) -> pl.DataFrame:
    """One row per stored model (``v_models`` columns), ordered by name."""
    with engine_for(url) as engine:
        require_head(engine)
        with engine.connect() as connection:
            return read_frame(connection, "SELECT * FROM v_models ORDER BY model_name")

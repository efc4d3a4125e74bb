"""What is stored: models and layers as Polars frames, read through the documented views."""

from __future__ import annotations

import polars as pl
from sqlalchemy.engine import Connection

from filterdb.errors import FilterdbError
from filterdb.warehouse.database import engine_for, read_frame
from filterdb.warehouse.migrate import require_head

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

LAYER_SUMMARY_COLUMNS = (
    "conv_index",
    "layer_name",
    "conv_depth",
    "depth_bin",
    "in_channels",
    "out_channels",
    "groups",
    "n_filters",
)


def models(*, url: str | None = None) -> pl.DataFrame:
    """One row per stored model (``v_models`` columns), ordered by name."""
    return _read_view(url, "v_models", order_by="model_name")


def layers(*, url: str | None = None, model: str | None = None) -> pl.DataFrame:
    """One row per stored layer (``v_layers``), of ``model`` or of every model."""
    return _read_view(url, "v_layers", model=model, order_by="model_name, conv_index")


def layer_metrics(*, url: str | None = None, model: str | None = None) -> pl.DataFrame:
    """``v_layer_metrics``: each layer with its cached metrics, of ``model`` or of all."""
    return _read_view(url, "v_layer_metrics", model=model, order_by="model_name, conv_index")


def require_models(connection: Connection, names: list[str]) -> None:
    """Raise a one-line error naming every model of ``names`` that is not stored."""
    stored = set(read_frame(connection, "SELECT name FROM model")["name"])
    unknown = sorted(set(names) - stored)
    if unknown:
        raise FilterdbError(
            f"no stored model named {', '.join(unknown)}; `filterdb models` lists them"
        )


def _read_view(
    url: str | None, view: str, *, order_by: str, model: str | None = None
) -> pl.DataFrame:
    where, parameters = "", {}
    if model is not None:
        where, parameters = " WHERE model_name = :model", {"model": model}
    with engine_for(url) as engine:
        require_head(engine)
        with engine.connect() as connection:
            if model is not None:
                require_models(connection, [model])
            return read_frame(
                connection, f"SELECT * FROM {view}{where} ORDER BY {order_by}", parameters
            )

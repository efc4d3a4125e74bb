"""The Parquet lake: the warehouse's filters partitioned by model, readable by any engine.

Layout (``filterdb export --format parquet --out DIR|URL``)::

    DIR/_filterdb.json                         manifest: versions, per model rows, files, sha256
    DIR/models.parquet                         the v_models rows of the models in the lake
    DIR/layers.parquet                         their v_layers rows
    DIR/layer_metrics.parquet                  their v_layer_metrics rows at export time
    DIR/filters/model_id=<id>/part-<n>.parquet the facts, a layer never split across files

:mod:`filterdb.lake.layout` reads it without any database code (Dask workers import it);
:mod:`filterdb.lake.write` writes it from the warehouse, only what is missing or changed.
"""

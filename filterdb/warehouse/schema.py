"""The warehouse schema: the only place tables are declared (SPEC section 4).

Dimensions (``model``, ``training``, ``layer``), one fact table (``filter``), the metric
cache and the ingest log. Every change here is an Alembic migration in ``migrations/``;
``tests/test_migrations.py`` proves the two agree on DuckDB and PostgreSQL.

There are no foreign keys, on purpose:

* on DuckDB a referenced table can no longer be altered, and deleting children and then
  their parent in one transaction fails the foreign-key check (PLATFORM.md), which would
  make an atomic ``--force`` replacement of a model impossible;
* on the fact table enforced keys make bulk loads 3x (DuckDB) to 7x (PostgreSQL) slower.

Integrity comes from publishing each model in one short transaction (its filters go in
before, in committed batches, under a ``model_loading`` row: issue 14), and
``filterdb check`` (:mod:`filterdb.warehouse.check`) proves it on demand. Every fact row carries its
``model_id`` so the fact table can later be partitioned or distributed by model without a
schema change.
"""

from __future__ import annotations

import sqlalchemy as sa

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)

# DuckDB has neither SERIAL nor IDENTITY; an explicit sequence works the same on both
# backends (PLATFORM.md).
model_id_seq = sa.Sequence("model_id_seq", metadata=metadata)
layer_id_seq = sa.Sequence("layer_id_seq", metadata=metadata)
ingest_id_seq = sa.Sequence("ingest_id_seq", metadata=metadata)

WEIGHT_COLUMNS = tuple(f"w{i}" for i in range(9))

model = sa.Table(
    "model",
    metadata,
    sa.Column(
        "model_id",
        sa.Integer,
        model_id_seq,
        primary_key=True,
        server_default=model_id_seq.next_value(),
    ),
    sa.Column("name", sa.String, nullable=False),
    sa.Column("source", sa.String, nullable=False),
    sa.Column("source_uri", sa.String),
    sa.Column("architecture", sa.String),
    sa.Column("family", sa.String),
    sa.Column("n_parameters", sa.BigInteger),
    sa.Column("checkpoint_sha256", sa.String(64), nullable=False),
    sa.Column("producer", sa.String),
    sa.Column("max_conv_depth", sa.Integer, nullable=False),
    sa.Column("n_unreached_convs", sa.Integer, nullable=False, server_default="0"),
    sa.Column("ingested_at", sa.DateTime, nullable=False),
    # Last, where migration 0003's ALTER TABLE put it: raw, bn_folded or as_exported
    # (records.WEIGHTS_FORMS, SPEC section 4), checked when written (no CHECK constraint:
    # DuckDB cannot add one to an existing table).
    sa.Column("weights_form", sa.String, nullable=False, server_default="raw"),
    # After it, where migration 0004's ALTER TABLE put it.
    sa.Column("license", sa.String),
    sa.UniqueConstraint("name"),
)

training = sa.Table(
    "training",
    metadata,
    sa.Column("model_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("training_dataset", sa.String),
    sa.Column("pretraining_dataset", sa.String),
    sa.Column("training_type", sa.String, nullable=False),
    sa.Column("threat_model", sa.String),
    sa.Column("eps_text", sa.String),
    sa.Column("eps", sa.Double),
    sa.Column("extra_data", sa.Boolean),
    sa.Column("clean_acc", sa.Double),
    sa.Column("robust_acc", sa.Double),
    sa.Column("autoattack_acc", sa.Double),
    sa.Column("external_acc", sa.Double),
    sa.Column("paper_title", sa.String),
    sa.Column("paper_url", sa.String),
    sa.Column("venue", sa.String),
    sa.Column("footnote", sa.String),
    sa.Column("unreliable", sa.Boolean),
    sa.Column("number_forward_passes", sa.Integer),
    # Last, where migration 0002's ALTER TABLE put it.
    sa.Column("corruptions_acc", sa.Double),
    sa.CheckConstraint("training_type IN ('adversarial', 'normal')", name="training_type_known"),
)

layer = sa.Table(
    "layer",
    metadata,
    sa.Column(
        "layer_id",
        sa.Integer,
        layer_id_seq,
        primary_key=True,
        server_default=layer_id_seq.next_value(),
    ),
    sa.Column("model_id", sa.Integer, nullable=False),
    sa.Column("name", sa.String, nullable=False),
    sa.Column("conv_index", sa.Integer, nullable=False),
    sa.Column("graph_depth", sa.Integer, nullable=False),
    sa.Column("conv_depth", sa.Integer, nullable=False),
    sa.Column("conv_depth_norm", sa.Double, nullable=False),
    sa.Column("depth_method", sa.String, nullable=False),
    sa.Column("in_channels", sa.Integer, nullable=False),
    sa.Column("out_channels", sa.Integer, nullable=False),
    sa.Column("groups", sa.Integer, nullable=False),
    sa.Column("stride", sa.String),
    sa.Column("dilation", sa.String),
    sa.Column("n_filters", sa.Integer, nullable=False),
    sa.Column("max_abs", sa.REAL),
    # float16, bfloat16, float32, float64: the checkpoint's dtype (migration 0003).
    sa.Column("source_dtype", sa.String),
    sa.UniqueConstraint("model_id", "name"),
)

filter_ = sa.Table(
    "filter",
    metadata,
    sa.Column("model_id", sa.Integer, nullable=False),
    sa.Column("layer_id", sa.Integer, nullable=False),
    sa.Column("filter_index", sa.Integer, nullable=False),
    sa.Column("out_channel", sa.Integer, nullable=False),
    sa.Column("in_channel", sa.Integer, nullable=False),
    *(sa.Column(name, sa.REAL, nullable=False) for name in WEIGHT_COLUMNS),
)

metric_cache = sa.Table(
    "metric_cache",
    metadata,
    sa.Column("layer_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("metric", sa.String, primary_key=True),
    sa.Column("params", sa.String, primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("model_id", sa.Integer, nullable=False),
    sa.Column("value", sa.Double),
    # What the value was computed on (filters, or output channels for orthogonality):
    # the weight of the value when layers are pooled into depth bins (SPEC section 5).
    sa.Column("support", sa.BigInteger, nullable=False),
    sa.Column("computed_at", sa.DateTime, nullable=False),
)

# A model whose rows are being written (issue 14): its layer and filter rows go in under
# ``model_id`` in several committed batches, so DuckDB never holds a whole model's rows
# uncommitted in memory, but the model has no ``model`` row (nor ``training`` row) until the
# short transaction that publishes it deletes this row. Every view joins ``model``, so no
# reader sees a model before it is complete. A row left here is an interrupted ingest:
# the next ingest of ``name`` and ``filterdb check --repair`` remove it with its rows.
model_loading = sa.Table(
    "model_loading",
    metadata,
    sa.Column("model_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("name", sa.String, nullable=False),
    sa.Column("checkpoint_sha256", sa.String(64), nullable=False),
    sa.Column("n_filters", sa.BigInteger, nullable=False),
    sa.Column("started_at", sa.DateTime, nullable=False),
)

ingest_log = sa.Table(
    "ingest_log",
    metadata,
    sa.Column(
        "ingest_id",
        sa.Integer,
        ingest_id_seq,
        primary_key=True,
        server_default=ingest_id_seq.next_value(),
    ),
    sa.Column("model_name", sa.String),
    sa.Column("source", sa.String, nullable=False),
    sa.Column("source_uri", sa.String),
    sa.Column("status", sa.String, nullable=False),
    sa.Column("checkpoint_sha256", sa.String(64)),
    sa.Column("started_at", sa.DateTime, nullable=False),
    sa.Column("finished_at", sa.DateTime),
    sa.Column("seconds_read", sa.Double),
    sa.Column("seconds_extract", sa.Double),
    sa.Column("seconds_write", sa.Double),
    sa.Column("n_layers", sa.Integer),
    sa.Column("n_filters", sa.BigInteger),
    sa.Column("n_unreached_convs", sa.Integer),
    sa.Column("error", sa.Text),
    # What a successful ingest wants known (float64 weights rounded, ...): migration 0003.
    sa.Column("note", sa.Text),
    sa.CheckConstraint(
        "status IN ('ingested', 'replaced', 'skipped', 'failed')", name="status_known"
    ),
)

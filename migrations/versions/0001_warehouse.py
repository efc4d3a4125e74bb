"""The warehouse: model, training, layer, filter, metric cache, ingest log, and the views.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from filterdb.migrations import views_0001
from filterdb.warehouse import views

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# The views this revision creates, frozen (tests/test_migrations.py pins their hash).
CREATED_VIEWS = views_0001.VIEWS

SEQUENCES = ("model_id_seq", "layer_id_seq", "ingest_id_seq")


def _id_column(name: str, sequence: str) -> sa.Column:
    # DuckDB has no SERIAL: an explicit sequence as the server default (PLATFORM.md).
    seq = sa.Sequence(sequence)
    return sa.Column(name, sa.Integer, seq, primary_key=True, server_default=seq.next_value())


def upgrade() -> None:
    for name in SEQUENCES:
        op.execute(sa.schema.CreateSequence(sa.Sequence(name)))

    op.create_table(
        "model",
        _id_column("model_id", "model_id_seq"),
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
        sa.UniqueConstraint("name", name="uq_model_name"),
        sa.PrimaryKeyConstraint("model_id", name="pk_model"),
    )
    op.create_table(
        "training",
        sa.Column("model_id", sa.Integer, autoincrement=False),
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
        sa.CheckConstraint(
            "training_type IN ('adversarial', 'normal')",
            name="ck_training_training_type_known",
        ),
        sa.PrimaryKeyConstraint("model_id", name="pk_training"),
    )
    op.create_table(
        "layer",
        _id_column("layer_id", "layer_id_seq"),
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
        sa.UniqueConstraint("model_id", "name", name="uq_layer_model_id_name"),
        sa.PrimaryKeyConstraint("layer_id", name="pk_layer"),
    )
    op.create_table(
        "filter",
        sa.Column("model_id", sa.Integer, nullable=False),
        sa.Column("layer_id", sa.Integer, nullable=False),
        sa.Column("filter_index", sa.Integer, nullable=False),
        sa.Column("out_channel", sa.Integer, nullable=False),
        sa.Column("in_channel", sa.Integer, nullable=False),
        *(sa.Column(f"w{i}", sa.REAL, nullable=False) for i in range(9)),
    )
    op.create_table(
        "metric_cache",
        sa.Column("layer_id", sa.Integer, autoincrement=False),
        sa.Column("metric", sa.String),
        sa.Column("params", sa.String),
        sa.Column("version", sa.Integer, autoincrement=False),
        sa.Column("model_id", sa.Integer, nullable=False),
        sa.Column("value", sa.Double),
        sa.Column("support", sa.BigInteger, nullable=False),
        sa.Column("computed_at", sa.DateTime, nullable=False),
        sa.PrimaryKeyConstraint("layer_id", "metric", "params", "version", name="pk_metric_cache"),
    )
    op.create_table(
        "ingest_log",
        _id_column("ingest_id", "ingest_id_seq"),
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
        sa.CheckConstraint(
            "status IN ('ingested', 'replaced', 'skipped', 'failed')",
            name="ck_ingest_log_status_known",
        ),
        sa.PrimaryKeyConstraint("ingest_id", name="pk_ingest_log"),
    )
    # The views as 0001 shipped them, not the current catalogue: later revisions may
    # reference columns that do not exist yet.
    views.create_views(op.get_bind(), CREATED_VIEWS)


def downgrade() -> None:
    views.drop_views(op.get_bind(), CREATED_VIEWS)
    for table in ("ingest_log", "metric_cache", "filter", "layer", "training", "model"):
        op.drop_table(table)
    for name in SEQUENCES:
        op.execute(sa.schema.DropSequence(sa.Sequence(name)))

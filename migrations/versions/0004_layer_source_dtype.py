"""Hub sources: layer.source_dtype, model.license, ingest_log.note, shown in the views.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01

Weights now come as float16, bfloat16 or float64 too (safetensors, the Hugging Face Hub);
they are stored as float32, and ``layer.source_dtype`` keeps what the checkpoint held
(NULL for layers stored before this revision). ``model.license`` is the weights' license
where the publisher states it (timm's pretrained configs); ``ingest_log.note`` is what a
successful ingest wants known (float64 weights rounded to float32). v_models gains
source_uri and license, v_layers and v_layer_metrics gain source_dtype; their SQL is
frozen in ``migrations/views_0004.py``.

Self-contained on purpose: to put it after another revision, change ``down_revision`` and
``PREVIOUS_VIEWS`` (that revision's frozen views) and its number.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from filterdb.migrations import views_0003, views_0004
from filterdb.warehouse import views

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# The views this revision creates (tests/test_migrations.py pins their hash), and those of
# the revision below, which its downgrade puts back.
CREATED_VIEWS = views_0004.VIEWS
PREVIOUS_VIEWS = views_0003.VIEWS

COLUMNS = (
    ("model", "license", sa.String),
    ("layer", "source_dtype", sa.String),
    ("ingest_log", "note", sa.Text),
)


def upgrade() -> None:
    views.drop_views(op.get_bind(), PREVIOUS_VIEWS)
    for table, column, kind in COLUMNS:
        op.add_column(table, sa.Column(column, kind))
    views.create_views(op.get_bind(), CREATED_VIEWS)


def downgrade() -> None:
    # PostgreSQL refuses to drop a column that a view reads: views first.
    views.drop_views(op.get_bind(), CREATED_VIEWS)
    for table, column, _ in reversed(COLUMNS):
        op.drop_column(table, column)
    views.create_views(op.get_bind(), PREVIOUS_VIEWS)

"""Weights form: model.weights_form (raw, bn_folded, as_exported), shown in the views.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

The papers measured filters of ONNX exports, where the TorchScript exporter had folded
each BatchNorm that consumes a conv's output into that conv; filterdb stored the raw
state_dict. Each model now records the form its filters are stored in (SPEC section 4):
rows stored before this revision were stored as their source gave them, so ONNX models
are ``as_exported`` and every other model is ``raw``.

The views are dropped and created again around the change: v_models, v_layers and
v_layer_metrics gain the column. Their SQL is frozen in ``migrations/views_0003.py``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from filterdb.migrations import views_0002, views_0003
from filterdb.warehouse import views

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# The views this revision creates (tests/test_migrations.py pins their hash).
CREATED_VIEWS = views_0003.VIEWS


def upgrade() -> None:
    views.drop_views(op.get_bind(), views_0002.VIEWS)
    op.add_column(
        "model", sa.Column("weights_form", sa.String, nullable=False, server_default="raw")
    )
    op.execute("UPDATE model SET weights_form = 'as_exported' WHERE source = 'onnx'")
    views.create_views(op.get_bind(), CREATED_VIEWS)


def downgrade() -> None:
    # PostgreSQL refuses to drop a column that a view reads: views first.
    views.drop_views(op.get_bind(), CREATED_VIEWS)
    op.drop_column("model", "weights_form")
    views.create_views(op.get_bind(), views_0002.VIEWS)

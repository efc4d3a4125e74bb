"""Corruptions accuracy: training.corruptions_acc, shown in v_models.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27

RobustBench's leaderboard gives corruptions entries an accuracy under common corruptions
(``corruptions_acc`` in their ``model_info`` files). It is not a robust accuracy (SPEC
section 6), so it gets its own nullable column; rows stored before this revision keep it
NULL until their leaderboard is read again.

The views are dropped and created again around the change: v_models gains the column.
Their SQL is frozen in ``migrations/views_0002.py``, so that later edits of the live
catalogue (:mod:`filterdb.warehouse.views`) never change what "0002" means.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from filterdb.migrations import views_0001, views_0002
from filterdb.warehouse import views

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# The views this revision creates (tests/test_migrations.py pins their hash).
CREATED_VIEWS = views_0002.VIEWS


def upgrade() -> None:
    views.drop_views(op.get_bind(), views_0001.VIEWS)
    op.add_column("training", sa.Column("corruptions_acc", sa.Double))
    views.create_views(op.get_bind(), CREATED_VIEWS)


def downgrade() -> None:
    # PostgreSQL refuses to drop a column that a view reads: views first.
    views.drop_views(op.get_bind(), CREATED_VIEWS)
    op.drop_column("training", "corruptions_acc")
    views.create_views(op.get_bind(), views_0001.VIEWS)

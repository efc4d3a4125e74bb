"""Corruptions accuracy: training.corruptions_acc, shown in v_models.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27

RobustBench's leaderboard gives corruptions entries an accuracy under common corruptions
(``corruptions_acc`` in their ``model_info`` files). It is not a robust accuracy (SPEC
section 6), so it gets its own nullable column; rows stored before this revision keep it
NULL until their leaderboard is read again.

The views are dropped and created again around the change: v_models gains the column.
This is the newest revision, so it creates the current catalogue of
:mod:`filterdb.views`; the revision that next changes the views freezes this one's SQL
here, as ``migrations/views_0001.py`` does for 0001.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from filterdb import views
from migrations import views_0001

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    views.drop_views(op.get_bind(), views_0001.VIEWS)
    op.add_column("training", sa.Column("corruptions_acc", sa.Double))
    views.create_views(op.get_bind())


def downgrade() -> None:
    # PostgreSQL refuses to drop a column that a view reads: views first.
    views.drop_views(op.get_bind())
    op.drop_column("training", "corruptions_acc")
    views.create_views(op.get_bind(), views_0001.VIEWS)

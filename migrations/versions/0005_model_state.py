"""Model state: models are loaded in committed batches, then published (issue 14).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01

An ingest used to write a whole model in one transaction; DuckDB holds uncommitted rows
in memory (2.1 GB more for 27M filters). A model's rows are now written in several
committed batches while a ``model_loading`` row marks the model as loading; a short final
transaction publishes it by writing its ``model`` and ``training`` rows and deleting the
``model_loading`` row. Rows of a model still loading have no ``model`` row, so every view
(each joins ``model``) hides them: the views do not change, and this revision creates the
views of 0004 unchanged.

Self-contained on purpose: to put it after another revision, change ``down_revision`` and
``PREVIOUS_VIEWS`` (that revision's frozen views) and its number.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from filterdb.migrations import views_0004

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# No view changes here: the views of the revision below stay (tests/test_migrations.py
# pins their hash under this revision too).
PREVIOUS_VIEWS = views_0004.VIEWS
CREATED_VIEWS = PREVIOUS_VIEWS


def upgrade() -> None:
    op.create_table(
        "model_loading",
        sa.Column("model_id", sa.Integer, autoincrement=False, nullable=False),
        sa.Column("name", sa.String, nullable=False),
        sa.Column("checkpoint_sha256", sa.String(64), nullable=False),
        sa.Column("n_filters", sa.BigInteger, nullable=False),
        sa.Column("started_at", sa.DateTime, nullable=False),
        sa.PrimaryKeyConstraint("model_id", name="pk_model_loading"),
    )


def downgrade() -> None:
    # The rows of a model still loading are leftovers without a model row: drop them with
    # the table that names them, so the revision below sees a consistent warehouse.
    op.execute("DELETE FROM filter WHERE model_id IN (SELECT model_id FROM model_loading)")
    op.execute("DELETE FROM layer WHERE model_id IN (SELECT model_id FROM model_loading)")
    op.execute("DELETE FROM metric_cache WHERE model_id IN (SELECT model_id FROM model_loading)")
    op.drop_table("model_loading")

"""Alembic migrations of the filterdb schema (tables, sequences and views)."""

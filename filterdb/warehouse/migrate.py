"""Schema migrations through Alembic, on DuckDB and PostgreSQL alike.

Alembic has no DuckDB implementation of its own: :mod:`filterdb.warehouse.alembic_duckdb`
registers one (imported by ``migrations/env.py``).
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy.engine import Engine

from filterdb import migrations
from filterdb.errors import DatabaseError
from filterdb.warehouse import alembic_duckdb  # noqa: F401  (MigrationContext needs it on DuckDB)
from filterdb.warehouse.database import engine_for

MIGRATIONS_DIR = Path(migrations.__file__).parent


@dataclass(frozen=True)
class Revision:
    """One migration: its id, the one before it, and its message."""

    revision: str
    down_revision: str | None
    message: str
    is_head: bool


def alembic_config() -> Config:
    """An Alembic configuration pointing at filterdb's migrations (no URL: see env.py)."""
    config = Config(stdout=io.StringIO())
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


# The migration scripts are part of the installed code: read them once per process, not
# once per model ingested (38 ms each on the 2-core machine, bench/zoo.py).
@functools.cache
def head_revision() -> str:
    """The newest revision the code knows."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def upgrade(revision: str = "head", *, url: str | None = None) -> str | None:
    """Create the schema (and the DuckDB file) or bring it up to ``revision``; returns the
    revision reached."""
    return _run(url, command.upgrade, revision, create=True)


def downgrade(revision: str = "-1", *, url: str | None = None) -> str | None:
    """Take the schema down to ``revision`` (``base`` removes everything filterdb made)."""
    return _run(url, command.downgrade, revision, create=False)


def current_revision(*, url: str | None = None) -> str | None:
    """The database's revision, ``None`` when filterdb has never been initialised there."""
    with engine_for(url) as engine:
        return revision_of(engine)


def revision_of(engine: Engine) -> str | None:
    """The revision of the database behind ``engine``."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def history() -> list[Revision]:
    """Every revision, newest first."""
    scripts = ScriptDirectory.from_config(alembic_config())
    head = scripts.get_current_head()
    return [
        Revision(
            revision=script.revision,
            down_revision=script.down_revision,
            message=script.doc,
            is_head=script.revision == head,
        )
        for script in scripts.walk_revisions()
    ]


def require_head(engine: Engine) -> None:
    """Raise a one-line :class:`DatabaseError` unless the database is at the head revision."""
    found = revision_of(engine)
    if found == head_revision():
        return
    if found is None:
        raise DatabaseError(
            f"{engine.url.render_as_string()} holds no filterdb schema; run `filterdb init`"
        )
    raise DatabaseError(
        f"database is at revision {found}, this filterdb needs {head_revision()}; "
        "run `filterdb db upgrade`"
    )


def _run(
    url: str | None, step: Callable[[Config, str], None], revision: str, *, create: bool
) -> str | None:
    config = alembic_config()
    with engine_for(url, create=create) as engine:
        try:
            with engine.begin() as connection:
                config.attributes["connection"] = connection
                step(config, revision)
        except CommandError as error:  # an unknown revision, a bad relative step
            raise DatabaseError(
                f"{' '.join(str(error).split())}; `filterdb db history` lists the revisions"
            ) from None
        return revision_of(engine)

"""Output locations: a directory that can be written, or a one-line error saying why not."""

from __future__ import annotations

from pathlib import Path

from filterdb.errors import FilterdbError


def output_directory(path: Path) -> Path:
    """Create ``path`` (and its parents) if needed and return it.

    Raises :class:`FilterdbError` in one line when it cannot be created (a file in the way,
    no permission, a read-only file system).
    """
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise FilterdbError(
            f"cannot write into {path}: {error.strerror or error}; pick another directory"
        ) from None
    return path

"""Expected failures. Each message names the problem and the fix, in one line.

The CLI prints these without a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class FilterdbError(Exception):
    """An expected failure whose message says what went wrong and how to fix it."""


class DatabaseError(FilterdbError):
    """The database cannot be reached, is locked, or is not at the expected revision."""


class SourceError(FilterdbError):
    """A model source (checkpoint, ONNX file, zoo entry, leaderboard file) cannot be used."""


class MetadataError(SourceError):
    """Model metadata out of range: an accuracy outside [0, 100], a bad eps, a bad name."""


class CheckpointMissing(SourceError):
    """A checkpoint is not where it should be; the message names the exact path."""


class ModelConflict(FilterdbError):
    """A model of that name exists with a different checkpoint."""


class QueryRefused(FilterdbError):
    """An ad-hoc statement was refused (writes without ``--write``, several statements)."""


class QueryFailed(FilterdbError):
    """The database rejected an ad-hoc statement; the message is the database's own."""


class MetricError(FilterdbError):
    """A metric cannot be computed with the options given (a sparsity eps out of range)."""


class NoPCA(FilterdbError):
    """No PCA of a group: under 9 non-sparse filters, zero variance, or non-finite weights."""


class PairingError(FilterdbError):
    """No pair to compare, or a pairs file that cannot be read."""

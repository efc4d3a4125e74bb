"""The consistency check: what the absent foreign keys would have enforced (SPEC section 4).

Each check is one SQL query that returns the offending rows; an empty result means the
warehouse is consistent. Shared by ``filterdb check`` and the tests. One rule lists what
an interrupted ingest left (a ``model_loading`` row with its layers and filters, never
visible to readers: :mod:`filterdb.warehouse.write`); :func:`repair` removes it.
"""

from __future__ import annotations

from dataclasses import dataclass

from filterdb.warehouse.database import engine_for
from filterdb.warehouse.migrate import require_head
from filterdb.warehouse.write import loading_models, remove_loading_model


@dataclass(frozen=True)
class Check:
    """A rule, the SQL listing what breaks it, and how to describe one offending row."""

    rule: str
    sql: str
    describe: str  # format string over the row's columns


CHECKS = (
    Check(
        rule="every layer's filter count equals its filter rows",
        sql="""
SELECT m.name AS model, l.name AS layer, l.n_filters AS expected,
    COALESCE(f.n, 0) AS found
FROM layer l
JOIN model m ON m.model_id = l.model_id
LEFT JOIN (SELECT layer_id, COUNT(*) AS n FROM filter GROUP BY layer_id) f
    ON f.layer_id = l.layer_id
WHERE COALESCE(f.n, 0) <> l.n_filters""",
        describe="layer {layer} of {model} expects {expected} filters, found {found}",
    ),
    Check(
        rule="every filter row belongs to a stored layer of its model",
        sql="""
SELECT f.model_id, f.layer_id, COUNT(*) AS n
FROM filter f
LEFT JOIN layer l ON l.layer_id = f.layer_id AND l.model_id = f.model_id
WHERE l.layer_id IS NULL
GROUP BY f.model_id, f.layer_id""",
        describe="{n} filter rows of model_id {model_id} point at missing layer_id {layer_id}",
    ),
    Check(
        rule="every filter index of a layer is stored once",
        sql="""
SELECT layer_id, filter_index, COUNT(*) AS n
FROM filter GROUP BY layer_id, filter_index HAVING COUNT(*) > 1""",
        describe="filter {filter_index} of layer_id {layer_id} is stored {n} times",
    ),
    Check(
        rule="every filter's index lies in its layer and matches its channels",
        sql="""
SELECT l.name AS layer, m.name AS model, COUNT(*) AS n
FROM filter f
JOIN layer l ON l.layer_id = f.layer_id
JOIN model m ON m.model_id = l.model_id
WHERE f.filter_index < 0 OR f.filter_index >= l.n_filters
    OR f.out_channel * (l.in_channels / l.groups) + f.in_channel <> f.filter_index
    OR f.in_channel < 0 OR f.in_channel >= l.in_channels / l.groups
GROUP BY l.name, m.name""",
        describe="{n} filter rows of layer {layer} of {model} have an index or channel "
        "outside the layer",
    ),
    Check(
        rule="every layer's depth lies within its model's depths",
        sql="""
SELECT l.name AS layer, m.name AS model, l.conv_depth, m.max_conv_depth
FROM layer l JOIN model m ON m.model_id = l.model_id
WHERE l.conv_depth < 0 OR l.conv_depth > m.max_conv_depth""",
        describe="layer {layer} of {model} has conv_depth {conv_depth} outside 0..{max_conv_depth}",
    ),
    Check(
        rule="every layer belongs to a stored model",
        sql="""
SELECT l.layer_id, l.model_id, l.name AS layer FROM layer l
LEFT JOIN model m ON m.model_id = l.model_id WHERE m.model_id IS NULL
    AND l.model_id NOT IN (SELECT model_id FROM model_loading)""",
        describe="layer {layer} (layer_id {layer_id}) points at missing model_id {model_id}",
    ),
    Check(
        rule="every model has layers",
        sql="""
SELECT m.name AS model FROM model m
WHERE NOT EXISTS (SELECT 1 FROM layer l WHERE l.model_id = m.model_id)""",
        describe="model {model} has no layers",
    ),
    Check(
        rule="every model has exactly one training row, and every training row a model",
        sql="""
SELECT COALESCE(m.name, CAST(t.model_id AS VARCHAR)) AS model,
    CASE WHEN m.model_id IS NULL THEN 'a training row without model'
         ELSE 'no training row' END AS problem
FROM model m FULL OUTER JOIN training t ON t.model_id = m.model_id
WHERE m.model_id IS NULL OR t.model_id IS NULL""",
        describe="model {model}: {problem}",
    ),
    Check(
        rule="every cached metric belongs to a stored layer",
        sql="""
SELECT c.layer_id, COUNT(*) AS n FROM metric_cache c
LEFT JOIN layer l ON l.layer_id = c.layer_id AND l.model_id = c.model_id
WHERE l.layer_id IS NULL GROUP BY c.layer_id""",
        describe="{n} cached metric values point at missing layer_id {layer_id}",
    ),
)


# Said of each half-loaded model: an ingest still running looks the same from here.
LEFTOVER_HINT = (
    "; unless that ingest is still running, `filterdb check --repair` removes it "
    "(so does the next ingest of that name)"
)


# Warnings: allowed states a person should know about. A checkpoint stored under two names
# is a warning, not a problem: each copy is complete and consistent, and storing one file
# twice on purpose (a zoo entry under its alias) is legitimate; but a comparison over
# models then counts those weights twice.
WARNINGS = (
    Check(
        rule="every checkpoint is stored once (per weights form)",
        sql="""
SELECT checkpoint_sha256, weights_form, COUNT(*) AS n,
    STRING_AGG(name, ', ' ORDER BY name) AS models
FROM model WHERE checkpoint_sha256 IS NOT NULL
GROUP BY checkpoint_sha256, weights_form HAVING COUNT(*) > 1
ORDER BY models""",
        describe="models {models} are stored from the same checkpoint (sha256 "
        "{checkpoint_sha256:.12}, weights form {weights_form}); keep one name unless "
        "each is meant",
    ),
)


@dataclass(frozen=True)
class CheckReport:
    """``problems`` break a rule of :data:`CHECKS`; ``warnings`` come from :data:`WARNINGS`.

    One line each; the warehouse is consistent when ``problems`` is empty.
    """

    problems: list[str]
    warnings: list[str]


def check(*, url: str | None = None) -> list[str]:
    """Run every consistency check; returns one line per problem (empty: consistent)."""
    return check_report(url=url).problems


def check_report(*, url: str | None = None) -> CheckReport:
    """Run every consistency check and every warning rule, one line per offending row.

    Models left half-loaded by an interrupted ingest come first among the problems.
    """
    with engine_for(url) as engine:
        require_head(engine)
        with engine.connect() as connection:
            problems, warnings = (
                [
                    rule.describe.format(**row)
                    for rule in rules
                    for row in connection.exec_driver_sql(rule.sql).mappings()
                ]
                for rules in (CHECKS, WARNINGS)
            )
            leftovers = [left.describe() + LEFTOVER_HINT for left in loading_models(connection)]
    return CheckReport(problems=leftovers + problems, warnings=warnings)


def repair(*, url: str | None = None) -> list[str]:
    """Remove every model left half-loaded by an interrupted ingest, in one transaction.

    Returns one line per model removed. Readers never saw these rows, so nothing they see
    changes. Run it when no ingest is running: a running one loses its rows and fails with
    a one-line error when it tries to publish.
    """
    with engine_for(url) as engine:
        require_head(engine)
        with engine.begin() as connection:
            removed = loading_models(connection)
            for left in removed:
                remove_loading_model(connection, left.model_id)
    return [f"removed: {left.describe()}" for left in removed]

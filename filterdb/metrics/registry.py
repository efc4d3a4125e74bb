"""The one list of layer metrics: name, version, documentation, eps-dependence, pooling.

Everything that names the metrics reads it: the kernels (:mod:`filterdb.metrics.layer`),
the cache key (:mod:`filterdb.metrics.cache`), the ``v_layer_metrics`` columns
(:mod:`filterdb.warehouse.views`), the depth profile and the reports. It is plain data and
imports nothing of filterdb, so the warehouse's view catalogue can read it too.

Versions: bump a metric's version whenever its definition changes (SPEC section 5); that
invalidates its cached values. The cache keeps the version in its key: ``filterdb metrics``
computes a metric again when its stored version is not the current one, and the depth
profile reads only the current one. ``v_layer_metrics`` picks values by their parameters,
not their version (a view cannot read this module), so a bump to N ships with an Alembic
migration that deletes the metric's older rows,
``DELETE FROM metric_cache WHERE metric = '<name>' AND version < N``: a database at head
then never shows a stale value, only NULL until ``filterdb metrics`` runs.
"""

from __future__ import annotations

from dataclasses import dataclass

# The sparsity threshold of the paper (SPEC section 5); v_layer_metrics shows the values
# computed with it (other thresholds are in metric_cache).
DEFAULT_SPARSITY_EPS = 0.01


@dataclass(frozen=True)
class Metric:
    """One per-layer metric.

    ``pooling`` names what a depth bin weights the metric's layer values by (SPEC section 5,
    depth bins: sum(value x support) / sum(support)); ``None`` for metrics kept per layer
    only. ``eps_dependent`` metrics depend on the sparsity threshold, which their cache key
    carries.
    """

    name: str
    version: int
    doc: str
    eps_dependent: bool
    pooling: str | None


METRICS: dict[str, Metric] = {
    metric.name: metric
    for metric in (
        Metric(
            "sparsity",
            1,
            "Share of filters whose max |w| is at most eps x the layer max (eps 0.01).",
            eps_dependent=True,
            pooling="filters",
        ),
        Metric(
            "variance_entropy",
            1,
            "Variance entropy (log10) of all filters, from 0 to log10 9.",
            eps_dependent=False,
            pooling="filters",
        ),
        Metric(
            "variance_entropy_norm",
            1,
            "variance_entropy / expected entropy of random filters.",
            eps_dependent=False,
            pooling="filters",
        ),
        Metric(
            "variance_entropy_clean",
            1,
            "Variance entropy of the non-sparse filters.",
            eps_dependent=True,
            pooling="non-sparse filters",
        ),
        Metric(
            "variance_entropy_clean_norm",
            1,
            "variance_entropy_clean / expected random entropy.",
            eps_dependent=True,
            pooling="non-sparse filters",
        ),
        Metric(
            "variance_entropy_scaled",
            1,
            "Variance entropy of non-sparse filters scaled to max |w| 1.",
            eps_dependent=True,
            pooling="non-sparse filters",
        ),
        Metric(
            "variance_entropy_scaled_norm",
            1,
            "variance_entropy_scaled / expected random entropy.",
            eps_dependent=True,
            pooling="non-sparse filters",
        ),
        Metric(
            "orthogonality",
            1,
            "1 - mean |off-diagonal| cosine between output-channel kernels.",
            eps_dependent=False,
            pooling="output channels",
        ),
        Metric("l1", 1, "L1 norm of all weights of the layer.", eps_dependent=False, pooling=None),
        Metric("l2", 1, "L2 norm of all weights of the layer.", eps_dependent=False, pooling=None),
    )
}

# The metrics a depth bin pools, in registry order: the depth profile's and reports' columns.
POOLED_METRICS: tuple[str, ...] = tuple(m.name for m in METRICS.values() if m.pooling)


def metric_params(metric: str, *, eps: float) -> str:
    """The cache key's parameter text of ``metric``: ``eps=<eps>`` or empty."""
    return f"eps={float(eps)!r}" if METRICS[metric].eps_dependent else ""

"""Metrics over stored filters (SPEC section 5): pure functions on weights and filter arrays.

:mod:`filterdb.metrics.layer` holds the per-layer metrics (sparsity, variance entropy and
its variants, orthogonality, norms) and their version numbers.
"""

from filterdb.metrics.layer import METRIC_VERSIONS, MetricValue, layer_metrics

__all__ = ["METRIC_VERSIONS", "MetricValue", "layer_metrics"]

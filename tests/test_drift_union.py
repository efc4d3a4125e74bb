"""The report's drift series from one preallocated union equals the pooled groups' series.

The oracle is the general path: :func:`scaled_filters_by`'s groups concatenated, and
:func:`drift_series` of the groups themselves. Compared bit for bit: the union's layout
(column-major) and the missing copies must not change a value.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from test_export import store

from filterdb.analysis.groups import scaled_filters_by, scaled_union_by, stored_layers
from filterdb.metrics.drift import drift_series, drift_series_of_union


def bits(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array).view(np.uint64)


def test_scaled_union_is_the_concatenated_groups_bit_for_bit(db_url, tmp_path):
    store(db_url, tmp_path)
    layers = stored_layers(url=db_url).with_columns(
        (pl.col("model_name") + "|" + pl.col("conv_depth").cast(pl.String)).alias("group")
    )
    groups = scaled_filters_by(layers, "group", url=db_url, eps=0.3)
    # Reversed: the union follows the order asked for, not the order of reading; a name
    # without layers holds no rows, a group left out of the order is left out.
    order = [*sorted(groups, reverse=True)[:-1], "nowhere"]
    union, sizes = scaled_union_by(layers, "group", order, url=db_url, eps=0.3)
    expected = np.concatenate([groups.get(name, np.empty((0, 9))) for name in order])
    assert sizes == {name: len(groups.get(name, ())) for name in order}
    assert sizes["nowhere"] == 0 and min(sizes[name] for name in order[:-1]) > 0
    # Column-major: each weight's column contiguous, as every later pass reads it.
    assert union.shape == expected.shape and union.flags.f_contiguous
    assert np.array_equal(bits(union), bits(expected))


def test_drift_series_of_a_union_equals_the_series_of_its_groups():
    rng = np.random.default_rng(3)
    groups = [rng.normal(size=(n, 9)) for n in (40, 25, 0, 30, 3000, 2000)]
    labels = ["first", "(0.0, 0.1]", "(0.9, 1.0]"]
    expected = drift_series(
        {label: (groups[2 * i], groups[2 * i + 1]) for i, label in enumerate(labels)}
    )
    union = np.concatenate(groups)
    kept = union.copy()
    series = drift_series_of_union(union, [len(g) for g in groups], labels)
    assert np.array_equal(bits(union), bits(kept))  # only read
    assert series.values == expected.values and series.skipped == expected.skipped == (
        "(0.0, 0.1]",
    )
    assert series.nulls == expected.nulls and series.nulls["(0.9, 1.0]"].subsampled
    assert (series.lo, series.hi) == (expected.lo, expected.hi)
    assert np.array_equal(bits(series.basis.components), bits(expected.basis.components))


def test_drift_series_of_a_union_refuses_sizes_that_do_not_split_it():
    union = np.random.default_rng(4).normal(size=(30, 9))
    with pytest.raises(ValueError, match="do not split 30 filters"):
        drift_series_of_union(union, [10, 10], ["first"])
    with pytest.raises(ValueError, match="two groups for each of 2 labels"):
        drift_series_of_union(union, [10, 20], ["first", "last"])

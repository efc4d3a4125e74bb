"""PCA and drift of groups of stored layers on a Dask engine, from per-file partials.

The client maps the layers to lake files (syncing the lake first), the workers compute
per file what adds up (:mod:`filterdb.metrics.partials`, tasks in
:mod:`filterdb.metrics.tasks`), the partials are combined in a tree on the cluster
(:data:`TREE_FAN_IN` at a time), and the client does the last, small steps: the 9x9
eigen-decomposition, the sign rule, the range, densities and KL.

The permutation null of a pair needs the pair's coefficients, not partials: of at most
:data:`~filterdb.metrics.drift.NULL_MAX_FILTERS` filters (a seeded subsample above that).
Which rows the subsample takes depends only on the group sizes and the seed, so the
client draws them as :func:`~filterdb.metrics.drift.permutation_null` would, the workers
hand back those scaled filters during the second pass, and the null is computed on the
client by :func:`~filterdb.metrics.drift.permutation_null` itself, continuing the same
random stream: the null of the local path, on the engine's basis.

Results equal the local path's to about 1e-15 relative (the combination rounds
differently from one pooled array): the sizes, the sign rule and, but for a coefficient
within rounding of a bin edge, the histogram counts are identical.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from filterdb.errors import NoPCA
from filterdb.lake.write import sync_lake
from filterdb.metrics import partials, tasks
from filterdb.metrics.cache import default_lake
from filterdb.metrics.drift import (
    BINS,
    NULL_PERMUTATIONS,
    NULL_SEED,
    DriftMatrix,
    DriftNull,
    DriftSeries,
    NullDraw,
    _distributions_from_counts,
    _symmetric_kl,
    null_draws,
    null_of,
)
from filterdb.metrics.engine import dask_client, parse_engine
from filterdb.metrics.pca import PCAResult, orient, require_fittable, unoriented_basis
from filterdb.metrics.registry import DEFAULT_SPARSITY_EPS

if TYPE_CHECKING:
    from distributed import Client, Future

# Partials combined per reduce task: a tree of depth log_8(files).
TREE_FAN_IN = 8


@dataclass(frozen=True)
class _Plan:
    """The layers of the groups, by lake file, and each group's layers in read order."""

    location: str
    by_file: dict[str, list[dict]]
    group_layers: list[list[int]]


@dataclass(frozen=True)
class _Union:
    basis: PCAResult
    lo: float
    hi: float
    sizes: list[int]
    counts: np.ndarray | None
    nulls: dict[object, DriftNull]


def pca_on_engine(
    layers: pl.DataFrame,
    *,
    url: str | None = None,
    engine: str | None = None,
    lake: str | Path | None = None,
    eps: float = DEFAULT_SPARSITY_EPS,
) -> PCAResult:
    """:func:`~filterdb.metrics.pca.fit_pca` of the scaled non-sparse filters of ``layers``
    (rows of ``v_layers``), computed on ``engine`` from the lake at ``lake``.

    Raises :class:`~filterdb.errors.NoPCA` as :func:`fit_pca` does.
    """
    plan = _plan(layers, [0] * layers.height, 1, url=url, lake=lake)
    return _run(plan, engine, eps=eps, bins=None, null_pairs=None).basis


def drift_matrix_on_engine(
    layers: pl.DataFrame,
    keys: Sequence[str],
    names: Sequence[str],
    *,
    url: str | None = None,
    engine: str | None = None,
    lake: str | Path | None = None,
    eps: float = DEFAULT_SPARSITY_EPS,
    bins: int = BINS,
    n_permutations: int = NULL_PERMUTATIONS,
    seed: int = NULL_SEED,
) -> DriftMatrix:
    """:func:`~filterdb.metrics.drift.drift_matrix` of the groups ``names`` (in that order),
    layer i of ``layers`` belonging to group ``keys[i]``, computed on ``engine``."""
    plan = _plan(layers, [list(names).index(key) for key in keys], len(names), url=url, lake=lake)

    def null_pairs(sizes: list[int]) -> dict[object, tuple[int, int, object]]:
        kept = [g for g, size in enumerate(sizes) if size]
        return {
            (i, j): (kept[i], kept[j], (seed, i, j))
            for i in range(len(kept))
            for j in range(i + 1, len(kept))
        }

    union = _run(
        plan,
        engine,
        eps=eps,
        bins=bins,
        null_pairs=null_pairs if n_permutations else None,
        n_permutations=n_permutations,
    )
    kept = [g for g, size in enumerate(union.sizes) if size]
    distributions = [_distributions(union, g, bins) for g in kept]
    matrix = np.zeros((len(kept), len(kept)))
    for i in range(len(kept)):
        for j in range(i + 1, len(kept)):
            matrix[i, j] = matrix[j, i] = _symmetric_kl(
                distributions[i], distributions[j], union.basis.ratio
            )
    return DriftMatrix(
        names=tuple(names[g] for g in kept),
        matrix=matrix,
        n_filters=tuple(union.sizes[g] for g in kept),
        skipped=tuple(names[g] for g, size in enumerate(union.sizes) if not size),
        basis=union.basis,
        lo=union.lo,
        hi=union.hi,
        nulls=union.nulls,
    )


def drift_series_on_engine(
    layers: pl.DataFrame,
    keys: Sequence[str],
    pairs: Mapping[str, tuple[str, str]],
    *,
    url: str | None = None,
    engine: str | None = None,
    lake: str | Path | None = None,
    eps: float = DEFAULT_SPARSITY_EPS,
    bins: int = BINS,
    n_permutations: int = NULL_PERMUTATIONS,
    seed: int = NULL_SEED,
) -> tuple[DriftSeries, dict[str, int]]:
    """:func:`~filterdb.metrics.drift.drift_series` of ``pairs`` (label to the two group
    names), layer i of ``layers`` belonging to group ``keys[i]``, computed on ``engine``;
    and each group's number of scaled non-sparse filters (a group no layer belongs to is
    empty). The :class:`~filterdb.errors.NoPCA` it raises carries those sizes too, as
    ``group_sizes`` (a list in ``pairs`` order)."""
    names = [name for pair in pairs.values() for name in pair]
    plan = _plan(layers, [names.index(key) for key in keys], len(names), url=url, lake=lake)
    labels = list(pairs)

    def null_pairs(sizes: list[int]) -> dict[object, tuple[int, int, object]]:
        return {
            label: (2 * index, 2 * index + 1, (seed, index))
            for index, label in enumerate(labels)
            if sizes[2 * index] and sizes[2 * index + 1]
        }

    union = _run(
        plan,
        engine,
        eps=eps,
        bins=bins,
        null_pairs=null_pairs if n_permutations else None,
        n_permutations=n_permutations,
    )
    values, skipped = {}, []
    for index, label in enumerate(labels):
        first, second = 2 * index, 2 * index + 1
        if not (union.sizes[first] and union.sizes[second]):
            skipped.append(label)
            continue
        values[label] = _symmetric_kl(
            _distributions(union, first, bins),
            _distributions(union, second, bins),
            union.basis.ratio,
        )
    series = DriftSeries(
        values=values,
        skipped=tuple(skipped),
        basis=union.basis,
        lo=union.lo,
        hi=union.hi,
        nulls=union.nulls,
    )
    return series, dict(zip(names, union.sizes, strict=True))


def _distributions(union: _Union, group: int, bins: int) -> np.ndarray:
    widths = np.diff(np.linspace(union.lo, union.hi, bins + 1))
    return _distributions_from_counts(union.counts[group], union.sizes[group], widths, bins)


def _plan(
    layers: pl.DataFrame,
    groups: Sequence[int],
    n_groups: int,
    *,
    url: str | None,
    lake: str | Path | None,
) -> _Plan:
    """The lake (brought up to date) and, per file, its layers of ``layers``."""
    location = str(lake or default_lake(url))
    manifest = sync_lake(
        url=url, lake=location, models=layers["model_name"].unique().sort().to_list()
    ).manifest
    by_file: dict[str, list[dict]] = {}
    group_layers: list[list[int]] = [[] for _ in range(n_groups)]
    columns = layers.select("layer_id", "model_id", "n_filters", "max_abs")
    for (layer_id, model_id, n_filters, max_abs), group in zip(
        columns.iter_rows(), groups, strict=True
    ):
        files = manifest["models"][str(model_id)]["files"]
        file = next(f["path"] for f in files if f["min_layer_id"] <= layer_id <= f["max_layer_id"])
        by_file.setdefault(file, []).append(
            {"layer_id": layer_id, "n_filters": n_filters, "max_abs": max_abs, "group": group}
        )
        group_layers[group].append(layer_id)
    return _Plan(location, by_file, group_layers)


def _run(
    plan: _Plan,
    engine: str | None,
    *,
    eps: float,
    bins: int | None,
    null_pairs: Callable[[list[int]], dict[object, tuple[int, int, object]]] | None,
    n_permutations: int = NULL_PERMUTATIONS,
) -> _Union:
    """The three passes over the plan's files; histograms only when ``bins`` is given."""
    where = parse_engine(engine)
    with dask_client(where) as client:
        # Each file is read and scaled once; the passes run where its arrays lie.
        scaled = [
            client.submit(tasks.file_scaled, plan.location, file, layers, eps=eps, pure=False)
            for file, layers in plan.by_file.items()
        ]
        moments = _tree_reduce(
            client,
            [client.submit(tasks.scaled_moments, part, pure=False) for part in scaled],
            partials.combine_moments,
        )
        sizes = [sum(moments.kept[layer] for layer in group) for group in plan.group_layers]
        try:
            require_fittable(
                moments.n,
                finite=moments.finite,
                identical=moments.n > 0 and bool(np.all(moments.low == moments.high)),
            )
            basis = unoriented_basis(moments.mean, moments.scatter, moments.n)  # the 9x9 step
        except NoPCA as error:
            error.group_sizes = sizes  # what a caller reports beside the missing drift
            raise
        draws = null_draws(null_pairs(sizes), sizes) if null_pairs else {}
        wanted = _wanted_rows(plan, moments.kept, draws)
        coefficients = [
            client.submit(tasks.scaled_coefficients, part, basis=basis, pure=False)
            for part in scaled
        ]
        extremes = _tree_reduce(
            client,
            [
                client.submit(
                    tasks.coefficient_extremes,
                    values,
                    part,
                    rows={
                        lay["layer_id"]: wanted[lay["layer_id"]]
                        for lay in layers
                        if lay["layer_id"] in wanted
                    },
                    pure=False,
                )
                for values, part, layers in zip(
                    coefficients, scaled, plan.by_file.values(), strict=True
                )
            ],
            partials.combine_extremes,
        )
        spans = [client.submit(tasks.spans_of, part, pure=False) for part in scaled]
        del scaled  # the scaled filters may go: the histograms need the coefficients only
        basis, signs, lo, hi = orient(basis, extremes.low, extremes.high)
        counts = None
        if bins is not None:
            counts = _tree_reduce(
                client,
                [
                    client.submit(
                        tasks.coefficient_histograms,
                        values,
                        layout,
                        signs=signs,
                        lo=lo,
                        hi=hi,
                        bins=bins,
                        n_groups=len(plan.group_layers),
                        pure=False,
                    )
                    for values, layout in zip(coefficients, spans, strict=True)
                ],
                partials.combine_counts,
            )
    nulls = {}
    if draws:
        rows = _group_rows(plan, moments.kept, wanted, extremes.rows)
        for key, draw in draws.items():
            nulls[key] = null_of(
                draw,
                basis.coefficients(_rows_at(rows[draw.a], draw.rows_a)),
                basis.coefficients(_rows_at(rows[draw.b], draw.rows_b)),
                lo=lo,
                hi=hi,
                ratios=basis.ratio,
                bins=bins,
                n_permutations=n_permutations,
            )
    return _Union(basis=basis, lo=lo, hi=hi, sizes=sizes, counts=counts, nulls=nulls)


def _tree_reduce(client: Client, futures: list[Future], combine: Callable) -> object:
    """``combine`` the results of ``futures`` on the cluster, :data:`TREE_FAN_IN` at a time."""
    while len(futures) > 1:
        futures = [
            client.submit(combine, *futures[start : start + TREE_FAN_IN], pure=False)
            for start in range(0, len(futures), TREE_FAN_IN)
        ]
    return futures[0].result()


def _group_offsets(plan: _Plan, kept: dict[int, int], group: int) -> np.ndarray:
    return np.cumsum([0, *(kept[layer] for layer in plan.group_layers[group])])


def _wanted_rows(
    plan: _Plan, kept: dict[int, int], draws: dict[object, NullDraw]
) -> dict[int, np.ndarray]:
    """Per layer_id, the sorted indices among its non-sparse filters that a null uses."""
    per_group: dict[int, list[np.ndarray]] = {}
    for draw in draws.values():
        per_group.setdefault(draw.a, []).append(draw.rows_a)
        per_group.setdefault(draw.b, []).append(draw.rows_b)
    wanted: dict[int, np.ndarray] = {}
    for group, indices in per_group.items():
        rows = np.unique(np.concatenate(indices))
        offsets = _group_offsets(plan, kept, group)
        for position, layer in enumerate(plan.group_layers[group]):
            start, stop = np.searchsorted(rows, offsets[position : position + 2])
            if stop > start:
                wanted[layer] = rows[start:stop] - offsets[position]
    return wanted


def _group_rows(
    plan: _Plan, kept: dict[int, int], wanted: dict[int, np.ndarray], gathered: dict
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per group, the sorted group indices gathered and their (m, 9) scaled filters."""
    rows = {}
    for group, layers in enumerate(plan.group_layers):
        offsets = _group_offsets(plan, kept, group)
        present = [(position, layer) for position, layer in enumerate(layers) if layer in wanted]
        if present:
            rows[group] = (
                np.concatenate([offsets[p] + wanted[layer] for p, layer in present]),
                np.concatenate([gathered[layer] for _, layer in present]),
            )
    return rows


def _rows_at(rows: tuple[np.ndarray, np.ndarray], indices: np.ndarray) -> np.ndarray:
    gathered, filters = rows
    return filters[np.searchsorted(gathered, indices)]

"""Partial group statistics that add up: PCA and drift over many files (SPEC section 5).

A distributed engine cannot pool a group's scaled non-sparse filters in one array, so it
computes per file what adds up, combines the partials in a tree and finishes on the
client, in three passes over the files:

1. :class:`Moments`: count, mean and scatter (sum of outer products of the centred
   filters) of the union, combined with Chan et al.'s pairwise update, which stays
   accurate where raw sums of squares would cancel; the client's 9x9 eigen-decomposition
   (:func:`filterdb.metrics.pca.unoriented_basis`) gives the basis.
2. :class:`Extremes`: per component the smallest and largest coefficient on that basis,
   which decide the SPEC's sign rule and the histogram range
   (:func:`filterdb.metrics.pca.orient`); the same pass gathers the few rows a
   permutation null needs.
3. Histogram counts per group and coefficient on the oriented basis and range; counts add
   exactly, so each group's 70-bin histograms are those of its pooled filters.

A single file gives the local result bit for bit; more files differ from it only by the
rounding of the combination (about 1e-15 relative). These are pure functions on numpy
arrays: workers import them, never the database.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from filterdb.metrics.pca import N_WEIGHTS, all_finite, moments


@dataclass(frozen=True)
class Moments:
    """Count, mean and scatter of some scaled non-sparse filters, and what NoPCA checks.

    Attributes
    ----------
    n : int
        Number of filters.
    mean : (9,) float64
    scatter : (9, 9) float64
        Sum of outer products of the filters minus ``mean``.
    low, high : (9,) float64
        Smallest and largest value of each weight (all equal: identical filters).
    finite : bool
        Whether every weight is finite.
    kept : dict of int to int
        Non-sparse filters per layer_id (where a permutation null's rows lie).
    """

    n: int
    mean: np.ndarray
    scatter: np.ndarray
    low: np.ndarray
    high: np.ndarray
    finite: bool = True
    kept: dict[int, int] = field(default_factory=dict)


def moments_of(scaled: np.ndarray, *, kept: dict[int, int] | None = None) -> Moments:
    """The :class:`Moments` of (n, 9) scaled filters, as :func:`fit_pca` computes them
    (:func:`filterdb.metrics.pca.moments`)."""
    n = len(scaled)
    if n == 0:
        return Moments(
            0,
            np.zeros(N_WEIGHTS),
            np.zeros((N_WEIGHTS, N_WEIGHTS)),
            np.full(N_WEIGHTS, np.inf),
            np.full(N_WEIGHTS, -np.inf),
            kept=dict(kept or {}),
        )
    mean, scatter, low, high = moments(scaled)  # the local kernel: one file, the same bits
    return Moments(
        n=n,
        mean=mean,
        scatter=scatter,
        low=low,
        high=high,
        finite=all_finite(low, high),
        kept=dict(kept or {}),
    )


def combine_moments(*parts: Moments) -> Moments:
    """The :class:`Moments` of the union of ``parts`` (Chan, Golub and LeVeque's update)."""
    total = parts[0]
    for part in parts[1:]:
        n = total.n + part.n
        if part.n == 0 or total.n == 0:
            chosen = part if total.n == 0 else total
            mean, scatter = chosen.mean, chosen.scatter
        else:
            delta = part.mean - total.mean
            mean = total.mean + delta * (part.n / n)
            scatter = total.scatter + part.scatter + np.outer(delta, delta) * (total.n * part.n / n)
        total = Moments(
            n=n,
            mean=mean,
            scatter=scatter,
            low=np.minimum(total.low, part.low),
            high=np.maximum(total.high, part.high),
            finite=total.finite and part.finite,
            kept=total.kept | part.kept,
        )
    return total


@dataclass(frozen=True)
class Extremes:
    """Per component, the smallest and largest coefficient; and gathered rows.

    Attributes
    ----------
    low, high : (9,) float64
        Min and max of each coefficient over the filters seen.
    rows : dict of int to (m, 9) float64
        Per layer_id, the scaled filters asked for (in the order asked).
    """

    low: np.ndarray
    high: np.ndarray
    rows: dict[int, np.ndarray] = field(default_factory=dict)


def extremes_of(coefficients: np.ndarray, rows: dict[int, np.ndarray] | None = None) -> Extremes:
    """The :class:`Extremes` of (n, 9) coefficients."""
    if len(coefficients) == 0:
        return Extremes(np.full(N_WEIGHTS, np.inf), np.full(N_WEIGHTS, -np.inf), dict(rows or {}))
    return Extremes(coefficients.min(axis=0), coefficients.max(axis=0), dict(rows or {}))


def combine_extremes(*parts: Extremes) -> Extremes:
    """The :class:`Extremes` of the union of ``parts``."""
    rows: dict[int, np.ndarray] = {}
    for part in parts:
        rows |= part.rows
    return Extremes(
        np.min([part.low for part in parts], axis=0),
        np.max([part.high for part in parts], axis=0),
        rows,
    )


def combine_counts(*parts: np.ndarray) -> np.ndarray:
    """The sum of histogram counts (exact)."""
    return np.sum(parts, axis=0)

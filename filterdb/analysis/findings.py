"""The robustness paper's claims, each answered from the statistics of robust vs normal.

Pure functions on the frame of
:func:`filterdb.analysis.comparison.robust_vs_normal_statistics` (one row per metric and
depth bin); nothing here reads a database. Each claim is checked per metric and gets a
verdict, ``supported``, ``contradicted``, ``not significant`` or ``not testable``, with
the reason and the numbers behind it. The rules, in the order they are applied:

A bin is *tested* when its Holm-adjusted p-value (``p_holm``, Holm over the metric's
depth bins) is defined. A bin *can reach* significance when the smallest p its test can
give at its sample sizes (``min_p``) is below 0.05. A bin is *significant* when
``p_holm`` < 0.05. A bin's direction is the sign of its effect size (positive: robust
values tend to be larger).

Directional claims (``more_diverse``: higher ``variance_entropy_scaled`` and higher
``variance_entropy``; ``less_sparse``: lower ``sparsity``; ``more_orthogonal``: higher
``orthogonality``):

1. ``not testable`` when the metric is sparsity and every model's value is 0 in every
   bin on both sides (no sparse filter in either group); when no bin is tested (the
   reason is the bins' note, e.g. every paired difference is 0); or when no tested bin
   can reach significance (e.g. "1 pair: the smallest possible p is 1").
2. ``supported`` when at least one bin is significant in the claimed direction and none
   against it.
3. ``contradicted`` when at least one bin is significant against the claimed direction
   and none for it.
4. ``not significant`` otherwise (no significant bin, or significant bins both ways).

The direction shown is the sign of the median effect size over the tested bins
(``no difference`` at 0); ``bins_agreeing`` counts the tested bins whose effect has the
claimed sign; ``median_difference`` and ``effect_size`` are medians over the tested bins;
``p_adjusted`` is the smallest ``p_holm`` among the bins that decided the verdict (the
significant bins for a supported or contradicted claim, else every tested bin).

Location claims (``deepest_differ_most``: the largest robust-normal difference of a
metric is in the deepest depth bin; ``first_differs_most``: in the first layer's bin),
for each of the four metrics above, comparing bins by |effect size| (which lies in
[0, 1] for every metric, so bins are comparable):

1. ``not testable`` when the target bin is not tested, when fewer than two bins are
   tested, or when no tested bin can reach significance.
2. ``supported`` when the target bin's |effect| is the largest of the tested bins (ties
   count) and the target bin is significant.
3. ``contradicted`` when another bin has a larger |effect| and is significant.
4. ``not significant`` otherwise.

Here direction, ``median_difference``, ``effect_size`` and ``p_adjusted`` are the target
bin's; ``bins_agreeing`` counts the tested bins whose |effect| is at most the target's
(the target included).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import polars as pl

from filterdb.analysis.comparison import PAIRED_TEST, SIGNIFICANCE_LEVEL
from filterdb.analysis.pairing import Pairing

SUPPORTED = "supported"
CONTRADICTED = "contradicted"
NOT_SIGNIFICANT = "not significant"
NOT_TESTABLE = "not testable"
VERDICTS = (SUPPORTED, CONTRADICTED, NOT_SIGNIFICANT, NOT_TESTABLE)
ROBUST_HIGHER, ROBUST_LOWER, NO_DIFFERENCE = "robust higher", "robust lower", "no difference"

# claim -> (metric, claimed sign of robust - normal), as the paper states them.
DIRECTIONAL_CLAIMS: tuple[tuple[str, str, int], ...] = (
    ("more_diverse", "variance_entropy_scaled", +1),
    ("more_diverse", "variance_entropy", +1),
    ("less_sparse", "sparsity", -1),
    ("more_orthogonal", "orthogonality", +1),
)
CLAIM_METRICS = tuple(dict.fromkeys(metric for _, metric, _ in DIRECTIONAL_CLAIMS))
LOCATION_CLAIMS = ("deepest_differ_most", "first_differs_most")
CLAIM_TEXT = {
    "more_diverse": "robust filters are more diverse (higher {metric})",
    "less_sparse": "robust layers are less sparse (lower {metric})",
    "more_orthogonal": "robust layers are more orthogonal (higher {metric})",
    "deepest_differ_most": "the largest difference in {metric} is in the deepest layers",
    "first_differs_most": "the largest difference in {metric} is in the first layer",
}
RULES = (
    "A depth bin is tested when its Holm-adjusted p-value (Holm over the metric's bins) "
    "is defined, and significant when that p-value is below 0.05; its direction is the "
    "sign of its effect size. A claim about a direction is not testable when no bin is "
    "tested, when no bin's test can reach p < 0.05 at its sample sizes, or (sparsity) when "
    "no model has a sparse filter; it is supported when at least one bin is significant "
    "in the claimed direction and none against, contradicted when at least one is "
    "significant against and none for, and not significant otherwise. A claim about where "
    "the difference is largest compares bins by the size of the effect: supported when "
    "the target bin (the first layer, or the deepest bin) has the largest effect and is "
    "significant, contradicted when another bin has a larger effect and is significant, "
    "not significant otherwise, and not testable without the target bin, without a second "
    "tested bin, or when no bin can reach p < 0.05. Numbers: median difference of the "
    "medians (robust - normal) and median effect size over the tested bins, or the target "
    "bin's; the adjusted p is the smallest Holm-adjusted p of the bins that decided."
)

FINDINGS_SCHEMA = {
    "scope": pl.String,
    "claim": pl.String,
    "metric": pl.String,
    "verdict": pl.String,
    "direction": pl.String,
    "bins_agreeing": pl.Int64,
    "bins_tested": pl.Int64,
    "median_difference": pl.Float64,
    "effect_size": pl.Float64,
    "p_adjusted": pl.Float64,
    "reason": pl.String,
}


@dataclass(frozen=True)
class Finding:
    """One claim's verdict on one metric in one scope, with the numbers behind it.

    ``scope`` is ``all``, ``training_dataset=<name>`` or ``family=<name>``. Floats are NaN
    where undefined (written as null in JSON).
    """

    scope: str
    claim: str
    metric: str
    verdict: str
    direction: str
    bins_agreeing: int
    bins_tested: int
    median_difference: float
    effect_size: float
    p_adjusted: float
    reason: str

    def sentence(self) -> str:
        """The finding as one sentence for people."""
        claim = CLAIM_TEXT[self.claim].format(metric=self.metric)
        numbers = [f"{self.direction} in {self.bins_agreeing} of {self.bins_tested} bins"]
        if self.claim in LOCATION_CLAIMS:
            numbers = [f"{self.direction}; larger than or equal to {self.bins_agreeing - 1} "]
            numbers[0] += f"of the other {self.bins_tested - 1} tested bins"
        for name, value in (
            ("median difference", self.median_difference),
            ("effect size", self.effect_size),
            ("adjusted p", self.p_adjusted),
        ):
            if not math.isnan(value):
                numbers.append(f"{name} {value:.3g}")
        return f"{claim}: {self.verdict} ({self.reason}; {', '.join(numbers)})."

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict: NaN as None."""
        return {
            key: None if isinstance(value, float) and math.isnan(value) else value
            for key, value in asdict(self).items()
        }


def findings(statistics: pl.DataFrame, *, scope: str = "all") -> list[Finding]:
    """Every claim's verdict on ``statistics`` (rules in the module docstring).

    ``statistics`` has the columns of
    :data:`filterdb.analysis.comparison.STATISTICS_SCHEMA`; metrics it lacks are not
    testable. Order: the directional claims, then the location claims per metric.
    """
    out = [
        directional_finding(statistics, claim, metric, sign, scope=scope)
        for claim, metric, sign in DIRECTIONAL_CLAIMS
    ]
    for claim in LOCATION_CLAIMS:
        out += [
            location_finding(statistics, claim, metric, scope=scope) for metric in CLAIM_METRICS
        ]
    return out


def findings_frame(found: Iterable[Finding]) -> pl.DataFrame:
    """Findings as a frame, columns :data:`FINDINGS_SCHEMA`."""
    return pl.DataFrame([asdict(f) for f in found], schema=FINDINGS_SCHEMA, orient="row")


def directional_finding(
    statistics: pl.DataFrame, claim: str, metric: str, sign: int, *, scope: str = "all"
) -> Finding:
    """The verdict on "robust values of ``metric`` are higher (``sign`` +1) or lower (-1)"."""
    rows = _rows(statistics, metric)
    tested = [r for r in rows if _defined(r["p_holm"])]
    effects = [r["effect_size"] for r in tested]

    def finding(verdict: str, reason: str, deciding: Sequence[dict]) -> Finding:
        median_effect = _median(effects)
        return Finding(
            scope=scope,
            claim=claim,
            metric=metric,
            verdict=verdict,
            direction=_direction(median_effect),
            bins_agreeing=int(sum(np.sign(e) == sign for e in effects)),
            bins_tested=len(tested),
            median_difference=_median([r["median_difference"] for r in tested]),
            effect_size=median_effect,
            p_adjusted=min((r["p_holm"] for r in deciding), default=math.nan),
            reason=reason,
        )

    untestable = _untestable(rows, tested, metric)
    if untestable:
        return finding(NOT_TESTABLE, untestable, tested)
    significant = [r for r in tested if r["p_holm"] < SIGNIFICANCE_LEVEL]
    agree = [r for r in significant if np.sign(r["effect_size"]) == sign]
    against = [r for r in significant if np.sign(r["effect_size"]) == -sign]
    if agree and not against:
        return finding(SUPPORTED, _significant_reason(agree, "in the claimed direction"), agree)
    if against and not agree:
        return finding(CONTRADICTED, _significant_reason(against, "against the claim"), against)
    if agree and against:
        reason = f"significant both ways: {len(agree)} bins for, {len(against)} against"
        return finding(NOT_SIGNIFICANT, reason, significant)
    return finding(NOT_SIGNIFICANT, f"no bin has adjusted p < {SIGNIFICANCE_LEVEL:g}", tested)


def location_finding(
    statistics: pl.DataFrame, claim: str, metric: str, *, scope: str = "all"
) -> Finding:
    """The verdict on "the largest difference in ``metric`` is in the deepest (or first) bin"."""
    rows = _rows(statistics, metric)
    tested = [r for r in rows if _defined(r["p_holm"]) and _defined(r["effect_size"])]
    if claim == "first_differs_most":
        target = next((r for r in tested if r["depth_bin_index"] == 0), None)
        where = "the first layer's bin"
    else:
        deeper = [r for r in rows if r["depth_bin_index"] > 0]
        deepest = deeper[-1] if deeper else None
        target = deepest if deepest is not None and deepest in tested else None
        where = f"the deepest bin ({deepest['depth_bin']})" if deepest else "the deepest bin"

    def finding(verdict: str, reason: str) -> Finding:
        size = abs(target["effect_size"]) if target else math.nan
        return Finding(
            scope=scope,
            claim=claim,
            metric=metric,
            verdict=verdict,
            direction=_direction(target["effect_size"]) if target else NO_DIFFERENCE,
            bins_agreeing=int(sum(abs(r["effect_size"]) <= size for r in tested)) if target else 0,
            bins_tested=len(tested),
            median_difference=target["median_difference"] if target else math.nan,
            effect_size=target["effect_size"] if target else math.nan,
            p_adjusted=target["p_holm"] if target else math.nan,
            reason=reason,
        )

    if target is None:
        return finding(NOT_TESTABLE, f"{where} is not tested" + _note_of(rows))
    if len(tested) < 2:
        return finding(NOT_TESTABLE, "one tested bin: nothing to compare it with")
    untestable = _untestable(rows, tested, metric)
    if untestable:
        return finding(NOT_TESTABLE, untestable)
    size = abs(target["effect_size"])
    larger = [r for r in tested if abs(r["effect_size"]) > size]
    significant = target["p_holm"] < SIGNIFICANCE_LEVEL
    if not larger and significant:
        return finding(SUPPORTED, f"{where} has the largest effect and is significant")
    larger_significant = [r for r in larger if r["p_holm"] < SIGNIFICANCE_LEVEL]
    if larger_significant:
        names = ", ".join(r["depth_bin"] for r in larger_significant)
        return finding(CONTRADICTED, f"significantly larger effects in bins {names}")
    if larger:
        names = ", ".join(r["depth_bin"] for r in larger)
        return finding(NOT_SIGNIFICANT, f"larger effects, none significant, in bins {names}")
    return finding(
        NOT_SIGNIFICANT, f"{where} has the largest effect but adjusted p >= {SIGNIFICANCE_LEVEL:g}"
    )


def _rows(statistics: pl.DataFrame, metric: str) -> list[dict]:
    return statistics.filter(pl.col("metric") == metric).sort("depth_bin_index").to_dicts()


def _defined(value: float | None) -> bool:
    return value is not None and not math.isnan(value)


def _median(values: Sequence[float]) -> float:
    return float(np.median(values)) if values else math.nan


def _direction(effect: float) -> str:
    if not _defined(effect) or effect == 0:
        return NO_DIFFERENCE
    return ROBUST_HIGHER if effect > 0 else ROBUST_LOWER


def _untestable(rows: list[dict], tested: list[dict], metric: str) -> str:
    """Why no verdict can be reached, or "" when one can."""
    if metric == "sparsity" and rows and all(_no_sparse_filter(r) for r in rows):
        return "no sparse filter in either group"
    if not rows:
        return f"no {metric} value in either group"
    if not tested:
        return "no bin could be tested" + _note_of(rows)
    if all(not r["min_p"] < SIGNIFICANCE_LEVEL for r in tested):
        best = min(tested, key=lambda r: r["min_p"])
        unit = "pair" if best["test"] == PAIRED_TEST else "model"
        n = best["n_test"]
        return f"{n} {unit}{'s' if n != 1 else ''}: the smallest possible p is {best['min_p']:.3g}"
    return ""


def _no_sparse_filter(row: dict) -> bool:
    return all(not _defined(row[side]) or row[side] == 0 for side in ("robust_max", "normal_max"))


def _note_of(rows: list[dict]) -> str:
    notes = sorted({r["note"] for r in rows if r["note"]})
    return f" ({notes[0]})" if len(notes) == 1 else ""


def _significant_reason(rows: list[dict], how: str) -> str:
    names = ", ".join(r["depth_bin"] for r in rows)
    plural = "bins" if len(rows) > 1 else "bin"
    return f"adjusted p < {SIGNIFICANCE_LEVEL:g} {how} in {plural} {names}"


def scoped_pairings(
    pairing: Pairing, family_of: Mapping[str, str | None]
) -> list[tuple[str, Pairing]]:
    """``pairing`` overall, then per training dataset and per architecture family.

    Scopes are ``all``, ``training_dataset=<name>`` (each dataset with at least one pair)
    and ``family=<name>`` (the robust model's family, from ``family_of``; pairs of an
    unknown family are in no family scope). A scope keeps the pairs it names; its
    unpaired and unresolved lists are empty (they belong to the whole report).
    """
    scopes = [("all", pairing)]
    for key, of_pair in (
        ("training_dataset", lambda pair: pair.dataset),
        ("family", lambda pair: family_of.get(pair.robust)),
    ):
        values = sorted({v for v in map(of_pair, pairing.pairs) if v is not None})
        for value in values:
            pairs = tuple(p for p in pairing.pairs if of_pair(p) == value)
            scopes.append((f"{key}={value}", Pairing(pairs, (), (), (), pairing.source)))
    return scopes

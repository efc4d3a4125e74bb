"""Per-layer metrics (SPEC section 5) against an independent numpy oracle and known answers.

The oracle (tests/oracles.py) is written from the SPEC text alone, without filterdb code: singular
values of the centred filter matrix for the entropies, explicit loops for orthogonality.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from oracles import ENTROPIES, oracle

from filterdb.errors import FilterdbError, MetricError
from filterdb.metrics.layer import (
    MetricValue,
    expected_random_entropy,
    is_sparse,
    layer_metrics,
    require_eps,
    scale_by_peak,
)
from filterdb.metrics.registry import METRICS, POOLED_METRICS
from filterdb.warehouse.views import METRIC_COLUMNS

EPS_DEPENDENT_METRICS = frozenset(name for name, metric in METRICS.items() if metric.eps_dependent)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
LOG10_9 = math.log10(9)
# Oracle agreement: 1e-6 relative; entropies of rank-deficient sets (m <= 9 filters) are 0
# up to rounding noise of about 1e-14 on both sides, hence the absolute floor.
RTOL, ATOL = 1e-6, 1e-9


# --- the oracle: SPEC section 5, restated in plain numpy -------------------------------


def assert_matches_oracle(weight, *, eps: float = 0.01, device: str = "cpu") -> None:
    got = layer_metrics(weight, eps=eps, device=device)
    expected = oracle(np.asarray(torch.as_tensor(weight).cpu()), eps=eps)
    assert list(got) == list(METRICS)
    for name, (value, support) in expected.items():
        assert got[name].support == support, name
        if value is None:
            assert got[name].value is None, name
        elif name == "sparsity":
            assert got[name].value == value
        else:
            np.testing.assert_allclose(got[name].value, value, rtol=RTOL, atol=ATOL, err_msg=name)


def assert_same_metrics(got, expected, *, exact: bool = False, skip=()) -> None:
    assert got.keys() == expected.keys()
    for name in got:
        if name in skip:
            continue
        a, b = got[name], expected[name]
        assert a.support == b.support, name
        if a.value is None or b.value is None or exact or name == "sparsity":
            assert a.value == b.value, name
        else:
            np.testing.assert_allclose(a.value, b.value, rtol=1e-9, atol=ATOL, err_msg=name)


def random_layer(seed: int, c_out: int, c_in: int, n_tiny: int, dtype=np.float32) -> np.ndarray:
    """Normal weights; the first ``n_tiny`` filters zero or 1e-4 small, so some are sparse."""
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((c_out, c_in, 3, 3))
    flat = weight.reshape(-1, 9)
    n_tiny = min(n_tiny, len(flat))
    flat[:n_tiny] *= rng.choice([0.0, 1e-4], size=(n_tiny, 1))
    return weight.astype(dtype)


layers = st.builds(
    random_layer,
    seed=st.integers(0, 2**32 - 1),
    c_out=st.integers(1, 12),
    c_in=st.integers(1, 5),
    n_tiny=st.integers(0, 8),
    dtype=st.sampled_from([np.float32, np.float64]),
)


# --- registry ------------------------------------------------------------------------------


def test_metric_names_are_the_view_columns():
    assert list(METRICS) == list(METRIC_COLUMNS)
    assert all(isinstance(m.version, int) and m.version >= 1 for m in METRICS.values())
    # Norms are per layer; every other metric is pooled into depth bins.
    assert tuple(name for name in METRICS if name not in ("l1", "l2")) == POOLED_METRICS
    assert {
        "sparsity",
        "variance_entropy_clean",
        "variance_entropy_clean_norm",
        "variance_entropy_scaled",
        "variance_entropy_scaled_norm",
    } == EPS_DEPENDENT_METRICS


@settings(max_examples=30, deadline=None)
@given(weight=layers, eps=st.sampled_from([0.0, 1e-3, 0.05, 0.3]))
def test_only_eps_dependent_metrics_change_with_eps(weight, eps):
    assert_same_metrics(
        layer_metrics(weight, eps=eps), layer_metrics(weight), skip=EPS_DEPENDENT_METRICS
    )


# --- against the oracle --------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=60, deadline=None)
@given(weight=layers, eps=st.sampled_from([0.01, 1e-5, 0.2]))
def test_random_layers_match_oracle(device, weight, eps):
    assert_matches_oracle(weight, eps=eps, device=device)


@pytest.fixture(scope="module")
def trained_convs() -> list[torch.Tensor]:
    """The 3x3 conv weights of a tiny net after a few SGD steps on random data."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3, padding=1, groups=2),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(16, 4),
    )
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    images, labels = torch.randn(64, 3, 8, 8), torch.randint(0, 4, (64,))
    for _ in range(20):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(images), labels).backward()
        optimizer.step()
    return [m.weight.detach().clone() for m in net if isinstance(m, torch.nn.Conv2d)]


@pytest.mark.parametrize("device", DEVICES)
def test_trained_layers_match_oracle(trained_convs, device):
    for weight in trained_convs:
        assert_matches_oracle(weight, device=device)
        pruned = weight.clone()
        pruned[0] = 0  # one pruned output channel: clean and scaled differ from all filters
        pruned[1, 0] *= 1e-3
        assert layer_metrics(pruned)["sparsity"].value > 0
        assert_matches_oracle(pruned, device=device)


# --- known answers -----------------------------------------------------------------------


def test_identical_kernels_have_zero_entropy():
    # Dyadic values and a power-of-two count: the mean is exact, the centred matrix is 0.
    exact = np.tile(np.arange(-4, 5, dtype=np.float32).reshape(3, 3) / 8, (4, 2, 1, 1))
    got = layer_metrics(exact)
    assert got["variance_entropy"].value == 0.0
    assert got["variance_entropy_norm"].value == 0.0
    assert got["orthogonality"].value == pytest.approx(0.0, abs=1e-12)  # identical rows
    # Any kernel: the centred rows are equal, a rank-1 set, so H is 0 up to rounding.
    kernel = np.random.default_rng(1).standard_normal((3, 3))
    for name in ENTROPIES:
        assert layer_metrics(np.tile(kernel, (5, 3, 1, 1)))[name].value == pytest.approx(
            0.0, abs=1e-12
        )


def test_entropy_of_evenly_spread_filters():
    basis = np.eye(9).reshape(9, 1, 3, 3)
    nine_directions = np.concatenate([basis, -basis])  # 18 filters, equal variance on 9 axes
    assert layer_metrics(nine_directions)["variance_entropy"].value == pytest.approx(LOG10_9)
    two_directions = np.concatenate([basis[:2], -basis[:2]])
    assert layer_metrics(two_directions)["variance_entropy"].value == pytest.approx(math.log10(2))


def test_orthonormal_kernels_have_orthogonality_one():
    basis = np.eye(9).reshape(9, 1, 3, 3)
    assert layer_metrics(basis)["orthogonality"].value == 1.0
    # Orthogonal rows of any length stay orthogonal after normalisation.
    q, _ = np.linalg.qr(np.random.default_rng(2).standard_normal((18, 5)))
    rows = q.T * np.array([[0.5], [3.0], [1.0], [7.0], [0.01]])
    assert layer_metrics(rows.reshape(5, 2, 3, 3))["orthogonality"].value == pytest.approx(1.0)


def test_zero_rows_add_one_each_to_orthogonality():
    rows = np.zeros((3, 1, 3, 3))
    rows[0, 0, 0, 0] = rows[1, 0, 1, 1] = 2.0  # two orthogonal rows and a zero row
    # |G - I| sums to 1 (the zero row's diagonal): 1 - 1 / (3 * 2)
    assert layer_metrics(rows)["orthogonality"].value == pytest.approx(1 - 1 / 6)


@pytest.mark.parametrize("c_out", [2, 3, 7])
def test_all_zero_layer(c_out):
    got = layer_metrics(torch.zeros(c_out, 2, 3, 3))
    assert got["sparsity"] == MetricValue(1.0, 2 * c_out)
    # G = 0, so |G - I| sums to C_out: orthogonality = 1 - C_out / (C_out (C_out - 1)).
    assert got["orthogonality"].value == pytest.approx(1 - 1 / (c_out - 1), abs=1e-15)
    assert got["variance_entropy"] == MetricValue(0.0, 2 * c_out)  # sum(v) = 0 -> H = 0
    assert math.copysign(1.0, got["variance_entropy"].value) == 1.0  # 0.0, not -0.0
    for name in ("variance_entropy_clean", "variance_entropy_scaled"):
        assert got[name] == MetricValue(None, 0)  # every filter is sparse
        assert got[f"{name}_norm"] == MetricValue(None, 0)
    assert got["l1"] == MetricValue(0.0, 18 * c_out)
    assert got["l2"] == MetricValue(0.0, 18 * c_out)


@pytest.mark.parametrize(
    ("c_out", "c_in", "entropy_is_null", "norm_is_null"),
    [(1, 1, True, True), (2, 1, False, True), (1, 2, False, True), (3, 1, False, False)],
)
def test_small_filter_counts_are_null(c_out, c_in, entropy_is_null, norm_is_null):
    weight = np.random.default_rng(3).standard_normal((c_out, c_in, 3, 3))
    got = layer_metrics(weight)
    for name in ENTROPIES:
        assert (got[name].value is None) == entropy_is_null
        assert (got[f"{name}_norm"].value is None) == norm_is_null
        assert got[name].support == c_out * c_in
    assert (got["orthogonality"].value is None) == (c_out < 2)
    assert got["sparsity"] == MetricValue(0.0, c_out * c_in)


def test_expected_random_entropy():
    # H_max(m) <= 0 below 3 filters (why the _norm variants are NULL there), positive from 3,
    # and it approaches L + b = 0.9513, just under log10 9, for many filters.
    assert expected_random_entropy(1) < 0 and expected_random_entropy(2) < 0
    assert expected_random_entropy(3) > 0
    assert expected_random_entropy(9) == pytest.approx(
        1.2618047 / (1 + math.exp(-0.88767525 * (math.log2(9) - 2.30436435))) - 0.31050834,
        rel=1e-14,
    )
    assert expected_random_entropy(2**30) == pytest.approx(1.2618047 - 0.31050834, abs=1e-6)


def layer_with_peaks(peaks: list[float], dtype) -> np.ndarray:
    """One filter per peak, (len(peaks), 1, 3, 3): the peak sits at a corner, signs alternate."""
    weight = np.zeros((len(peaks), 1, 3, 3), dtype=dtype)
    for i, peak in enumerate(peaks):
        weight[i, 0, 0, 0] = peak if i % 2 else -peak
        weight[i, 0, 2, 2] = peak / 4  # smaller entries do not matter
    return weight


def test_sparsity_counts_filters_at_most_eps_times_layer_max():
    # float64 weights: the implementation's threshold is the float64 product eps * max, so
    # a filter whose peak is that very product sits exactly on it. 0.01 is not exact in
    # binary, but 0.01 * 2.0 is computed exactly, and the layer max is at a negative weight.
    eps, layer_max = 0.01, 2.0
    at = eps * layer_max
    above = np.nextafter(at, np.inf)
    peaks = [0.0, at, at / 3, above, layer_max, 1.0, 0.5, above * 10]  # 3 of 8 sparse
    weight = layer_with_peaks(peaks, np.float64)
    assert weight.min() == -layer_max
    assert layer_metrics(weight, eps=eps)["sparsity"] == MetricValue(3 / 8, 8)
    assert_matches_oracle(weight, eps=eps)
    # "Less than" (CNN Filter DB) would not count the filter exactly at the threshold.
    assert layer_metrics(layer_with_peaks([at, layer_max], np.float64), eps=eps)[
        "sparsity"
    ].value == pytest.approx(1 / 2)


def test_sparsity_threshold_for_float32_weights():
    # float32 weights widen exactly to float64. With eps = 2**-7 and layer max 1 the
    # threshold is a float32 value, so a float32 filter can sit exactly on it.
    eps = 2.0**-7
    at = np.float32(eps)
    above = np.nextafter(at, np.float32(1))
    weight = layer_with_peaks([at, above, 1.0, 0.0], np.float32)
    assert layer_metrics(weight, eps=eps)["sparsity"].value == 2 / 4
    # eps = 0.01 has no float32 twin: float32(0.01) lies below the float64 threshold 0.01
    # and counts as sparse, the next float32 above it does not.
    near = np.float32(0.01)
    assert float(near) < 0.01
    weight = layer_with_peaks([near, np.nextafter(near, np.float32(1)), 1.0], np.float32)
    assert layer_metrics(weight, eps=0.01)["sparsity"].value == 1 / 3


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="3, 3"):
        layer_metrics(np.zeros((4, 2, 5, 5)))
    with pytest.raises(ValueError, match="3, 3"):
        layer_metrics(np.zeros((0, 2, 3, 3)))


BAD_EPS = [-0.1, -1e-300, math.inf, math.nan]


@pytest.mark.parametrize("eps", BAD_EPS)
def test_a_bad_eps_is_one_expected_error_everywhere(eps):
    peaks = np.ones(3)
    refusals = [
        lambda: require_eps(eps),
        lambda: is_sparse(peaks, 1.0, eps=eps),
        lambda: is_sparse(torch.from_numpy(peaks), 1.0, eps=eps),
        lambda: layer_metrics(np.ones((2, 2, 3, 3)), eps=eps),
    ]
    for refuse in refusals:
        with pytest.raises(MetricError, match="^sparsity eps must be finite and >= 0") as info:
            refuse()
        assert isinstance(info.value, FilterdbError)  # the CLI prints it in one line
        assert "\n" not in str(info.value)
    for good in (0.0, -0.0, 0.01, 1.0, 5.0):
        require_eps(good)


def test_numpy_and_torch_share_the_sparse_rule_and_the_scaling():
    filters = np.array([[3.0, -4.0] + [0.0] * 7, [0.0] * 9, [0.04, 0.0] + [0.0] * 7])
    peaks = np.array([4.0, 0.0, 0.04])
    expected_sparse = [False, True, True]  # 0.04 <= 0.01 * 4: at the threshold is sparse
    expected_scaled = [[0.75, -1.0] + [0.0] * 7, [0.0] * 9, [1.0] + [0.0] * 8]
    for kind in (np.asarray, torch.from_numpy):
        assert is_sparse(kind(peaks), 4.0, eps=0.01).tolist() == expected_sparse
        # One layer max per filter (a pooled group): each filter judged by its own layer.
        per_filter = kind(np.array([4.0, 1.0, 3.0]))
        assert is_sparse(kind(peaks), per_filter, eps=0.01).tolist() == [False, True, False]
        assert scale_by_peak(kind(filters), kind(peaks)).tolist() == expected_scaled


def assert_undefined(got: dict[str, MetricValue], c_out: int, c_in: int, n_kept: int) -> None:
    """Every value None; supports as for any layer (n_kept: the non-sparse filters)."""
    n = c_out * c_in
    assert list(got) == list(METRICS)
    expected = {"sparsity": n, "orthogonality": c_out, "l1": 9 * n, "l2": 9 * n}
    for name in ENTROPIES:
        kept = n if name == "variance_entropy" else n_kept
        expected[name] = expected[f"{name}_norm"] = kept
    assert got == {name: MetricValue(None, support) for name, support in expected.items()}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.filterwarnings("error")
def test_non_finite_weights_make_every_metric_null(device):
    weight = random_layer(4, c_out=6, c_in=3, n_tiny=4, dtype=np.float32)
    nan = weight.copy()
    nan[2, 1, 0, 0] = np.nan
    # With a NaN layer max no comparison holds: no filter is sparse, all 18 are kept.
    assert_undefined(layer_metrics(nan, device=device), 6, 3, n_kept=18)
    infinite = weight.copy()
    infinite[5, 0, 1, 1] = -np.inf
    # The layer max is inf: every finite peak is at most 0.01 x inf, and so is inf itself.
    assert_undefined(layer_metrics(infinite, device=device), 6, 3, n_kept=0)
    assert_undefined(layer_metrics(infinite, eps=0.0, device=device), 6, 3, n_kept=18)
    # One channel: the entropies would be None anyway, the supports are as usual.
    assert_undefined(layer_metrics(nan[2:3, 1:2], device=device), 1, 1, n_kept=1)


# --- properties ------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(weight=layers, scale=st.floats(1e-3, 1e3))
def test_positive_scaling_changes_only_norms(weight, scale):
    weight = weight.astype(np.float64)
    got, base = layer_metrics(weight * scale), layer_metrics(weight)
    assert_same_metrics(got, base, skip={"l1", "l2"})
    for name in ("l1", "l2"):
        np.testing.assert_allclose(got[name].value, base[name].value * scale, rtol=1e-12)


@settings(max_examples=40, deadline=None)
@given(weight=layers, data=st.data())
def test_channel_permutations_and_kernel_rotations_change_nothing(weight, data):
    c_out, c_in = weight.shape[:2]
    out_order = data.draw(st.permutations(range(c_out)))
    in_order = data.draw(st.permutations(range(c_in)))
    base = layer_metrics(weight)
    assert_same_metrics(layer_metrics(weight[out_order][:, in_order]), base)
    # Rotating every kernel the same way permutes the nine weight columns of all filters.
    assert_same_metrics(layer_metrics(np.rot90(weight, axes=(2, 3))), base)


@settings(max_examples=40, deadline=None)
@given(weight=layers, data=st.data())
def test_sparsity_and_entropy_depend_only_on_the_set_of_filters(weight, data):
    filters = weight.reshape(-1, 9)
    order = data.draw(st.permutations(range(len(filters))))
    shuffled = filters[order].reshape(-1, 1, 3, 3)  # other rows, other C_out
    base, got = layer_metrics(weight), layer_metrics(shuffled)
    assert_same_metrics(got, base, skip={"orthogonality", "l1", "l2"})


@settings(max_examples=40, deadline=None)
@given(weight=layers)
def test_entropy_lies_between_zero_and_log10_9(weight):
    for name, metric in layer_metrics(weight).items():
        if name in ENTROPIES and metric.value is not None:
            assert -1e-15 <= metric.value <= LOG10_9 + 1e-12


@settings(max_examples=30, deadline=None)
@given(weight=layers)
def test_strides_and_containers_do_not_matter(weight):
    flipped = weight[::-1].copy()  # .copy(): a length-1 axis may keep a negative stride
    base = layer_metrics(flipped)
    tensor = torch.from_numpy(flipped)
    variants = [
        weight[::-1],  # negative strides
        tensor,
        tensor.transpose(0, 1).contiguous().transpose(0, 1),  # permuted strides
        torch.from_numpy(flipped.transpose(3, 2, 1, 0).copy()).permute(3, 2, 1, 0),
    ]
    read_only = flipped.copy()
    read_only.flags.writeable = False
    variants.append(read_only)
    for variant in variants:
        assert_same_metrics(layer_metrics(variant), base, exact=True)
    # A sliced view (every other output channel) equals its compact copy.
    assert_same_metrics(
        layer_metrics(tensor[::2]), layer_metrics(tensor[::2].contiguous()), exact=True
    )


@settings(max_examples=30, deadline=None)
@given(weight=layers, dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
def test_narrow_floats_give_the_results_of_their_float64_values(weight, dtype):
    narrow = torch.from_numpy(weight).to(dtype)
    assert_same_metrics(layer_metrics(narrow), layer_metrics(narrow.double()), exact=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(trained_convs):
    for weight in trained_convs:
        assert_same_metrics(layer_metrics(weight.cuda(), device="cuda"), layer_metrics(weight))

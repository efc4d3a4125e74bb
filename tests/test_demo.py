"""The offline demo: the PGD attack it trains with, and the whole run end to end (quick)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from filterdb.cli.main import app
from filterdb.demo import QUICK_EPOCHS
from filterdb.demo import model as demo_model
from filterdb.demo import run as demo
from filterdb.demo import training as demo_training
from filterdb.metrics.registry import METRICS
from filterdb.warehouse import inventory

runner = CliRunner()
# Float32 rounding of x +- eps and of the loss.
TOLERANCE = 1e-6


def attack_inputs(seed: int, n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Images in [0, 1] with many pixels exactly at 0 or 1 (as in the digits), and labels."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand((n, 1, 8, 8), generator=generator)
    images = torch.where(images < 0.3, 0.0, torch.where(images > 0.8, 1.0, images))
    return images, torch.randint(0, 10, (n,), generator=generator)


def linear_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))


def per_sample_loss(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor):
    with torch.no_grad():
        return F.cross_entropy(model(images), labels, reduction="none")


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    eps=st.floats(0.005, 0.5),
    steps=st.integers(1, 6),
    random_start=st.booleans(),
)
def test_pgd_stays_in_the_eps_ball_and_the_pixel_range(seed, eps, steps, random_start):
    images, labels = attack_inputs(seed)
    adversarial = demo_training.pgd_attack(
        linear_model(seed),
        images,
        labels,
        eps=eps,
        steps=steps,
        random_start=random_start,
        generator=torch.Generator().manual_seed(seed),
    )
    assert adversarial.shape == images.shape and not adversarial.requires_grad
    assert (adversarial - images).abs().max() <= eps + TOLERANCE
    assert adversarial.min() >= 0.0 and adversarial.max() <= 1.0


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), eps=st.floats(0.005, 0.5), steps=st.integers(1, 6))
def test_pgd_never_lowers_the_loss_of_a_linear_model(seed, eps, steps):
    # Cross-entropy of a linear model is convex in the input: loss(x + d) >= loss(x) + g.d,
    # and every PGD step (projection and clamping included) keeps g.d >= 0 per sample.
    model = linear_model(seed)
    images, labels = attack_inputs(seed)
    adversarial = demo_training.pgd_attack(
        model, images, labels, eps=eps, steps=steps, random_start=False
    )
    clean, attacked = (
        per_sample_loss(model, images, labels),
        per_sample_loss(model, adversarial, labels),
    )
    assert (attacked >= clean - TOLERANCE).all()
    assert attacked.mean() > clean.mean()


def test_one_pgd_step_of_size_eps_is_fgsm():
    model = linear_model(3)
    images, labels = attack_inputs(3)
    eps = 0.1
    # FGSM written out: one signed-gradient step of size eps, clipped to the pixel range.
    inputs = images.clone().requires_grad_(True)
    F.cross_entropy(model(inputs), labels).backward()
    expected = (images + eps * inputs.grad.sign()).clamp(0.0, 1.0)
    got = demo_training.pgd_attack(
        model, images, labels, eps=eps, steps=1, step_size=eps, random_start=False
    )
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_pgd_raises_the_loss_of_the_demo_cnn_and_leaves_its_gradients_alone():
    torch.manual_seed(0)
    model = demo_model.DigitsCNN()
    images, labels = attack_inputs(0, n=64)
    adversarial = demo_training.pgd_attack(
        model, images, labels, eps=0.1, steps=10, generator=torch.Generator().manual_seed(0)
    )
    assert per_sample_loss(model, adversarial, labels).mean() > (
        per_sample_loss(model, images, labels).mean()
    )
    assert all(parameter.grad is None for parameter in model.parameters())


def small_split() -> demo_model.DigitsSplit:
    split = demo_model.load_digits_split()
    return demo_model.DigitsSplit(
        split.train_images[:96], split.train_labels[:96], split.test_images, split.test_labels
    )


def test_digits_split_is_stratified_scaled_and_complete():
    split = demo_model.load_digits_split(test_share=0.25, seed=0)
    assert len(split.train_labels) + len(split.test_labels) == 1797
    assert split.train_images.shape[1:] == (1, 8, 8)
    assert split.train_images.min() == 0.0 and split.train_images.max() == 1.0
    assert set(split.test_labels.tolist()) == set(range(10))


def test_training_is_deterministic_and_restores_torch_settings():
    settings_ = demo_training.TrainingSettings(epochs=1, train_steps=2)
    threads = torch.get_num_threads()
    rng_state = torch.get_rng_state()
    first = demo_training.train_digits_cnn(small_split(), settings_, adversarial=True).state_dict()
    second = demo_training.train_digits_cnn(small_split(), settings_, adversarial=True).state_dict()
    assert all(torch.equal(first[key], second[key]) for key in first)
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.get_rng_state(), rng_state)
    assert not torch.are_deterministic_algorithms_enabled()


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory) -> tuple[str, Path, str]:
    """``filterdb demo --quick`` on a fresh DuckDB file: (url, output directory, stdout)."""
    root = tmp_path_factory.mktemp("demo")
    url = f"duckdb:///{root / 'demo.duckdb'}"
    result = runner.invoke(app, ["--db", url, "demo", "--quick", "--out", str(root / "out")])
    assert result.exit_code == 0, result.output
    return url, root / "out", result.output


def test_demo_prints_each_step_and_where_the_report_is(quick_demo):
    _, out, output = quick_demo
    for step in ("training digits-normal", "training digits-pgd", "ingested", "metrics"):
        assert step in output
    html = out / "report" / "report.html"
    assert f"open the report: {html}" in " ".join(output.split())
    assert html.is_file() and "data:image/png;base64," in html.read_text(encoding="utf-8")


def test_demo_stores_both_models_paired_with_their_accuracies(quick_demo):
    url, out, _ = quick_demo
    manifest = json.loads((out / "demo.json").read_text())
    stored = inventory.models(url=url).sort("model_name")
    assert stored["model_name"].to_list() == ["digits-normal", "digits-pgd"]
    assert stored["training_type"].to_list() == ["normal", "adversarial"]
    assert set(stored["architecture"]) == {"DigitsCNN"}
    assert set(stored["training_dataset"]) == {"digits"}
    by_name = {entry["name"]: entry for entry in manifest["models"]}
    for row in stored.iter_rows(named=True):
        assert row["clean_acc"] == pytest.approx(by_name[row["model_name"]]["clean_acc"])
        assert row["robust_acc"] == pytest.approx(by_name[row["model_name"]]["pgd_acc"])
        if row["training_type"] == "adversarial":
            assert row["threat_model"] == "Linf" and row["eps"] == pytest.approx(0.1)
        else:  # normal training has no attack
            assert row["threat_model"] is None and row["eps"] is None
        state = torch.load(out / f"{row['model_name']}.pt", weights_only=True)
        convs = [t for t in state.values() if t.dim() == 4]
        assert row["n_layers"] == len(convs) == 6
        assert row["n_filters"] == sum(t.shape[0] * t.shape[1] for t in convs)


def test_demo_caches_every_metric_over_six_depth_bins(quick_demo):
    url, _, _ = quick_demo
    layers = inventory.layer_metrics(url=url)
    assert layers.height == 12
    for metric in METRICS:
        assert layers[metric].null_count() == 0, metric
    for (_,), model_layers in layers.group_by("model_name"):
        assert model_layers["depth_bin"].n_unique() == 6


def test_rerun_reuses_and_skips_then_other_settings_replace(quick_demo, tmp_path):
    url, out, _ = quick_demo
    # A copy, so that the other tests see the first run whatever the order.
    shutil.copytree(out, tmp_path / "out")
    shutil.copy(url.removeprefix("duckdb:///"), tmp_path / "demo.duckdb")
    url, out = f"duckdb:///{tmp_path / 'demo.duckdb'}", tmp_path / "out"
    before = inventory.layer_metrics(url=url).sort("layer_id")

    again = demo.run_demo(url=url, out_dir=out, epochs=QUICK_EPOCHS)
    assert not again.trained
    assert (again.normal.ingest_status, again.robust.ingest_status) == ("skipped", "skipped")
    assert inventory.layer_metrics(url=url).sort("layer_id").equals(before)

    other = demo.run_demo(url=url, out_dir=out, epochs=1)
    assert other.trained
    assert (other.normal.ingest_status, other.robust.ingest_status) == ("replaced", "replaced")
    assert json.loads((out / "demo.json").read_text())["settings"]["epochs"] == 1
    stored = inventory.models(url=url)
    assert stored.height == 2
    assert sorted(stored["clean_acc"]) == pytest.approx(
        sorted([other.normal.clean_acc, other.robust.clean_acc])
    )


def test_quick_and_epochs_together_are_refused(tmp_path):
    url = f"duckdb:///{tmp_path / 'demo.duckdb'}"
    result = runner.invoke(app, ["--db", url, "demo", "--quick", "--epochs", "3"])
    assert result.exit_code == 2
    assert "not both" in result.output


def test_run_demo_refuses_zero_epochs(tmp_path):
    with pytest.raises(ValueError, match="at least 1"):
        demo.run_demo(url=f"duckdb:///{tmp_path / 'demo.duckdb'}", out_dir=tmp_path, epochs=0)

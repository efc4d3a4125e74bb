"""The offline demo: a normally and an adversarially trained CNN, compared end to end.

Two small CNNs learn scikit-learn's handwritten digits (8x8 images, shipped with the
package: no download), one normally and one with PGD adversarial training (Madry et al.
2018, Linf). Both are evaluated on a held-out split, saved as state_dicts, ingested,
measured, and compared by the robust-vs-normal report (issue 5, item 7). It is the
README's first command and, with few epochs, the end-to-end test.

Training is seeded, deterministic and single-threaded, and ``torch.save`` writes the same
bytes for the same tensors under the same file name (measured, torch 2.14), so on one
machine a retrained model hashes as before and ingestion skips it (SPEC section 4: a model
is its name and checkpoint hash). A re-run still reuses the checkpoints of its output
directory when they were trained with the same settings: that saves the minute of training
and keeps the models whatever machine re-runs it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import polars as pl
import sqlalchemy as sa
import torch

from filterdb.demo import DEFAULT_EPOCHS
from filterdb.demo.model import load_digits_split
from filterdb.demo.training import TrainingSettings, evaluate, train_digits_cnn
from filterdb.files import output_directory
from filterdb.ingest.pipeline import ingest
from filterdb.ingest.sources.base import files_sha256
from filterdb.ingest.sources.checkpoint import checkpoint_candidate
from filterdb.metrics import cache
from filterdb.reports.robust_vs_normal import write_robust_vs_normal_report
from filterdb.warehouse import inventory, migrate
from filterdb.warehouse.database import resolve_url
from filterdb.warehouse.records import TrainingInfo
from filterdb.wording import counted

TRAINING_DATASET = "digits"
ARCHITECTURE = "DigitsCNN"
NORMAL_MODEL = "digits-normal"
ROBUST_MODEL = "digits-pgd"
MANIFEST = "demo.json"


@dataclass(frozen=True)
class DemoModel:
    """One trained demo model: accuracies on the held-out split, in percent."""

    name: str
    training_type: str
    checkpoint: Path
    clean_acc: float
    pgd_acc: float
    ingest_status: str = ""


@dataclass(frozen=True)
class DemoResult:
    """What :func:`run_demo` did and where it put it.

    ``trained`` is False when the checkpoints of ``out_dir`` were reused.
    """

    url: str
    out_dir: Path
    settings: TrainingSettings
    normal: DemoModel
    robust: DemoModel
    trained: bool
    report_html: Path


StepCallback = Callable[[str], None]


def run_demo(
    *,
    url: str | None = None,
    out_dir: Path = Path("filterdb-demo"),
    epochs: int = DEFAULT_EPOCHS,
    retrain: bool = False,
    on_step: StepCallback | None = None,
) -> DemoResult:
    """Train, ingest, measure and report the digits pair; idempotent when re-run.

    Writes ``digits-normal.pt``, ``digits-pgd.pt`` (state_dicts), ``demo.json`` (settings,
    hashes, accuracies) and ``report/`` into ``out_dir``; the database at ``url`` (created
    or upgraded to the newest schema) receives both models (paired by architecture
    ``DigitsCNN`` and training dataset ``digits``) and their metrics. Checkpoints of an
    earlier run with the same settings are reused unless ``retrain``. ``on_step`` receives
    one line per step, for people.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    say = on_step or (lambda line: None)
    url = resolve_url(url)
    settings = TrainingSettings(epochs=epochs)
    output_directory(out_dir)

    revision = migrate.upgrade(url=url)
    shown = sa.make_url(url).render_as_string(hide_password=True)
    say(f"database {shown} at schema revision {revision}")
    reused = None if retrain else _reusable_models(out_dir, settings)
    if reused is None:
        models = _train_models(out_dir, settings, say)
    else:
        models = reused
        say(f"reusing the checkpoints in {out_dir} (same settings; --retrain trains again)")
    normal, robust = (_ingest(model, url, settings, say) for model in models)

    computed = cache.compute_metrics(url=url, models=[normal.name, robust.name])
    if computed.n_layers:
        say(
            f"metrics: {counted(computed.n_values, 'value')} computed for "
            f"{counted(computed.n_layers, 'layer')}"
        )
    else:
        say("metrics: every value already cached")
    report = write_robust_vs_normal_report(
        url=url, out_dir=out_dir / "report", training_dataset=TRAINING_DATASET
    )
    say(f"report written to {report.html}")
    return DemoResult(
        url=url,
        out_dir=out_dir,
        settings=settings,
        normal=normal,
        robust=robust,
        trained=reused is None,
        report_html=report.html,
    )


def _train_models(
    out_dir: Path, settings: TrainingSettings, say: StepCallback
) -> tuple[DemoModel, DemoModel]:
    (out_dir / MANIFEST).unlink(missing_ok=True)
    split = load_digits_split(test_share=settings.test_share, seed=settings.seed)
    trained = []
    for name, adversarial in ((NORMAL_MODEL, False), (ROBUST_MODEL, True)):
        how = f"PGD-{settings.train_steps} (Linf eps {settings.eps:g})" if adversarial else "normal"
        say(f"training {name} ({how}, {settings.epochs} epochs)")
        model = train_digits_cnn(split, settings, adversarial=adversarial)
        clean, robust = evaluate(model, split, settings)
        say(
            f"{name}: clean accuracy {clean:.1f}%, PGD-{settings.eval_steps} accuracy {robust:.1f}%"
        )
        checkpoint = out_dir / f"{name}.pt"
        torch.save(model.state_dict(), checkpoint)
        trained.append(
            DemoModel(
                name=name,
                training_type="adversarial" if adversarial else "normal",
                checkpoint=checkpoint,
                clean_acc=clean,
                pgd_acc=robust,
            )
        )
    # Written last: a run stopped halfway leaves no manifest, so the next run trains again.
    manifest = {
        "settings": asdict(settings),
        "models": [
            {
                "name": model.name,
                "training_type": model.training_type,
                "checkpoint": model.checkpoint.name,
                "sha256": files_sha256([model.checkpoint]),
                "clean_acc": model.clean_acc,
                "pgd_acc": model.pgd_acc,
            }
            for model in trained
        ],
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return trained[0], trained[1]


def _reusable_models(
    out_dir: Path, settings: TrainingSettings
) -> tuple[DemoModel, DemoModel] | None:
    """The models of an earlier run, when trained with ``settings`` and still unchanged."""
    try:
        manifest = json.loads((out_dir / MANIFEST).read_text(encoding="utf-8"))
        if manifest["settings"] != asdict(settings):
            return None
        models = []
        for entry in manifest["models"]:
            checkpoint = out_dir / entry["checkpoint"]
            if files_sha256([checkpoint]) != entry["sha256"]:
                return None
            models.append(
                DemoModel(
                    name=entry["name"],
                    training_type=entry["training_type"],
                    checkpoint=checkpoint,
                    clean_acc=float(entry["clean_acc"]),
                    pgd_acc=float(entry["pgd_acc"]),
                )
            )
    # demo.json is the demo's own cache: missing, edited or truncated means train again.
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if [model.name for model in models] != [NORMAL_MODEL, ROBUST_MODEL]:
        return None
    return models[0], models[1]


def _ingest(model: DemoModel, url: str, settings: TrainingSettings, say: StepCallback) -> DemoModel:
    # Normal training has no attack, so no threat model and no eps; its robust_acc is
    # still the accuracy under the robust model's PGD attack, for the comparison.
    adversarial = model.training_type == "adversarial"
    training = TrainingInfo(
        training_type=model.training_type,
        training_dataset=TRAINING_DATASET,
        threat_model="Linf" if adversarial else None,
        eps_text=f"{settings.eps:g}" if adversarial else None,
        eps=settings.eps if adversarial else None,
        clean_acc=model.clean_acc,
        robust_acc=model.pgd_acc,
    )
    # The same architecture name on both models is what pairs them (SPEC section 7).
    candidate = checkpoint_candidate(
        model.checkpoint, name=model.name, architecture=ARCHITECTURE, training=training
    )
    # The demo owns its two names: a checkpoint from another run (another --out directory,
    # --retrain) replaces the stored model; the same bytes are skipped.
    result = ingest(candidate, url=url, force=_stored_from_other_bytes(url, model))
    say(
        f"{model.name}: {result.status} ({counted(result.n_layers, 'layer')}, "
        f"{counted(result.n_filters, 'filter')})"
    )
    return replace(model, ingest_status=result.status)


def _stored_from_other_bytes(url: str, model: DemoModel) -> bool:
    stored = inventory.models(url=url).filter(pl.col("model_name") == model.name)
    return stored.height > 0 and stored["checkpoint_sha256"][0] != files_sha256([model.checkpoint])

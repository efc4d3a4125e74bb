"""``filterdb ingest checkpoint|onnx|timm|torchvision|hf|manifest|robustbench``: parse, run."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from filterdb.cli.options import database_url, option_block
from filterdb.cli.output import console, err_console, one_line_errors
from filterdb.cli.progress import ingest_progress
from filterdb.errors import FilterdbError
from filterdb.ingest import DEFAULT_MODEL_DIR
from filterdb.ingest.sources import leaderboard
from filterdb.warehouse.records import TrainingInfo
from filterdb.wording import counted

# Library modules that load torch are imported inside the commands: `--help` stays fast.
if TYPE_CHECKING:
    from filterdb.ingest.pipeline import IngestResult
    from filterdb.ingest.sources.base import Candidate
    from filterdb.metrics.cache import IngestMetrics

app = typer.Typer(help="Store every 3x3 filter of a model.", no_args_is_help=True)


class Device(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Training(StrEnum):
    adversarial = "adversarial"
    normal = "normal"


DeviceOption = Annotated[
    Device,
    typer.Option(
        help="Where to work: auto extracts on the CPU (faster there) and computes --metrics "
        "on CUDA when available."
    ),
]
MetricsOption = Annotated[
    bool,
    typer.Option(
        "--metrics",
        help="Also compute and cache every layer metric (default eps) from the weights in "
        "memory, in the model's own transaction: what `filterdb metrics` would cache.",
    ),
]
ForceOption = Annotated[
    bool, typer.Option("--force", help="Replace a model stored from a different checkpoint.")
]
NonfiniteOption = Annotated[
    bool, typer.Option("--allow-nonfinite", help="Store NaN/Inf weights instead of refusing.")
]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
EngineOption = Annotated[
    str | None,
    typer.Option(
        "--engine",
        envvar="FILTERDB_ENGINE",
        help="Where to hash, read and extract: local (default), dask-local[:N] or "
        "dask://HOST:PORT (the workers must reach the checkpoints); this process writes.",
    ),
]
NameOption = Annotated[
    str | None, typer.Option(help="Model name (default: the file name without its suffix).")
]
ArchitectureOption = Annotated[
    str | None,
    typer.Option(help="Architecture name stored for pairing and grouping (default: --arch)."),
]
TrainingDatasetOption = Annotated[
    str | None, typer.Option(help="Dataset the model was trained on, e.g. cifar10.")
]
TrainingOption = Annotated[Training, typer.Option(help="How the model was trained.")]
ThreatOption = Annotated[
    str | None, typer.Option(help="Threat model of adversarial training: Linf, L2, ...")
]
EpsOption = Annotated[str | None, typer.Option(help="Attack budget, e.g. 8/255 or 0.5.")]
CleanAccOption = Annotated[float | None, typer.Option(help="Clean accuracy in percent.")]
RobustAccOption = Annotated[float | None, typer.Option(help="Robust accuracy in percent.")]
PaperOption = Annotated[str | None, typer.Option(help="Link to the paper.")]
FoldOption = Annotated[
    bool,
    typer.Option(
        "--fold-batchnorm",
        help="Fold each BatchNorm that consumes a conv's output into that conv, as the "
        "TorchScript ONNX exporter does in eval mode (the papers' data); the model is "
        "stored as NAME+bn_folded, weights form bn_folded.",
    ),
]


@dataclass(frozen=True)
class RunOptions:
    """How an ingest runs, given by the same options on every ingest command."""

    device: Device
    force: bool
    allow_nonfinite: bool
    quiet: bool
    metrics: bool = False
    engine: str | None = None

    def metrics_hook(self) -> IngestMetrics | None:
        """What computes ``--metrics`` (None without it); loads the metrics only then."""
        if not self.metrics:
            return None
        from filterdb.metrics.cache import IngestMetrics

        return IngestMetrics(device=self.device.value)


def training_info(
    training: Training,
    training_dataset: str | None,
    threat_model: str | None,
    eps: str | None,
    clean_acc: float | None,
    robust_acc: float | None,
    paper: str | None,
) -> TrainingInfo:
    """The training metadata given on the command line."""
    eps_text, eps_value = leaderboard.parse_eps(eps)
    return TrainingInfo(
        training_type=training.value,
        training_dataset=training_dataset,
        threat_model=threat_model,
        eps_text=eps_text,
        eps=eps_value,
        clean_acc=clean_acc,
        robust_acc=robust_acc,
        paper_url=paper,
    )


# One definition of the option blocks that every ingest command shares (as sqlite-utils
# shares its option decorators): the command declares `training: TrainingInfo` and
# `run: RunOptions` and receives them built from the options.
training_options = option_block(
    "training",
    training_info,
    {
        "training_dataset": (TrainingDatasetOption, None),
        "training": (TrainingOption, Training.normal),
        "threat_model": (ThreatOption, None),
        "eps": (EpsOption, None),
        "clean_acc": (CleanAccOption, None),
        "robust_acc": (RobustAccOption, None),
        "paper": (PaperOption, None),
    },
)
run_options = option_block(
    "run",
    RunOptions,
    {
        "device": (DeviceOption, Device.auto),
        "force": (ForceOption, False),
        "allow_nonfinite": (NonfiniteOption, False),
        "quiet": (QuietOption, False),
        "metrics": (MetricsOption, False),
        "engine": (EngineOption, None),
    },
)


@app.command()
@run_options
@training_options
def checkpoint(
    context: typer.Context,
    path: Annotated[
        Path,
        typer.Argument(
            help="A torch state_dict file, a .safetensors file, or a sharded safetensors "
            "checkpoint (model.safetensors.index.json or its directory)."
        ),
    ],
    arch: Annotated[
        str | None,
        typer.Option(
            help="Architecture: robustbench:<dataset>/<threat>/<name>, timm:<name>, "
            "or torchvision:<name>. Without it: 4-D weights in key order."
        ),
    ] = None,
    input_shape: Annotated[
        str,
        typer.Option(
            "--input-shape",
            help="C,H,W of the dummy input that --arch is traced with (ImageNet models: "
            "3,224,224).",
        ),
    ] = "3,32,32",
    name: NameOption = None,
    architecture: ArchitectureOption = None,
    fold_batchnorm: FoldOption = False,
    *,
    training: TrainingInfo,
    run: RunOptions,
) -> None:
    """Store the 3x3 filters of a torch or safetensors checkpoint; all of it or nothing.

    float16 and bfloat16 weights are stored as their exact float32 values (v_layers
    source_dtype keeps the stored dtype); float64 ones are rounded to float32, and the
    output says by how much; quantized weights are refused.
    """
    from filterdb.ingest.sources import checkpoint as checkpoint_source

    with one_line_errors():
        candidate = checkpoint_source.checkpoint_candidate(
            path,
            name=name,
            arch=arch,
            architecture=architecture,
            training=training,
            input_shape=checkpoint_source.parse_input_shape(input_shape),
            fold_batchnorm=fold_batchnorm,
        )
    run_ingest(context, [candidate], run)


@app.command()
@run_options
@training_options
def onnx(
    context: typer.Context,
    path: Annotated[Path, typer.Argument(help="An ONNX model file.")],
    name: NameOption = None,
    *,
    training: TrainingInfo,
    run: RunOptions,
) -> None:
    """Store the 3x3 filters of an ONNX model; depth comes from its graph."""
    from filterdb.ingest.sources import onnx_file

    with one_line_errors():
        candidate = onnx_file.onnx_candidate(path, name=name, training=training)
    run_ingest(context, [candidate], run)


@app.command()
@run_options
@training_options
def timm(
    context: typer.Context,
    models: Annotated[
        list[str],
        typer.Argument(
            help="timm pretrained names NAME[.TAG], e.g. resnet50.a1_in1k (no tag: timm's "
            "default weights)."
        ),
    ],
    revision: Annotated[
        str | None, typer.Option(help="Hub revision (branch, tag or commit); default main.")
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="Model name (one model only; default timm:NAME.TAG).")
    ] = None,
    architecture: ArchitectureOption = None,
    *,
    training: TrainingInfo,
    run: RunOptions,
) -> None:
    """Store timm's pretrained weights, from the Hugging Face Hub cache (fetched if needed).

    HF_HUB_CACHE / HF_HOME say where the cache is; HF_HUB_OFFLINE=1 reads the cache only.
    Training and pretraining datasets come from the tag (in1k: imagenet) unless given.
    """
    from filterdb.ingest.sources.timm_hub import timm_candidate

    if name is not None and len(models) > 1:
        err_console.print("error: --name names one model; give one NAME with it")
        raise typer.Exit(2)
    with one_line_errors():
        candidates = [
            timm_candidate(
                spec,
                name=name,
                revision=revision,
                architecture=architecture,
                training=training,
            )
            for spec in models
        ]
    run_ingest(context, candidates, run)


@app.command()
@run_options
@training_options
def torchvision(
    context: typer.Context,
    model: Annotated[str, typer.Argument(help="torchvision model name, e.g. resnet50.")],
    weights: Annotated[
        str | None,
        typer.Option(help="Weights enum member, e.g. IMAGENET1K_V2 (default: DEFAULT)."),
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="Model name (default: torchvision:MODEL.WEIGHTS).")
    ] = None,
    architecture: ArchitectureOption = None,
    *,
    training: TrainingInfo,
    run: RunOptions,
) -> None:
    """Store torchvision's pretrained weights from the torch hub cache ($TORCH_HOME/hub).

    The file-name hash is checked as torchvision does; clean accuracy (ImageNet-1K acc@1),
    parameter count and recipe link come from the weights' metadata unless given.
    """
    from filterdb.ingest.sources.torchvision_hub import torchvision_candidate

    with one_line_errors():
        candidate = torchvision_candidate(
            model, weights=weights, name=name, architecture=architecture, training=training
        )
    run_ingest(context, [candidate], run)


@app.command()
@run_options
def manifest(
    context: typer.Context,
    path: Annotated[
        Path,
        typer.Argument(
            help="CSV or Parquet file: columns name, path (checkpoint, .onnx, timm:NAME.TAG, "
            "torchvision:NAME[.WEIGHTS], hf:ORG/NAME[@REV]) and any of arch, architecture, "
            "training, training_dataset, threat_model, eps, clean_acc, robust_acc, paper."
        ),
    ],
    *,
    run: RunOptions,
) -> None:
    """Store many models from one manifest; unchanged rows are skipped.

    With --engine dask... the workers hash, read and extract; this process writes.

    A failed row is reported and the rest go on; the exit status is 1 when any row failed.
    Each model is stored whole or not at all, so after a crash a rerun finishes the job.
    """
    from filterdb.cli.progress import models_progress
    from filterdb.ingest.manifest import ingest_manifest, read_manifest

    with one_line_errors():
        total = len(read_manifest(path))
    with one_line_errors(), models_progress(total, quiet=run.quiet) as on_progress:
        run = ingest_manifest(
            path,
            url=database_url(context),
            device=run.device.value,
            force=run.force,
            allow_nonfinite=run.allow_nonfinite,
            on_progress=on_progress,
            metrics=run.metrics_hook(),
            engine=run.engine,
        )
    counts: dict[str, int] = {}
    for result in run.results:
        counts[result.status] = counts.get(result.status, 0) + 1
        if result.status != "skipped":
            console.print(summary_line(result))
        for note in result.notes:
            console.print(note_line(note, result.model_name), markup=False, soft_wrap=True)
    done = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    console.print(f"{counted(total, 'row')}: {done or 'none stored'}, {len(run.failures)} failed")
    report_failures(run.failures, single=False)


@app.command()
@run_options
@training_options
def hf(
    context: typer.Context,
    repo: Annotated[
        str,
        typer.Argument(
            help="Hub model repository ORG/NAME[@REVISION] holding model.safetensors, "
            "model.safetensors.index.json and shards, or pytorch_model.bin."
        ),
    ],
    name: Annotated[str | None, typer.Option(help="Model name (default: hf:ORG/NAME).")] = None,
    architecture: ArchitectureOption = None,
    *,
    training: TrainingInfo,
    run: RunOptions,
) -> None:
    """Store a Hugging Face Hub model's 3x3 filters (cache first; HF_HUB_OFFLINE=1: only).

    A config.json naming a timm architecture builds it for graph depth; otherwise the
    4-D weights in key order. Identity: the repository, its commit, the files' SHA-256.
    """
    from filterdb.ingest.sources.hf_hub import hf_candidate

    with one_line_errors():
        candidate = hf_candidate(repo, name=name, architecture=architecture, training=training)
    run_ingest(context, [candidate], run)


def run_ingest(
    context: typer.Context,
    candidates: list[Candidate],
    run: RunOptions,
    *,
    missing: list[str] = (),
) -> None:
    """Ingest ``candidates``, print one line per model, exit 1 when any failed or missed."""
    from filterdb.ingest.pipeline import ingest_all

    with one_line_errors(), ingest_progress(len(candidates), quiet=run.quiet) as on_progress:
        results, failures = ingest_all(
            candidates,
            url=database_url(context),
            device=run.device.value,
            force=run.force,
            allow_nonfinite=run.allow_nonfinite,
            on_progress=on_progress,
            metrics=run.metrics_hook(),
            engine=run.engine,
        )
    for result in results:
        console.print(summary_line(result))
        for note in result.notes:
            console.print(note_line(note), markup=False, soft_wrap=True)
    for line in missing:
        err_console.print(f"missing: {line}", markup=False, soft_wrap=True)
    if missing:
        err_console.print(
            f"{counted(len(missing), 'checkpoint')} missing, "
            f"{counted(len(results), 'model')} stored"
        )
    report_failures(failures, single=len(candidates) == 1 and not missing)
    if missing:
        raise typer.Exit(1)


def note_line(note: str, model: str | None = None) -> str:
    """A source's note as printed: ``note: ...``, or ``warning: ...`` when it is one."""
    kind, _, text = note.partition(": ") if note.startswith("warning: ") else ("note", "", note)
    return f"{kind}: {model}: {text}" if model else f"{kind}: {text}"


def summary_line(result: IngestResult) -> str:
    """One line per model: what happened and how much was stored."""
    unreached = (
        f", {result.n_unreached_convs} unreached convs left out" if result.n_unreached_convs else ""
    )
    return (
        f"{result.model_name}: {result.status}, {counted(result.n_layers, 'layer')}, "
        f"{counted(result.n_filters, 'filter')}{unreached} ({result.seconds:.2f} s)"
    )


def report_failures(failures: list[tuple[str, FilterdbError]], *, single: bool) -> None:
    """Print failures one line each and exit 1 when there are any."""
    for name, error in failures:
        prefix = "error: " if single else f"error: {name}: "
        err_console.print(f"{prefix}{error}", markup=False, soft_wrap=True)
    if failures:
        raise typer.Exit(1)


class Dataset(StrEnum):
    cifar10 = "cifar10"
    cifar100 = "cifar100"
    imagenet = "imagenet"


class ThreatModel(StrEnum):
    Linf = "Linf"
    L2 = "L2"
    corruptions = "corruptions"


ModelDirOption = Annotated[
    Path, typer.Option(help="robustbench's cache: DIR/<dataset>/<threat>/<name>.pt.")
]
ModelInfoOption = Annotated[
    str | None,
    typer.Option(help="RobustBench's model_info tree (directory or URL) for leaderboard data."),
]


@app.command()
@run_options
def robustbench(
    context: typer.Context,
    dataset: Annotated[Dataset, typer.Option(help="Training dataset of the zoo entries.")],
    threat_model: Annotated[ThreatModel, typer.Option(help="Zoo threat model.")] = (
        ThreatModel.Linf
    ),
    model: Annotated[
        list[str] | None, typer.Option("--model", help="Zoo entry name (repeatable).")
    ] = None,
    every: Annotated[
        bool, typer.Option("--all", help="Every zoo entry; missing checkpoints are skipped.")
    ] = False,
    model_dir: ModelDirOption = DEFAULT_MODEL_DIR,
    model_info: ModelInfoOption = None,
    fold_batchnorm: FoldOption = False,
    *,
    run: RunOptions,
) -> None:
    """Store RobustBench zoo entries from robustbench's cache layout (offline)."""
    from filterdb.ingest.zoo_selection import zoo_selection

    if bool(model) == every:
        err_console.print("error: give one or more --model NAME, or --all")
        raise typer.Exit(2)
    with one_line_errors():
        selection = zoo_selection(
            dataset=dataset.value,
            threat_model=threat_model.value,
            names=None if every else model,
            model_dir=model_dir,
            model_info=model_info,
            fold_batchnorm=fold_batchnorm,
        )
    for name in selection.not_on_leaderboard:
        err_console.print(
            f"note: {name} has no leaderboard file under {model_info}; stored without"
        )
    run_ingest(context, selection.candidates, run, missing=selection.missing)

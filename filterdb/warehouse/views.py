"""The documented views: the stable surface for ad-hoc SQL (SPEC section 4).

Each view's SQL sits beside its documentation, one line per column. The README's view
reference is generated from :data:`VIEWS` (``cog``), and the tests check on both backends
that every view returns exactly its documented columns.

Views are created by migrations, each from its own frozen copy of the SQL
(``migrations/views_<revision>.py``). A change here needs a new revision: freeze the new
catalogue into ``migrations/views_<new>.py`` (as ``views_0002.py`` was generated), drop the
previous revision's views and create the new ones (:func:`create_views` /
:func:`drop_views`). ``tests/test_migrations.py`` fails while the head revision's frozen
views differ from this catalogue, and when any revision's frozen SQL changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

# The registry is plain data (no database code): the one edge from the warehouse to the
# metrics layer, allowed by the import contract (pyproject.toml).
from filterdb.metrics.registry import DEFAULT_SPARSITY_EPS, METRICS

if TYPE_CHECKING:  # views.py stays importable without a database driver
    from sqlalchemy.engine import Connection

DEPTH_BIN_COUNT = 10
FIRST_BIN = "first"


def depth_bin_label(index: int) -> str:
    """Label of depth bin ``index``: 0 is ``first``, 1..10 are ``(0.0, 0.1]``..``(0.9, 1.0]``."""
    if index == 0:
        return FIRST_BIN
    return f"({(index - 1) / DEPTH_BIN_COUNT:.1f}, {index / DEPTH_BIN_COUNT:.1f}]"


DEPTH_BIN_LABELS = tuple(depth_bin_label(i) for i in range(DEPTH_BIN_COUNT + 1))

# v_layer_metrics shows the values computed with the default sparsity threshold.
DEFAULT_SPARSITY_PARAMS = f"eps={DEFAULT_SPARSITY_EPS!r}"
METRIC_COLUMNS: dict[str, str] = {metric.name: metric.doc for metric in METRICS.values()}


@dataclass(frozen=True)
class View:
    """A view: its name, what one row is, one line per column, and its SQL."""

    name: str
    doc: str
    columns: dict[str, str]
    sql: str


def _depth_bin_sql(depth: str, max_depth: str) -> tuple[str, str]:
    """SQL for (bin index, bin label), from the integers (SPEC section 5, depth bins).

    ceil(10 d / D) in double precision is exact here: a non-integer quotient is at least
    1/D away from the next integer, far above the rounding error for any real D.
    """
    index = (
        f"CASE WHEN {depth} = 0 THEN 0 "
        f"ELSE CAST(CEIL({DEPTH_BIN_COUNT}.0 * {depth} / {max_depth}) AS INTEGER) END"
    )
    whens = " ".join(f"WHEN {i} THEN '{label}'" for i, label in enumerate(DEPTH_BIN_LABELS))
    return index, f"CASE {index} {whens} END"


_BIN_INDEX, _BIN_LABEL = _depth_bin_sql("l.conv_depth", "m.max_conv_depth")

_TRAINING_COLUMNS = {
    "architecture": "Architecture name (zoo entry's, or as given at ingest).",
    "training_dataset": "Dataset the model was trained on (cifar10, imagenet, ...).",
    "training_type": "'adversarial' or 'normal'.",
    "robust": "True when adversarially trained.",
    "threat_model": "Threat model of adversarial training: Linf, L2 or corruptions.",
    "eps": "Attack budget as a number (8/255 -> 0.0313...), NULL when unknown.",
    "clean_acc": "Clean accuracy in percent, NULL when unknown.",
    "robust_acc": "Robust accuracy in percent (external evaluation, else AutoAttack).",
    "weights_form": (
        "How the filters are stored: raw (the checkpoint's tensors), bn_folded (BatchNorm "
        "folded in as the TorchScript ONNX exporter does: the papers' data) or as_exported "
        "(an ONNX file as it is)."
    ),
}
_TRAINING_SELECT = """m.architecture, t.training_dataset, t.training_type,
    (t.training_type = 'adversarial') AS robust, t.threat_model, t.eps, t.clean_acc,
    t.robust_acc, m.weights_form"""

V_MODELS = View(
    name="v_models",
    doc="One row per stored model, with its training and leaderboard metadata.",
    columns={
        "model_id": "Key of the model.",
        "model_name": "Unique model name (the zoo name for RobustBench entries).",
        "source": "Where it came from: robustbench, checkpoint, onnx, timm, torchvision or hf.",
        "architecture": _TRAINING_COLUMNS["architecture"],
        "family": "Architecture family (WideResNet, ResNet, ...), when known.",
        "n_parameters": (
            "Floating-point values in the model file, counted alike for every source: all "
            "float tensors of the checkpoint (parameters and buffers such as BatchNorm "
            "statistics) or of the ONNX initializers and Constants."
        ),
        "training_dataset": _TRAINING_COLUMNS["training_dataset"],
        "pretraining_dataset": "Dataset of pre-training, when there was one.",
        "training_type": _TRAINING_COLUMNS["training_type"],
        "robust": _TRAINING_COLUMNS["robust"],
        "threat_model": _TRAINING_COLUMNS["threat_model"],
        "eps": _TRAINING_COLUMNS["eps"],
        "eps_text": "Attack budget as written by the source ('8/255').",
        "extra_data": "True when trained with extra data, NULL when unknown.",
        "clean_acc": _TRAINING_COLUMNS["clean_acc"],
        "robust_acc": _TRAINING_COLUMNS["robust_acc"],
        "corruptions_acc": "Accuracy in percent under common corruptions, NULL when unknown.",
        "venue": "Where the paper appeared (HTML stripped).",
        "paper_url": "Link to the paper.",
        "n_layers": "Number of stored 3x3 conv layers.",
        "n_filters": "Number of stored 3x3 filters.",
        "n_unreached_convs": "3x3 convs in the checkpoint that the forward pass never runs.",
        "depth_method": "How conv depth was found: graph, onnx, execution_order, key_order.",
        "weights_form": _TRAINING_COLUMNS["weights_form"],
        "checkpoint_sha256": (
            "SHA-256 of the checkpoint file(s): with weights_form, the model's identity."
        ),
        "ingested_at": "When the model was stored (UTC).",
        "source_uri": "Where the weights were read: a path, or hf://<repo>@<commit> for the Hub.",
        "license": "License of the weights as their publisher states it, when known.",
    },
    sql="""
SELECT m.model_id, m.name AS model_name, m.source, m.architecture, m.family,
    m.n_parameters, t.training_dataset, t.pretraining_dataset, t.training_type,
    (t.training_type = 'adversarial') AS robust, t.threat_model, t.eps, t.eps_text,
    t.extra_data, t.clean_acc, t.robust_acc, t.corruptions_acc, t.venue, t.paper_url,
    CAST(COALESCE(c.n_layers, 0) AS BIGINT) AS n_layers,
    CAST(COALESCE(c.n_filters, 0) AS BIGINT) AS n_filters,
    m.n_unreached_convs, c.depth_method, m.weights_form, m.checkpoint_sha256, m.ingested_at,
    m.source_uri, m.license
FROM model m
LEFT JOIN training t ON t.model_id = m.model_id
LEFT JOIN (
    SELECT model_id, COUNT(*) AS n_layers, SUM(n_filters) AS n_filters,
        MIN(depth_method) AS depth_method
    FROM layer GROUP BY model_id
) c ON c.model_id = m.model_id
""",
)

_LAYER_COLUMNS = {
    "layer_id": "Key of the layer.",
    "model_id": "Key of the model.",
    "model_name": "Name of the model.",
    "layer_name": "Module path (torch) or node name (ONNX); ensemble members m0., m1., ...",
    "conv_index": "0-based position among the model's stored layers, in extraction order.",
    "graph_depth": "Longest-path depth of the conv in the computation graph.",
    "conv_depth": "Rank of the layer's depth among the depths holding convs (0 = first).",
    "conv_depth_norm": "conv_depth / max conv_depth of the model, from 0 to 1.",
    "depth_bin": "'first' for conv_depth 0, else (0.0, 0.1] .. (0.9, 1.0] by conv_depth.",
    "depth_bin_index": "0 for 'first', 1..10 for the deciles.",
    "depth_method": "How conv depth was found: graph, onnx, execution_order, key_order.",
    "in_channels": "Input channels of the conv (each filter sees in_channels / groups).",
    "out_channels": "Output channels of the conv.",
    "groups": "Convolution groups (in_channels for depthwise).",
    "stride": "Stride as 'h,w', NULL when unknown.",
    "dilation": "Dilation as 'h,w', NULL when unknown.",
    "n_filters": "Number of 3x3 filters: out_channels x in_channels / groups.",
    "max_abs": "Largest |weight| in the layer (the 'layer max' of sparsity).",
    "source_dtype": "dtype of the weights in the checkpoint (float16, bfloat16, float32, ...);"
    " stored as float32.",
    **_TRAINING_COLUMNS,
}
_LAYER_SELECT = f"""l.layer_id, l.model_id, m.name AS model_name, l.name AS layer_name,
    l.conv_index, l.graph_depth, l.conv_depth, l.conv_depth_norm,
    {_BIN_LABEL} AS depth_bin,
    {_BIN_INDEX} AS depth_bin_index,
    l.depth_method, l.in_channels, l.out_channels, l.groups, l.stride, l.dilation,
    l.n_filters, l.max_abs, l.source_dtype, {_TRAINING_SELECT}"""

V_LAYERS = View(
    name="v_layers",
    doc="One row per stored 3x3 conv layer, beside its model and training columns.",
    columns=_LAYER_COLUMNS,
    sql=f"""
SELECT {_LAYER_SELECT}
FROM layer l
JOIN model m ON m.model_id = l.model_id
LEFT JOIN training t ON t.model_id = l.model_id
""",
)

V_FILTERS = View(
    name="v_filters",
    doc="One row per 3x3 filter (kernel), weights w0..w8 in row-major order, float32.",
    columns={
        "model_id": "Key of the model.",
        "layer_id": "Key of the layer.",
        "model_name": "Name of the model.",
        "layer_name": _LAYER_COLUMNS["layer_name"],
        "conv_depth": _LAYER_COLUMNS["conv_depth"],
        "conv_depth_norm": _LAYER_COLUMNS["conv_depth_norm"],
        "depth_bin": _LAYER_COLUMNS["depth_bin"],
        "filter_index": "0-based index of the filter in its layer, out-channel major.",
        "out_channel": "Output channel of the filter.",
        "in_channel": "Input channel of the filter within its group.",
        **{f"w{i}": f"Weight at row {i // 3}, column {i % 3} of the kernel." for i in range(9)},
        "robust": _TRAINING_COLUMNS["robust"],
        "training_dataset": _TRAINING_COLUMNS["training_dataset"],
        "training_type": _TRAINING_COLUMNS["training_type"],
        "architecture": _TRAINING_COLUMNS["architecture"],
    },
    sql=f"""
SELECT f.model_id, f.layer_id, m.name AS model_name, l.name AS layer_name, l.conv_depth,
    l.conv_depth_norm, {_BIN_LABEL} AS depth_bin, f.filter_index, f.out_channel,
    f.in_channel, f.w0, f.w1, f.w2, f.w3, f.w4, f.w5, f.w6, f.w7, f.w8,
    (t.training_type = 'adversarial') AS robust, t.training_dataset, t.training_type,
    m.architecture
FROM filter f
JOIN layer l ON l.layer_id = f.layer_id
JOIN model m ON m.model_id = f.model_id
LEFT JOIN training t ON t.model_id = f.model_id
""",
)


def _metric_pivot() -> str:
    # A value shows here when computed with the default parameters (eps 0.01 for the
    # metrics that use a threshold). Older metric versions are deleted when a newer one is
    # stored, so at most one version per (layer, metric, params) remains.
    columns = ",\n    ".join(
        f"MAX(value) FILTER (WHERE metric = '{name}') AS {name}" for name in METRIC_COLUMNS
    )
    return f"""SELECT layer_id, {columns}
    FROM metric_cache
    WHERE params IN ('', '{DEFAULT_SPARSITY_PARAMS}')
    GROUP BY layer_id"""


V_LAYER_METRICS = View(
    name="v_layer_metrics",
    doc=(
        "The v_layers columns plus one column per cached metric (SPEC section 5), "
        "NULL until `filterdb metrics` computed it."
    ),
    columns={**_LAYER_COLUMNS, **METRIC_COLUMNS},
    sql=f"""
SELECT {_LAYER_SELECT},
    {", ".join(f"c.{name}" for name in METRIC_COLUMNS)}
FROM layer l
JOIN model m ON m.model_id = l.model_id
LEFT JOIN training t ON t.model_id = l.model_id
LEFT JOIN ({_metric_pivot()}) c ON c.layer_id = l.layer_id
""",
)

VIEWS: tuple[View, ...] = (V_MODELS, V_LAYERS, V_FILTERS, V_LAYER_METRICS)


def create_views(connection: Connection, views: tuple[View, ...]) -> None:
    """Create ``views`` in order (used by migrations, each with its own frozen views)."""
    for view in views:
        connection.exec_driver_sql(f"CREATE VIEW {view.name} AS {view.sql}")


def drop_views(connection: Connection, views: tuple[View, ...]) -> None:
    """Drop ``views`` in reverse order (used by migrations)."""
    for view in reversed(views):
        connection.exec_driver_sql(f"DROP VIEW IF EXISTS {view.name}")


def views_markdown(views: tuple[View, ...] = VIEWS) -> str:
    """The README's view reference: a heading, a line and a column table per view."""
    parts = []
    for view in views:
        rows = "\n".join(f"| `{column}` | {doc} |" for column, doc in view.columns.items())
        parts.append(
            f"#### `{view.name}`\n\n{view.doc}\n\n| column | meaning |\n|---|---|\n{rows}\n"
        )
    return "\n".join(parts)

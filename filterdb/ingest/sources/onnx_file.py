"""ONNX files: every Conv node's weight, and its depth read from the graph (SPEC sections 4-6).

``onnx.load`` parses a protobuf and runs no code, so any ONNX file is safe to read. (The
module is not called ``onnx.py``: that name would shadow the ``onnx`` package.)
"""

from __future__ import annotations

import graphlib
import itertools
import math
from pathlib import Path

import numpy as np
import onnx
import onnx.inliner
import torch
from google.protobuf.message import DecodeError
from onnx import AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto, numpy_helper

from filterdb.errors import CheckpointMissing, SourceError
from filterdb.ingest.sources.base import (
    Candidate,
    ConvLayer,
    ModelSource,
    looks_like_html,
    require_untargeted_normal,
)
from filterdb.warehouse.records import ModelInfo, TrainingInfo

# Graph names that tell nothing of the architecture: none, or an exporter's default name.
UNINFORMATIVE_GRAPH_NAMES = frozenset(
    {"", "main_graph", "torch_jit", "torch-jit-export", "tf2onnx"}
)

_ONNX_DOMAINS = ("", "ai.onnx")
_FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE)


def onnx_candidate(
    path: Path, *, name: str | None = None, training: TrainingInfo | None = None
) -> Candidate:
    """An ONNX file as an ingest :class:`Candidate`: its graph is parsed, no weight is read.

    ``paths`` are the file and the external data files it names, so that new weights saved
    beside an unchanged graph change the model's identity. Raises as :func:`read_onnx` does
    for a missing or unreadable file or external data file.
    """
    path = Path(path)
    require_untargeted_normal(training)
    return Candidate(
        name=name or path.stem,
        source="onnx",
        paths=[path, *_external_files(path, _parse(path))],
        read=lambda: read_onnx(path, name=name, training=training),
        weights_form="as_exported",
    )


def read_onnx(
    path: Path, *, name: str | None = None, training: TrainingInfo | None = None
) -> ModelSource:
    """Read every Conv node of an ONNX file, in node order, with its weight and graph depth.

    A weight comes from an initializer or a Constant node, directly or through Identity
    nodes, and is returned as a float32 tensor: bit-identical for float32 files, exact for
    float16 and bfloat16, rounded for float64. A layer is named by its node name, else by the
    name of the initializer or Constant output holding its weight (SPEC section 4); a name
    already given gets the first free ``~1``, ``~2``, ... suffix. ``graph_depth`` is the
    longest path from the graph inputs (SPEC section 5, depth method ``"onnx"``). Every Conv
    node is kept, so ``n_unreached_convs`` is 0; a graph with no Conv gives no convs
    (extraction decides what that means).

    ``info``: ``name`` defaults to the file stem; ``checkpoint_sha256`` is set by ingestion
    over the file and the external data files it names (the candidate's ``paths``); ``producer`` is
    "producer_name producer_version"; ``architecture`` is the graph name unless it is one of
    :data:`UNINFORMATIVE_GRAPH_NAMES`; ``n_parameters`` counts the elements of every
    floating-point initializer and Constant tensor (integer tensors are shapes and indices,
    not learned parameters).

    Raises :class:`CheckpointMissing` when ``path`` is not a file, and :class:`SourceError`
    when it is not an ONNX model, its external data cannot be read, its graph has a cycle,
    a Conv weight is computed at run time, or a Conv sits inside a control-flow subgraph.
    """
    path = Path(path)
    model = _parse(path)
    try:
        onnx.load_external_data_for_model(model, str(path.parent))
    except (OSError, ValueError, onnx.checker.ValidationError) as error:
        raise SourceError(
            f"{path}: its external weight data cannot be read ({_one_line(error)}); "
            "keep the data files beside the model, as it was saved"
        ) from None
    # Model-local functions hide their Conv nodes behind one call node (torch's
    # export_modules_as_functions); inlined, they are ordinary nodes of the main graph.
    # Inlining copies every weight, so only when there is something to inline.
    graph = (onnx.inliner.inline_local_functions(model) if model.functions else model).graph
    depths = _node_depths(path, graph)
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    producers = {output: node for node in graph.node for output in node.output if output}

    for node in graph.node:
        _refuse_subgraph_convs(path, node)
    found = [
        (node, depth, *_conv_weight(path, node, initializers, producers))
        for node, depth in zip(graph.node, depths, strict=True)
        if node.op_type == "Conv" and node.domain in _ONNX_DOMAINS
    ]
    names = _unique_names([node.name or weight_name for node, _, weight_name, _ in found])
    convs = [
        _conv_layer(layer_name, node, depth, weight)
        for layer_name, (node, depth, _, weight) in zip(names, found, strict=True)
    ]

    producer = f"{model.producer_name} {model.producer_version}".strip()
    info = ModelInfo(
        name=name or path.stem,
        source="onnx",
        source_uri=str(path),
        architecture=None if graph.name in UNINFORMATIVE_GRAPH_NAMES else graph.name,
        n_parameters=_n_parameters(graph),
        producer=producer or None,
        weights_form="as_exported",
        training=training or TrainingInfo(),
    )
    return ModelSource(info=info, convs=convs, depth_method="onnx")


def _parse(path: Path) -> ModelProto:
    """The model in ``path``, its external data not yet loaded."""
    if not path.is_file():
        raise CheckpointMissing(f"{path} does not exist; check the path to the ONNX file")
    try:
        model = onnx.load(path, load_external_data=False)
    except DecodeError as error:
        what = "an HTML page (failed download?)" if looks_like_html(path) else "corrupt"
        raise SourceError(
            f"{path} is {what}, not a readable ONNX model ({_one_line(error)}); "
            "export or download it again"
        ) from None
    # An empty or foreign protobuf can parse as a ModelProto with no graph.
    if not model.HasField("graph"):
        raise SourceError(f"{path} holds no ONNX graph; export or download it again")
    return model


def _external_files(path: Path, model: ModelProto) -> list[Path]:
    """The files holding the external weight data of ``model``, in first-use order.

    Checked as onnx checks them when it loads them (a regular file inside the model's
    folder), because a candidate hashes them before anything is loaded.
    """
    folder = path.parent.resolve()
    files: dict[Path, None] = {}
    for tensor in _tensors(model.graph):
        if not onnx.external_data_helper.uses_external_data(tensor):
            continue
        location = onnx.external_data_helper.ExternalDataInfo(tensor).location
        file = (folder / location).resolve()
        if not (file.is_relative_to(folder) and file.is_file()):
            raise SourceError(
                f"{path}: external weight data {location!r} is missing or outside {folder}; "
                "keep the data files beside the model, as it was saved"
            )
        files[file] = None
    return list(files)


def _tensors(graph: GraphProto) -> list[TensorProto]:
    """The initializers and node attribute tensors of ``graph`` and its subgraphs."""
    tensors = list(graph.initializer)
    for node in graph.node:
        for attribute in node.attribute:
            tensors.extend([attribute.t] if attribute.HasField("t") else attribute.tensors)
            for subgraph in _subgraphs(attribute):
                tensors.extend(_tensors(subgraph))
    return tensors


def _subgraphs(attribute: AttributeProto) -> list[GraphProto]:
    if attribute.type == AttributeProto.GRAPH:
        return [attribute.g]
    return list(attribute.graphs)


def _node_depths(path: Path, graph: GraphProto) -> list[int]:
    """Longest-path depth of each node from the graph inputs, in node order.

    A node reading a graph input has depth 1; any other node is 1 + the largest depth among
    the nodes producing its inputs. Initializers and nodes that read only constants
    (Constant, Identity of a weight, shape arithmetic) have depth 0 and add nothing: a
    weight reached through a Constant or Identity node is the same parameter as one in an
    initializer, and exporters differ in which they write, so counting those nodes would
    move a conv's depth (and split the depth groups of SPEC section 5) by how the file was
    written instead of by what the model computes.
    """
    producer_index = {out: i for i, node in enumerate(graph.node) for out in node.output if out}
    predecessors = {
        i: {producer_index[t] for t in node.input if t in producer_index}
        for i, node in enumerate(graph.node)
    }
    try:
        # ONNX requires node order to be topological, but not every writer obeys.
        order = list(graphlib.TopologicalSorter(predecessors).static_order())
    except graphlib.CycleError:
        raise SourceError(f"{path}: the ONNX graph has a cycle; export it again") from None
    # An initializer may share a graph input's name as an overridable default (IR >= 4):
    # it is still a constant.
    constants = {tensor.name for tensor in graph.initializer}
    input_depth = {value.name: 0 for value in graph.input if value.name not in constants}
    depths = [0] * len(graph.node)
    for i in order:
        node = graph.node[i]
        reached = [input_depth[t] for t in node.input if t in input_depth]
        if reached:
            depths[i] = 1 + max(reached)
            input_depth.update((out, depths[i]) for out in node.output if out)
    return depths


def _refuse_subgraph_convs(path: Path, node: NodeProto) -> None:
    """Convs inside If/Loop/Scan bodies have no single place in the graph: refuse them."""
    for attribute in node.attribute:
        for subgraph in _subgraphs(attribute):
            for inner in subgraph.node:
                if inner.op_type == "Conv":
                    raise SourceError(
                        f"{path}: node {node.name or node.op_type} holds a Conv inside its "
                        f"{attribute.name} subgraph, which filterdb cannot place in the graph; "
                        "export the model without control flow"
                    )
                _refuse_subgraph_convs(path, inner)


def _conv_weight(
    path: Path,
    conv: NodeProto,
    initializers: dict[str, TensorProto],
    producers: dict[str, NodeProto],
) -> tuple[str, torch.Tensor]:
    """The name and float32 value of the tensor holding ``conv``'s weight (input 1)."""
    tensor_name = conv.input[1]
    while tensor_name not in initializers:
        producer = producers.get(tensor_name)
        if producer is not None and producer.op_type == "Identity":
            tensor_name = producer.input[0]
            continue
        if producer is not None and producer.op_type == "Constant":
            value = next((a.t for a in producer.attribute if a.name == "value"), None)
            if value is not None:
                return tensor_name, _float32(value, path)
        origin = "a graph input" if producer is None else f"a {producer.op_type} node"
        raise SourceError(
            f"{path}: Conv {conv.name or tensor_name} computes its weight at run time (from "
            f"{origin}); export the model with constant folding so weights are stored"
        )
    return tensor_name, _float32(initializers[tensor_name], path)


def _conv_layer(name: str, node: NodeProto, depth: int, weight: torch.Tensor) -> ConvLayer:
    """A Conv node as a layer; ``group``, ``strides`` and ``dilations`` default to 1 (ONNX)."""
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    ones = [1] * (weight.dim() - 2)
    return ConvLayer(
        name=name,
        weight=weight,
        graph_depth=depth,
        groups=int(attributes.get("group", 1)),
        stride=tuple(int(v) for v in attributes.get("strides", ones)),
        dilation=tuple(int(v) for v in attributes.get("dilations", ones)),
    )


def _float32(tensor: TensorProto, path: Path) -> torch.Tensor:
    """The weight as float32; refused when it is not float or its data and shape disagree."""
    dims = list(tensor.dims)
    if any(d < 0 for d in dims):
        raise SourceError(
            f"{path}: weight {tensor.name} has negative dimensions {dims}; the ONNX file is "
            "malformed: export it again"
        )
    if tensor.data_type not in _FLOAT_TYPES:
        kind = TensorProto.DataType.Name(tensor.data_type)
        raise SourceError(
            f"{path}: Conv weight {tensor.name} is {kind}, a quantized weight; filterdb reads "
            "float weights only (a graph that dequantizes computes them at run time): "
            "export the float model"
        )
    try:
        array = numpy_helper.to_array(tensor)
    except ValueError as error:  # e.g. dims 1e5 x 1e5 x 3 x 3 over a few bytes of data
        raise SourceError(
            f"{path}: weight {tensor.name} declares shape {dims} but its data does not fit "
            f"it ({_one_line(error)}); the ONNX file is malformed: export it again"
        ) from None
    # astype copies: the array from numpy_helper may be a read-only view of the protobuf.
    return torch.from_numpy(array.astype(np.float32))


def _n_parameters(graph: GraphProto) -> int:
    constants = [
        a.t
        for node in graph.node
        if node.op_type == "Constant"
        for a in node.attribute
        if a.name == "value"
    ]
    return sum(
        math.prod(tensor.dims)
        for tensor in [*graph.initializer, *constants]
        if tensor.data_type in _FLOAT_TYPES
    )


def _unique_names(names: list[str]) -> list[str]:
    """Keep each name's first use; later uses get the first ``~k`` suffix nobody holds."""
    taken = set(names)
    seen: set[str] = set()
    unique = []
    for name in names:
        if name in seen:
            name = next(f"{name}~{k}" for k in itertools.count(1) if f"{name}~{k}" not in taken)
            taken.add(name)
        seen.add(name)
        unique.append(name)
    return unique


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())

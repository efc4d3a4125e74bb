"""ONNX source: weights bit-identical, groups/stride/dilation, node order, graph depth."""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from filterdb.errors import CheckpointMissing, SourceError
from filterdb.ingest.sources.base import files_sha256
from filterdb.ingest.sources.onnx_file import onnx_candidate, read_onnx
from filterdb.warehouse.records import TrainingInfo

OPSET = [helper.make_opsetid("", 17)]


def same_bits(got: torch.Tensor, expected: torch.Tensor) -> bool:
    """Bitwise equality: tells -0.0 from 0.0 and compares NaN payloads."""
    expected = expected.detach().contiguous().to(torch.float32)
    return got.dtype == torch.float32 and torch.equal(
        got.contiguous().view(torch.int32), expected.view(torch.int32)
    )


def save_graph(path: Path, nodes, initializers=(), *, name="handmade", functions=()) -> Path:
    """Save a graph reading one 1-channel image ``x`` and returning the last node's output."""
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 16, 16])],
        [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, list("nchw"))],
        initializer=list(initializers),
    )
    model = helper.make_model(
        graph,
        opset_imports=OPSET + [helper.make_opsetid("local", 1)] * bool(functions),
        functions=list(functions),
        producer_name="handmade",
        producer_version="1",
    )
    onnx.save(model, path)
    return path


def constant(output: str, array: np.ndarray) -> onnx.NodeProto:
    return helper.make_node(
        "Constant", [], [output], value=numpy_helper.from_array(array, output + "_value")
    )


def arange_weight(*shape: int) -> np.ndarray:
    return (np.arange(np.prod(shape), dtype=np.float32) - 7.5).reshape(shape) / 8


# --- a torch CNN through torch's ONNX exporter --------------------------------------------


class Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.depthwise = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.grouped = torch.nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=2, bias=False)
        self.shortcut = torch.nn.Conv2d(8, 16, 1, stride=2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.grouped(torch.relu(self.depthwise(x)))) + self.shortcut(x)


class TinyNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.block = Block()
        self.head = torch.nn.Conv2d(16, 4, 3, padding=2, dilation=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.block(torch.relu(self.stem(x)))))


def fx_conv_depths(model: torch.nn.Module) -> dict[str, int]:
    """Longest-path depth of each conv in torch.fx's graph: an oracle independent of ONNX."""
    depth: dict[torch.fx.Node, int] = {}
    convs = {}
    for node in torch.fx.symbolic_trace(model).graph.nodes:
        depth[node] = 1 + max((depth[n] for n in node.all_input_nodes), default=-1)
        if node.op == "call_module":
            convs[node.target] = depth[node]
    return convs


def execution_order(model: torch.nn.Module, example: torch.Tensor) -> list[str]:
    order = []
    hooks = [
        module.register_forward_hook(lambda *_, name=name: order.append(name))
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Conv2d)
    ]
    model(example)
    for hook in hooks:
        hook.remove()
    return order


def ranks(depths: dict[str, int]) -> dict[str, int]:
    levels = sorted(set(depths.values()))
    return {name: levels.index(depth) for name, depth in depths.items()}


# torch 2.14's default (dynamo) exporter needs onnxscript, which is not installed: the
# TorchScript exporter works offline and warns that it is deprecated.
@pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export")
@pytest.mark.filterwarnings("ignore:The feature will be removed")
def test_torch_export_round_trips(tmp_path):
    torch.manual_seed(0)
    model = TinyNet().eval()
    example = torch.randn(1, 3, 16, 16)
    path = tmp_path / "tiny.onnx"
    torch.onnx.export(model, (example,), path, dynamo=False)

    source = read_onnx(path)

    # Node names look like /block/depthwise/Conv.
    names = [conv.name.strip("/").removesuffix("/Conv").replace("/", ".") for conv in source.convs]
    assert names == execution_order(model, example)
    modules = dict(model.named_modules())
    for name, conv in zip(names, source.convs, strict=True):
        module = modules[name]
        assert same_bits(conv.weight, module.weight), name
        assert conv.groups == module.groups
        assert conv.stride == module.stride
        assert conv.dilation == module.dilation
    depths = {name: conv.graph_depth for name, conv in zip(names, source.convs, strict=True)}
    assert ranks(depths) == ranks(fx_conv_depths(model))
    assert source.depth_method == "onnx"
    assert source.n_unreached_convs == 0
    info = source.info
    assert (info.name, info.source, info.source_uri) == ("tiny", "onnx", str(path))
    assert onnx_candidate(path).paths == [path]
    assert info.producer.startswith("pytorch ")
    assert info.architecture is None  # torch names every graph "main_graph"
    assert info.n_parameters == sum(p.numel() for p in model.parameters())


# --- hand-built graphs -----------------------------------------------------------------


def handmade_nodes():
    """Weights from a Constant node, a Constant through Identity, and initializers.

    Returns the nodes, the initializers and the expected (name, weight, depth, groups,
    stride, dilation) of each conv in node order.
    """
    w_a, w_b, w_c, w_s = (
        arange_weight(2, 1, 3, 3),
        arange_weight(4, 1, 3, 3),
        arange_weight(2, 4, 1, 1),
        arange_weight(2, 2, 3, 3),
    )
    nodes = [
        constant("w_a", w_a),
        helper.make_node("Conv", ["x", "w_a"], ["a"], name="conv_a", strides=[2, 2]),
        constant("w_b_raw", w_b),
        helper.make_node("Identity", ["w_b_raw"], ["w_b"]),
        helper.make_node("Conv", ["a", "w_b"], ["b"], group=2, dilations=[2, 2], pads=[2] * 4),
        helper.make_node("Relu", ["b"], ["c"]),
        helper.make_node("Conv", ["c", "w_c"], ["d"]),
        helper.make_node("Conv", ["d", "w_s"], ["e"], pads=[1] * 4),
        helper.make_node("Conv", ["e", "w_s"], ["f"], pads=[1] * 4),
    ]
    initializers = [
        numpy_helper.from_array(w_c, "w_c"),
        numpy_helper.from_array(w_s, "w_s"),
        # An integer tensor is a shape, not a parameter.
        numpy_helper.from_array(np.array([1, 2], dtype=np.int64), "axes"),
    ]
    expected = [
        ("conv_a", w_a, 1, 1, (2, 2), (1, 1)),
        ("w_b_raw", w_b, 2, 2, (1, 1), (2, 2)),  # unnamed: the Constant holding its weight
        ("w_c", w_c, 4, 1, (1, 1), (1, 1)),  # the Relu before it counts
        ("w_s", w_s, 5, 1, (1, 1), (1, 1)),
        ("w_s~1", w_s, 6, 1, (1, 1), (1, 1)),  # the same weight again: a unique name
    ]
    return nodes, initializers, expected


def test_handmade_graph(tmp_path):
    nodes, initializers, expected = handmade_nodes()
    path = save_graph(tmp_path / "hand.onnx", nodes, initializers, name="tinynet")
    onnx.checker.check_model(onnx.load(path), full_check=True)
    training = TrainingInfo(training_type="adversarial", eps=0.5)

    source = read_onnx(path, name="custom", training=training)

    got = [(c.name, c.graph_depth, c.groups, c.stride, c.dilation) for c in source.convs]
    assert got == [(n, depth, g, s, d) for n, _, depth, g, s, d in expected]
    for conv, (_, weight, *_) in zip(source.convs, expected, strict=True):
        assert same_bits(conv.weight, torch.from_numpy(weight))
    info = source.info
    assert (info.name, info.architecture, info.producer) == ("custom", "tinynet", "handmade 1")
    assert info.training is training
    assert info.n_parameters == 18 + 36 + 8 + 36  # floats in Constants and initializers


def test_node_order_need_not_be_topological(tmp_path):
    nodes, initializers, expected = handmade_nodes()
    path = save_graph(tmp_path / "reversed.onnx", nodes[::-1], initializers)

    convs = read_onnx(path).convs

    # Names of unnamed convs follow node order, so compare the named conv and the depths.
    assert [c.graph_depth for c in convs] == [depth for *_, depth, _, _, _ in expected[::-1]]
    assert convs[-1].name == "conv_a"


def test_cycle_is_refused(tmp_path):
    w = numpy_helper.from_array(arange_weight(1, 1, 3, 3), "w")
    nodes = [
        helper.make_node("Add", ["x", "b"], ["a"]),
        helper.make_node("Conv", ["a", "w"], ["b"], pads=[1] * 4),
    ]
    path = save_graph(tmp_path / "cycle.onnx", nodes, [w])
    with pytest.raises(SourceError, match="cycle"):
        read_onnx(path)


def test_conv_in_a_local_function_is_found(tmp_path):
    weight = arange_weight(2, 1, 3, 3)
    block = helper.make_function(
        "local",
        "Block",
        ["x", "w"],
        ["y"],
        [
            helper.make_node("Conv", ["x", "w"], ["c"], name="inner_conv"),
            helper.make_node("Relu", ["c"], ["y"]),
        ],
        opset_imports=OPSET,
    )
    nodes = [helper.make_node("Block", ["x", "w"], ["y"], domain="local", name="block")]
    path = tmp_path / "function.onnx"
    save_graph(path, nodes, [numpy_helper.from_array(weight, "w")], functions=[block])

    (conv,) = read_onnx(path).convs

    assert conv.name.startswith("inner_conv")
    assert conv.graph_depth == 1
    assert same_bits(conv.weight, torch.from_numpy(weight))


def test_graph_without_conv_gives_no_convs(tmp_path):
    path = save_graph(tmp_path / "relu.onnx", [helper.make_node("Relu", ["x"], ["y"])])
    assert read_onnx(path).convs == []


def test_float16_weights_become_float32_exactly(tmp_path):
    weight = arange_weight(2, 1, 3, 3).astype(np.float16)
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"])]
    path = save_graph(tmp_path / "half.onnx", nodes, [numpy_helper.from_array(weight, "w")])
    (conv,) = read_onnx(path).convs
    assert same_bits(conv.weight, torch.from_numpy(weight.astype(np.float32)))


# --- files that cannot be used -------------------------------------------------------------


def one_line_error(path: Path, error_type: type[Exception] = SourceError) -> str:
    with pytest.raises(error_type) as caught:
        read_onnx(path)
    message = str(caught.value)
    assert "\n" not in message
    assert str(path) in message
    return message


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("truncated", "corrupt"),
        (b"", "no ONNX graph"),  # an empty protobuf parses as an empty ModelProto
        (b"<!DOCTYPE html><html><body>Quota exceeded</body></html>", "HTML"),
    ],
)
def test_unreadable_file_is_one_line_error(tmp_path, content, expected):
    nodes, initializers, _ = handmade_nodes()
    whole = save_graph(tmp_path / "whole.onnx", nodes, initializers).read_bytes()
    path = tmp_path / "bad.onnx"
    path.write_bytes(whole[: len(whole) // 2] if content == "truncated" else content)

    message = one_line_error(path)

    assert expected in message
    with pytest.raises(SourceError):
        onnx_candidate(path)


def test_missing_file(tmp_path):
    one_line_error(tmp_path / "absent.onnx", CheckpointMissing)


@pytest.mark.parametrize("origin", ["input", "Mul"])
def test_weight_computed_at_run_time_is_refused(tmp_path, origin):
    weight = numpy_helper.from_array(arange_weight(1, 1, 3, 3), "w")
    nodes = [helper.make_node("Conv", ["x", "x" if origin == "input" else "w2"], ["y"])]
    if origin == "Mul":
        nodes.insert(0, helper.make_node("Mul", ["w", "w"], ["w2"]))
    path = save_graph(tmp_path / "runtime.onnx", nodes, [weight])
    assert "constant folding" in one_line_error(path)


def test_conv_inside_a_subgraph_is_refused(tmp_path):
    weight = numpy_helper.from_array(arange_weight(1, 1, 3, 3), "w")
    branch = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y_branch"])],
        "branch",
        [],
        [helper.make_tensor_value_info("y_branch", TensorProto.FLOAT, None)],
    )
    nodes = [
        helper.make_node("ReduceMax", ["x"], ["m"], keepdims=0),
        helper.make_node("Cast", ["m"], ["cond"], to=TensorProto.BOOL),
        helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch),
    ]
    path = save_graph(tmp_path / "if.onnx", nodes, [weight])
    assert "subgraph" in one_line_error(path)


# --- external data -----------------------------------------------------------------------


def save_with_external_data(path: Path, weight: np.ndarray) -> Path:
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv")]
    save_graph(path, nodes, [numpy_helper.from_array(weight, "w")])
    model = onnx.load(path)
    onnx.save(model, path, save_as_external_data=True, location="weights.bin", size_threshold=0)
    return path.with_name("weights.bin")


def test_external_data_is_read_and_identifies_the_model(tmp_path):
    weight = arange_weight(2, 1, 3, 3)
    path = tmp_path / "external.onnx"
    data = save_with_external_data(path, weight)

    candidate = onnx_candidate(path)
    source = candidate.read()

    assert candidate.paths == [path, data]
    assert same_bits(source.convs[0].weight, torch.from_numpy(weight))
    before = files_sha256(candidate.paths)
    save_with_external_data(path, -weight)  # same graph bytes, new weights
    assert files_sha256(onnx_candidate(path).paths) != before

    data.unlink()
    assert "weights.bin" in one_line_error(path)


# --- property: conv chains ---------------------------------------------------------------

WEIGHT_ORIGINS = ("initializer", "constant", "identity_of_constant", "identity_of_initializer")


@st.composite
def conv_chains(draw):
    """A chain of convs with Relus between them; each weight stored one of four ways."""
    channels = 1
    convs = []
    for _ in range(draw(st.integers(1, 6))):
        out_channels = draw(st.integers(1, 4))
        divisors = [g for g in range(1, 5) if channels % g == 0 and out_channels % g == 0]
        groups = draw(st.sampled_from(divisors))
        kernel = draw(st.sampled_from([1, 3]))
        shape = (out_channels, channels // groups, kernel, kernel)
        # Any 32-bit pattern: NaN payloads, -0.0, subnormals and infinities included.
        bits = draw(st.lists(st.integers(0, 2**32 - 1), min_size=int(np.prod(shape))))
        weight = np.array(bits[: int(np.prod(shape))], dtype=np.uint32).view(np.float32)
        convs.append(
            {
                "weight": weight.reshape(shape),
                "groups": groups,
                "stride": draw(st.integers(1, 2)),
                "origin": draw(st.sampled_from(WEIGHT_ORIGINS)),
                "relus_after": draw(st.integers(0, 2)),
                "named": draw(st.booleans()),
            }
        )
        channels = out_channels
    return convs


def chain_graph(convs) -> tuple[list[onnx.NodeProto], list[TensorProto], list[int]]:
    """The nodes and initializers of ``convs``, and each conv's depth counted by hand."""
    nodes, initializers, depths = [], [], []
    tensor, depth = "x", 0
    for i, conv in enumerate(convs):
        stored, weight_name = f"w{i}_stored", f"w{i}"
        if conv["origin"].endswith("initializer"):
            initializers.append(numpy_helper.from_array(conv["weight"], stored))
        else:
            nodes.append(constant(stored, conv["weight"]))
        if conv["origin"].startswith("identity"):
            nodes.append(helper.make_node("Identity", [stored], [weight_name]))
        else:
            weight_name = stored
        depth += 1
        depths.append(depth)
        nodes.append(
            helper.make_node(
                "Conv",
                [tensor, weight_name],
                [f"conv{i}"],
                name=f"conv{i}" if conv["named"] else "",
                group=conv["groups"],
                strides=[conv["stride"]] * 2,
            )
        )
        tensor = f"conv{i}"
        for k in range(conv["relus_after"]):
            nodes.append(helper.make_node("Relu", [tensor], [f"relu{i}_{k}"]))
            tensor, depth = f"relu{i}_{k}", depth + 1
    return nodes, initializers, depths


@settings(max_examples=40, deadline=None)
@given(conv_chains())
def test_conv_chain_round_trips(convs):
    nodes, initializers, depths = chain_graph(convs)
    with tempfile.TemporaryDirectory() as folder:
        source = read_onnx(save_graph(Path(folder) / "chain.onnx", nodes, initializers))

    assert len(source.convs) == len(convs)
    got_depths = [conv.graph_depth for conv in source.convs]
    assert got_depths == depths
    assert all(a < b for a, b in itertools.pairwise(got_depths))
    for i, (got, conv) in enumerate(zip(source.convs, convs, strict=True)):
        assert same_bits(got.weight, torch.from_numpy(conv["weight"]))
        assert got.groups == conv["groups"]
        assert got.stride == (conv["stride"],) * 2
        assert got.dilation == (1, 1)
        assert got.name == (f"conv{i}" if conv["named"] else f"w{i}_stored")

"""Torch tracing: which convs a model runs, their order, their depths, their weights."""

from __future__ import annotations

import importlib
import types

import pytest
import torch
import torch.nn.functional as F
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from filterdb.errors import SourceError
from filterdb.ingest.sources.torch_graph import trace_convs


def robustbench_architecture(name: str) -> types.ModuleType:
    """``robustbench.model_zoo.architectures.<name>``, imported through filterdb's adapter."""
    from filterdb.ingest.sources.robustbench_compat import import_robustbench

    try:
        import_robustbench()
    except SourceError as error:
        pytest.skip(str(error))
    return importlib.import_module(f"robustbench.model_zoo.architectures.{name}")


def hooked_conv_calls(model: nn.Module, input_shape=(1, 3, 32, 32)) -> list[str]:
    """Names of the conv modules a plain forward pass calls, first calls in call order."""
    calls: list[str] = []
    handles = [
        conv.register_forward_hook(
            lambda conv, args, output, name=name: calls.append(name) if name not in calls else None
        )
        for name, conv in model.named_modules()
        if isinstance(conv, nn.Conv2d)
    ]
    with torch.no_grad():
        model.eval()(torch.randn(input_shape))
    for handle in handles:
        handle.remove()
    return calls


def state_dict_order(model: nn.Module, names: list[str]) -> list[str]:
    """``names`` sorted by the position of ``<name>.weight`` in the state_dict."""
    keys = list(model.state_dict())
    return sorted(names, key=lambda name: keys.index(f"{name}.weight"))


class DataDependent(nn.Module):
    """Wraps a model behind an `if` on the input's values, which torch.fx cannot trace."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.abs().sum() >= 0:  # always true, but only known at run time
            return self.inner(x)
        return x


class Shortcut(nn.Module):
    """stem -> relu -> (conv_a -> relu -> conv_b) + shortcut(1x1) -> head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.conv_a = nn.Conv2d(4, 4, 3, padding=1)
        self.conv_b = nn.Conv2d(4, 4, 3, padding=1)
        self.shortcut = nn.Conv2d(4, 4, 1)
        self.head = nn.Conv2d(4, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        out = self.conv_b(F.relu(self.conv_a(x)))
        return self.head(out + self.shortcut(x))


def test_depth_is_longest_path_with_parallel_shortcut():
    traced = trace_convs(Shortcut())

    # By hand: x 0; stem 1; relu 2; conv_a 3 and shortcut 3 (both read relu);
    # relu 4; conv_b 5; add max(5, 3) + 1 = 6; head 7.
    assert traced.depth_method == "graph"
    assert {conv.name: conv.graph_depth for conv in traced.convs} == {
        "stem": 1,
        "conv_a": 3,
        "conv_b": 5,
        "shortcut": 3,
        "head": 7,
    }
    assert [conv.name for conv in traced.convs] == ["stem", "conv_a", "conv_b", "shortcut", "head"]
    assert traced.n_unreached_convs == 0


def test_robustbench_wide_resnet_leaves_out_sub_block1():
    wide_resnet = robustbench_architecture("wide_resnet")
    torch.manual_seed(0)
    model = wide_resnet.WideResNet(depth=16, widen_factor=2, sub_block1=True)

    traced = trace_convs(model)

    names = [conv.name for conv in traced.convs]
    assert traced.depth_method == "graph"
    assert names == state_dict_order(model, hooked_conv_calls(model))
    assert not any(name.startswith("sub_block1.") for name in names)
    # WRN-16: two BasicBlocks per group, each with two 3x3 convs; sub_block1 is one group.
    assert traced.n_unreached_convs == 4
    # One stem conv, then per group 2 blocks x 2 convs and one 1x1 shortcut (channels change).
    assert len(names) == 1 + 3 * (4 + 1)
    assert sum(conv.is_3x3 for conv in traced.convs) == 1 + 3 * 4


def test_robustbench_wrn_28_10_matches_platform_figures():
    wide_resnet = robustbench_architecture("wide_resnet")
    model = wide_resnet.WideResNet(depth=28, widen_factor=10, sub_block1=True)

    traced = trace_convs(model)

    # PLATFORM.md (Carmon2019Unlabeled): 33 stored 3x3 convs, 25 layers and 4,021,808
    # filters reached, 8 left out.
    stored_3x3 = [w for w in model.state_dict().values() if w.dim() == 4 and w.shape[2:] == (3, 3)]
    reached_3x3 = [conv.weight for conv in traced.convs if conv.is_3x3]
    assert len(stored_3x3) == 33
    assert len(reached_3x3) == 25
    assert sum(w.shape[0] * w.shape[1] for w in reached_3x3) == 4_021_808
    assert traced.n_unreached_convs == 8


def zoo_and_torchvision_models() -> list:
    def robustbench_resnet(network: str, block: str):
        # The zoo's ResNet18 / PreActResNet18 classes, one block per stage to stay fast.
        def build() -> nn.Module:
            resnet = robustbench_architecture("resnet")
            return getattr(resnet, network)(getattr(resnet, block), [1, 1, 1, 1])

        return build

    return [
        pytest.param(robustbench_resnet("ResNet", "BasicBlock"), id="robustbench-ResNet"),
        pytest.param(
            robustbench_resnet("PreActResNet", "PreActBlock"), id="robustbench-PreActResNet"
        ),
        pytest.param(
            lambda: torchvision.models.resnet18(num_classes=10), id="torchvision-resnet18"
        ),
        pytest.param(
            lambda: torchvision.models.mobilenet_v2(num_classes=10, width_mult=0.25),
            id="torchvision-mobilenet_v2-depthwise",
        ),
    ]


@pytest.mark.parametrize("build", zoo_and_torchvision_models())
def test_graph_and_hook_fallback_find_the_same_convs(build):
    torch.manual_seed(0)
    model = build()
    calls = hooked_conv_calls(model)

    by_graph = trace_convs(model)
    by_hooks = trace_convs(DataDependent(model))

    assert (by_graph.depth_method, by_hooks.depth_method) == ("graph", "execution_order")
    expected = state_dict_order(model, calls)
    assert [conv.name for conv in by_graph.convs] == expected
    assert [conv.name.removeprefix("inner.") for conv in by_hooks.convs] == expected
    for graph_conv, hook_conv in zip(by_graph.convs, by_hooks.convs, strict=True):
        assert graph_conv.weight.data_ptr() == hook_conv.weight.data_ptr()
        assert (graph_conv.groups, graph_conv.stride, graph_conv.dilation) == (
            hook_conv.groups,
            hook_conv.stride,
            hook_conv.dilation,
        )
    # Execution order numbers the convs' first calls.
    assert {conv.name: conv.graph_depth for conv in by_hooks.convs} == {
        f"inner.{name}": position for position, name in enumerate(calls)
    }
    assert by_graph.n_unreached_convs == by_hooks.n_unreached_convs == 0


def test_depthwise_convs_keep_their_groups():
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(num_classes=10, width_mult=0.25)

    traced = trace_convs(model)

    depthwise = [conv for conv in traced.convs if conv.groups > 1]
    assert depthwise  # mobilenet_v2 has one depthwise 3x3 per inverted residual block
    for conv in depthwise:
        module = model.get_submodule(conv.name)
        assert conv.groups == module.groups == module.in_channels
        assert conv.weight.shape[1] == 1
        assert conv.is_3x3


class SelfAssigning(nn.Module):
    """Writes to itself in forward (as torchdiffeq blocks do), then branches on data."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3)
        self.bn = nn.BatchNorm2d(2)
        self.scale = torch.tensor([2.0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.scale = self.scale.type_as(x)
        out = self.bn(self.conv(x)) * self.scale
        return out if out.sum() > 0 else -out


def test_data_dependent_control_flow_falls_back_and_leaves_the_model_as_it_was():
    model = SelfAssigning().train()
    model.bn.eval()
    running_mean = model.bn.running_mean.clone()

    traced = trace_convs(model)

    assert traced.depth_method == "execution_order"
    assert [(conv.name, conv.graph_depth) for conv in traced.convs] == [("conv", 0)]
    assert (model.training, model.conv.training, model.bn.training) == (True, True, False)
    assert torch.equal(model.bn.running_mean, running_mean)
    # The failed torch.fx trace assigned a Proxy to self.scale; it must be gone.
    assert type(model.scale) is torch.Tensor
    model(torch.randn(1, 3, 8, 8))


def test_a_model_that_neither_traces_nor_runs_names_input_shape():
    with pytest.raises(SourceError, match="input_shape") as raised:
        trace_convs(DataDependent(nn.Conv2d(3, 2, 3)), input_shape=(1, 5, 8, 8))
    assert "\n" not in str(raised.value)


class Chain(nn.Module):
    """Convs registered in ``registration`` order, called in index order 0, 1, ..."""

    def __init__(self, registration: list[int]) -> None:
        super().__init__()
        for index in registration:
            self.add_module(f"c{index}", nn.Conv2d(2, 2, 3, padding=1))
        self.n = len(registration)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index in range(self.n):
            x = getattr(self, f"c{index}")(x)
        return x


@settings(max_examples=15, deadline=None)
@given(registration=st.integers(1, 5).flatmap(lambda n: st.permutations(list(range(n)))))
def test_convs_come_in_state_dict_order_whatever_the_call_order(registration):
    model = Chain(registration)
    registered = [f"c{index}" for index in registration]

    by_graph = trace_convs(model)
    by_hooks = trace_convs(DataDependent(model), input_shape=(1, 2, 4, 4))

    assert [conv.name for conv in by_graph.convs] == registered
    assert [conv.name for conv in by_hooks.convs] == [f"inner.{name}" for name in registered]
    # A chain of call_module nodes: c_i sits at depth i + 1, and is the i-th call.
    assert [conv.graph_depth for conv in by_graph.convs] == [index + 1 for index in registration]
    assert [conv.graph_depth for conv in by_hooks.convs] == list(registration)


def test_weights_are_the_models_own_parameters_and_names_take_the_prefix():
    torch.manual_seed(0)
    model = Shortcut()

    traced = trace_convs(model, prefix="m1.")

    state = model.state_dict()
    assert [conv.name for conv in traced.convs] == [
        "m1.stem",
        "m1.conv_a",
        "m1.conv_b",
        "m1.shortcut",
        "m1.head",
    ]
    for conv in traced.convs:
        parameter = state[f"{conv.name.removeprefix('m1.')}.weight"]
        assert torch.equal(conv.weight.view(torch.int32), parameter.view(torch.int32))
        assert conv.weight.data_ptr() == parameter.data_ptr()  # not a copy
        assert not conv.weight.requires_grad


class SharedConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.unused = nn.Conv2d(2, 2, 3, padding=1)
        self.unused_pointwise = nn.Conv2d(2, 2, 1)
        self.last = nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(self.conv(F.relu(self.conv(x))))


def test_a_conv_called_twice_is_listed_once_at_its_first_call():
    model = SharedConv()

    by_graph = trace_convs(model)
    by_hooks = trace_convs(DataDependent(model), input_shape=(1, 2, 4, 4))

    # conv 1, relu 2, conv again 3, last 4: conv keeps its first depth.
    assert [(c.name, c.graph_depth) for c in by_graph.convs] == [("conv", 1), ("last", 4)]
    assert [(c.name, c.graph_depth) for c in by_hooks.convs] == [
        ("inner.conv", 0),
        ("inner.last", 1),
    ]
    # Only 3x3 convs count as unreached: the 1x1 one is not stored anyway (SPEC section 4).
    assert by_graph.n_unreached_convs == by_hooks.n_unreached_convs == 1


BLUR = torch.ones(4, 1, 3, 3) / 9  # a fixed kernel outside any model


class FunctionalDepthwise(nn.Module):
    """A conv module, a functional depthwise conv on a parameter, one on a global tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.kernel = nn.Parameter(torch.randn(4, 1, 3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # input, weight, bias, stride, padding, dilation, groups
        x = F.conv2d(F.relu(self.stem(x)), self.kernel, None, 2, 2, 2, 4)
        return F.conv2d(x, BLUR, padding=1, groups=4)


def test_functional_conv_on_a_parameter_is_a_conv():
    model = FunctionalDepthwise()

    traced = trace_convs(model)

    # The root's own parameters come first in the state_dict, before its children's.
    assert [conv.name for conv in traced.convs] == ["kernel", "stem"]
    kernel, stem = traced.convs
    assert (kernel.graph_depth, stem.graph_depth) == (3, 1)
    assert (kernel.groups, kernel.stride, kernel.dilation) == (4, (2, 2), (2, 2))
    assert kernel.weight.data_ptr() == model.kernel.data_ptr()
    assert not hasattr(model, "_tensor_constant0")  # what torch.fx set on the model is gone


class StandardisedConv(nn.Conv2d):
    """A conv subclass with its own forward, like BiT's StdConv2d in the robustbench zoo."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = (self.weight - self.weight.mean()) / (self.weight.std() + 1e-5)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding)


def test_conv_subclass_with_its_own_forward_is_one_conv():
    model = nn.Sequential(StandardisedConv(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1))

    traced = trace_convs(model)

    assert [(conv.name, conv.graph_depth) for conv in traced.convs] == [("0", 1), ("2", 3)]
    assert traced.convs[0].weight.data_ptr() == model[0].weight.data_ptr()  # the stored weight

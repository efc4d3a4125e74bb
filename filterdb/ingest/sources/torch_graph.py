"""Which convs a torch model runs, and how deep each one sits in its computation graph.

SPEC section 4 stores only the convs that the forward pass reaches; SPEC section 5 ranks
convs by their longest-path depth in the computation graph. Both come from one trace:
torch.fx when the model traces symbolically (depth method ``graph``), forward hooks on a
dummy input when it does not (depth method ``execution_order``).
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from filterdb.errors import SourceError
from filterdb.ingest.batchnorm import fold_weight, folding_batchnorm
from filterdb.ingest.sources.base import ConvLayer

logger = logging.getLogger(__name__)

# ConvTranspose is left out on purpose: its weight is (C_in, C_out / groups, ...), not the
# (C_out, C_in / groups, ...) that ConvLayer promises.
CONV_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
FUNCTIONAL_CONVS = (F.conv1d, F.conv2d, F.conv3d)
# Positional order of F.convNd's arguments; torch.fx cannot normalise them for us because
# conv2d has two schemas (padding as ints or as a string).
_FUNCTIONAL_CONV_ARGUMENTS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
# Nodes that count one step of depth (SPEC section 5); placeholders and get_attr count 0.
_OP_NODES = ("call_module", "call_function", "call_method")


@dataclass
class TracedConvs:
    """The convs a model's forward pass runs, with their depths.

    ``convs`` holds convs of every kernel size (1x1 shortcuts included, SPEC section 5) in
    state_dict key order of their weights. ``depth_method`` is ``"graph"`` or
    ``"execution_order"``. ``n_unreached_convs`` counts the 3x3 ``nn.Conv2d`` modules that
    the forward pass never runs (SPEC section 4). ``n_folded`` counts the convs whose
    weight had a BatchNorm folded in (0 unless folding was asked for).
    """

    convs: list[ConvLayer]
    depth_method: str
    n_unreached_convs: int
    n_folded: int = 0


def trace_convs(
    module: nn.Module,
    *,
    input_shape: tuple[int, ...] = (1, 3, 32, 32),
    prefix: str = "",
    fold_batchnorm: bool = False,
) -> TracedConvs:
    """Find the convs ``module`` runs at inference and their depths in its graph.

    First tries :mod:`torch.fx`: ``graph_depth`` is the conv node's longest-path depth,
    1 + the largest depth of its inputs, with placeholders and attribute reads at 0 and
    every call_module, call_function and call_method node counting one. ``nn.Conv1d/2d/3d``
    modules (subclasses too) are convs, and so are ``F.conv1d/2d/3d`` calls whose weight is
    an attribute read directly and whose stride, dilation and groups are constants.

    When the model does not trace (data-dependent control flow, say), runs it once on a
    random input of ``input_shape`` under ``torch.no_grad`` with forward pre-hooks on its
    conv modules: ``graph_depth`` is then the position of the conv's first call (0, 1, ...).
    Functional convs are invisible to this fallback.

    Either way the model is traced in eval mode, and every submodule's attributes (training
    flag included) are put back afterwards. A conv run several times is listed
    once, at its first call. ``name`` is the conv's module path (for a functional conv, the
    path of its weight without a trailing ``.weight``) with ``prefix`` prepended, e.g.
    ``"m0."`` for ensemble members (SPEC section 4). ``weight`` is the model's own tensor,
    detached, not copied. Convs whose weight is not in the state_dict (a parametrised
    weight, say) come after the others, in call order.

    With ``fold_batchnorm``, a conv whose (first call's) output feeds only a BatchNorm
    with running statistics gets that BatchNorm folded into a new weight tensor, where and
    as the TorchScript ONNX exporter folds it in eval mode
    (:mod:`filterdb.ingest.batchnorm`). That needs the torch.fx graph.

    Raises
    ------
    SourceError
        The model neither traces nor runs on a dummy input of ``input_shape``; or
        ``fold_batchnorm`` is asked for a model that torch.fx cannot trace.
    """
    graph = _symbolic_graph(module)
    n_folded = 0
    if graph is None:
        if fold_batchnorm:
            raise SourceError(
                f"{type(module).__name__} does not trace with torch.fx, so filterdb cannot "
                "tell which BatchNorm follows which conv; ingest it without --fold-batchnorm, "
                "or export it to ONNX and use `filterdb ingest onnx`"
            )
        found = _convs_by_execution_order(module, input_shape)
        depth_method = "execution_order"
    else:
        found = _convs_in_graph(module, graph, fold_batchnorm=fold_batchnorm)
        depth_method = "graph"
        n_folded = sum(conv.folded for conv in found.values())

    state_position = {key: index for index, key in enumerate(module.state_dict(keep_vars=True))}
    in_state_dict_order = sorted(
        found.values(), key=lambda conv: state_position.get(conv.weight_key, len(state_position))
    )
    return TracedConvs(
        convs=[replace(conv.layer, name=prefix + conv.layer.name) for conv in in_state_dict_order],
        depth_method=depth_method,
        n_folded=n_folded,
        n_unreached_convs=sum(
            1
            for name, conv in module.named_modules()
            if isinstance(conv, nn.Conv2d)
            and tuple(conv.kernel_size) == (3, 3)
            and name not in found
        ),
    )


@dataclass
class _FoundConv:
    layer: ConvLayer
    weight_key: str  # where the weight sits in the state_dict, to order the convs
    folded: bool = False


class _ConvLeafTracer(fx.Tracer):
    """A tracer that keeps every conv module, subclasses included, as one call_module node.

    The default tracer only keeps modules defined in ``torch.nn`` whole; a subclass such as
    BiT's weight-standardised ``StdConv2d`` would otherwise dissolve into functional calls
    on a transformed weight, and the conv would be lost.
    """

    def is_leaf_module(self, module: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(module, CONV_MODULES) or super().is_leaf_module(
            module, module_qualified_name
        )


def _symbolic_graph(module: nn.Module) -> fx.Graph | None:
    with _untouched(module):
        try:
            return _ConvLeafTracer().trace(module)
        # torch.fx fails in many ways (TraceError, TypeError, AttributeError, ...) on code
        # it cannot follow; whichever it is, execution order is the fallback (SPEC section 5).
        except Exception as error:
            logger.debug("torch.fx cannot trace %s: %s", type(module).__name__, error)
            return None


def _convs_in_graph(
    module: nn.Module, graph: fx.Graph, *, fold_batchnorm: bool = False
) -> dict[str, _FoundConv]:
    depth: dict[fx.Node, int] = {}
    found: dict[str, _FoundConv] = {}
    for node in graph.nodes:  # fx graphs are in topological order
        deepest_input = max((depth[source] for source in node.all_input_nodes), default=0)
        depth[node] = deepest_input + (1 if node.op in _OP_NODES else 0)
        conv = _conv_of_node(module, node, depth[node])
        # A conv called several times keeps its first call, the first node in graph order,
        # as the hook fallback keeps the first call it sees.
        if conv is not None and conv.layer.name not in found:
            batchnorm = folding_batchnorm(module, node) if fold_batchnorm else None
            if batchnorm is not None:
                conv = replace(
                    conv,
                    layer=replace(conv.layer, weight=fold_weight(conv.layer.weight, batchnorm)),
                    folded=True,
                )
            found[conv.layer.name] = conv
    return found


def _conv_of_node(module: nn.Module, node: fx.Node, depth: int) -> _FoundConv | None:
    if node.op == "call_module":
        submodule = module.get_submodule(node.target)
        if isinstance(submodule, CONV_MODULES):
            return _module_conv(node.target, submodule, depth)
        return None
    if node.op != "call_function" or node.target not in FUNCTIONAL_CONVS:
        return None
    arguments = dict(zip(_FUNCTIONAL_CONV_ARGUMENTS, node.args, strict=False)) | node.kwargs
    weight = arguments["weight"]
    if not (isinstance(weight, fx.Node) and weight.op == "get_attr"):
        return None  # a weight computed in the graph: no stored tensor to point at
    # F.convNd defaults stride, dilation and groups to 1.
    stride, dilation, groups = (arguments.get(name, 1) for name in ("stride", "dilation", "groups"))
    if _holds_nodes([stride, dilation, groups]):
        return None  # only known at run time, and the graph holds no run
    try:
        tensor = operator.attrgetter(weight.target)(module).detach()
    except AttributeError:
        return None  # a tensor torch.fx lifted from outside the model (a global, say)
    n_spatial = tensor.dim() - 2
    layer = ConvLayer(
        name=weight.target.removesuffix(".weight"),
        weight=tensor,
        graph_depth=depth,
        groups=groups,
        stride=_spatial_tuple(stride, n_spatial),
        dilation=_spatial_tuple(dilation, n_spatial),
    )
    return _FoundConv(layer, weight_key=weight.target)


def _convs_by_execution_order(
    module: nn.Module, input_shape: tuple[int, ...]
) -> dict[str, _FoundConv]:
    first_calls: dict[str, nn.Module] = {}

    def record_call(name: str, conv: nn.Module) -> None:
        first_calls.setdefault(name, conv)  # a conv called several times keeps its first call

    handles = [
        conv.register_forward_pre_hook(lambda conv, _, name=name: record_call(name, conv))
        for name, conv in module.named_modules()
        if isinstance(conv, CONV_MODULES)
    ]
    try:
        with _untouched(module), torch.no_grad():
            module(_dummy_input(module, input_shape))
    except Exception as error:
        message = str(error).splitlines()[0] if str(error) else ""
        raise SourceError(
            f"{type(module).__name__} does not trace with torch.fx and fails on a dummy input "
            f"of shape {tuple(input_shape)} ({type(error).__name__}: {message}); "
            "give the input shape it takes: `ingest checkpoint --input-shape C,H,W`, or "
            "input_shape=(1, C, H, W) from Python"
        ) from error
    finally:
        for handle in handles:
            handle.remove()
    return {
        name: _module_conv(name, conv, order)
        for order, (name, conv) in enumerate(first_calls.items())
    }


def _module_conv(name: str, conv: nn.Module, depth: int) -> _FoundConv:
    layer = ConvLayer(
        name=name,
        weight=conv.weight.detach(),
        graph_depth=depth,
        groups=conv.groups,
        stride=tuple(conv.stride),
        dilation=tuple(conv.dilation),
    )
    return _FoundConv(layer, weight_key=f"{name}.weight" if name else "weight")


def _dummy_input(module: nn.Module, input_shape: tuple[int, ...]) -> torch.Tensor:
    reference = next(module.parameters(), None)
    dummy = torch.randn(input_shape, generator=torch.Generator().manual_seed(0))
    if reference is None:
        return dummy
    return dummy.to(device=reference.device, dtype=reference.dtype)


def _holds_nodes(value: object) -> bool:
    nodes: list[fx.Node] = []
    fx.node.map_arg(value, nodes.append)
    return bool(nodes)


def _spatial_tuple(value: int | tuple[int, ...] | list[int], n_spatial: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, tuple | list) else (value,) * n_spatial


@contextmanager
def _untouched(module: nn.Module) -> Iterator[None]:
    """Run the body on ``module`` in eval mode, then put every submodule's attributes back.

    Eval mode traces the convs of inference: a branch on ``self.training`` (dropout,
    auxiliary heads) takes its eval side in both methods. Restoring the attributes undoes
    what tracing wrote into the model: torchdiffeq-style blocks assign to ``self`` in
    ``forward`` (robustbench's Kang2021Stable: ``self.integration_time = ...type_as(x)``),
    and a failed torch.fx trace would leave a Proxy there that breaks every later call.
    """
    saved = [(submodule, dict(vars(submodule))) for submodule in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for submodule, attributes in saved:
            vars(submodule).clear()
            vars(submodule).update(attributes)

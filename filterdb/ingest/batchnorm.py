"""Batch-norm folding, as the papers' ONNX pipeline had it (SPEC section 4, weights form).

Both papers measured filters from ONNX files written by the TorchScript exporter
(``torch.onnx.export(..., dynamo=False)``) in eval mode. That exporter folds a
BatchNormalization whose input is a Conv's output, when that output has no other user,
into the Conv (torch's ``_jit_pass_onnx_eval_peephole``, ``fuseConvBatchNorm``): each
output channel's kernel is multiplied by ``gamma / sqrt(running_var + eps)``. This module
finds those pairs in a torch.fx graph and computes the folded kernels in float32 with the
exporter's own order of operations, which gives the exported weights bit for bit
(measured on torchvision resnet18 with random BN statistics: 0.0 difference; the
mathematically equal ``gamma * rsqrt(var + eps)`` differs in the last bit).
"""

from __future__ import annotations

import torch
import torch.fx as fx
from torch import nn


def folding_batchnorm(module: nn.Module, conv_node: fx.Node) -> nn.Module | None:
    """The BatchNorm that the exporter folds into the conv of ``conv_node``, if any.

    The conv's output must have exactly one user, a ``call_module`` node of a BatchNorm
    (1d, 2d or 3d, subclasses too) that keeps running statistics: a BatchNorm without them
    normalises by batch statistics even in eval mode, and the exporter leaves it as it is
    (measured). ``affine=False`` folds with gamma = 1, as the exporter does. A conv module
    whose class replaces ``forward`` (timm's weight-standardised ``StdConv2d``) computes its
    kernel in the graph, so the exporter has no stored weight to fold it into: not folded.
    """
    if conv_node.op == "call_module" and not _stock_forward(module.get_submodule(conv_node.target)):
        return None
    users = list(conv_node.users)
    if len(users) != 1 or users[0].op != "call_module":
        return None
    candidate = module.get_submodule(users[0].target)
    if not isinstance(candidate, nn.modules.batchnorm._BatchNorm):
        return None
    if candidate.running_mean is None or candidate.running_var is None:
        return None
    return candidate


def _stock_forward(conv: nn.Module) -> bool:
    return type(conv).forward in (nn.Conv1d.forward, nn.Conv2d.forward, nn.Conv3d.forward)


def fold_weight(weight: torch.Tensor, batchnorm: nn.Module) -> torch.Tensor:
    """``weight`` (C_out, ...) with each output channel times gamma / sqrt(var + eps).

    Float32, in the exporter's order: ``var + eps``, ``sqrt``, ``gamma / that``, then the
    weight times the per-channel scale. ``eps`` is the module's own; ``running_var`` its
    eval-mode statistic.
    """
    with torch.no_grad():
        variance = batchnorm.running_var.detach().to(torch.float32)
        gamma = (
            batchnorm.weight.detach().to(torch.float32)
            if batchnorm.weight is not None
            else torch.ones_like(variance)
        )
        if variance.shape[0] != weight.shape[0]:
            raise ValueError(
                f"BatchNorm of {variance.shape[0]} channels after a conv of {weight.shape[0]}"
            )
        scale = gamma.div(variance.add(batchnorm.eps).sqrt())
        weight = weight.detach().to(torch.float32)
        return weight * scale.reshape(-1, *([1] * (weight.dim() - 1)))

"""Which torch device a job runs on: shared by extraction and the metrics."""

from __future__ import annotations

from typing import TYPE_CHECKING

from filterdb.errors import FilterdbError

if TYPE_CHECKING:
    import torch


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` is CUDA when available, else the CPU; asking for absent CUDA is an error."""
    import torch

    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise FilterdbError("--device cuda asked for, but no CUDA device is available; use cpu")
    return resolved

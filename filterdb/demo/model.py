"""The demo's network and data: a six-conv CNN and scikit-learn's digits (no download)."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class DigitsCNN(nn.Module):
    """Six 3x3 convs (1-16-32-32 at 8x8, max-pool, 64-64-64 at 4x4), global pool, linear.

    Six depths give six of the eleven depth bins. No batch norm, so the PGD attack needs no
    train/eval switching; at this depth it trains stably without (with eight convs the PGD
    model collapsed to chance).
    Modules are registered in forward order, so state_dict key order is the conv chain's
    depth order (ingestion without an architecture uses it: SPEC section 5, depth).
    """

    WIDTHS = (16, 32, 32, 64, 64, 64)
    POOL_AFTER = 3  # convs at 8x8 before the max-pool

    def __init__(self) -> None:
        super().__init__()
        channels = (1, *self.WIDTHS)
        self.convs = nn.ModuleList(
            nn.Conv2d(c_in, c_out, 3, padding=1) for c_in, c_out in pairwise(channels)
        )
        self.head = nn.Linear(channels[-1], 10)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images
        for position, conv in enumerate(self.convs, start=1):
            x = F.relu(conv(x))
            if position == self.POOL_AFTER:
                x = F.max_pool2d(x, 2)
        return self.head(x.mean(dim=(2, 3)))


@dataclass(frozen=True)
class DigitsSplit:
    """scikit-learn's digits as (N, 1, 8, 8) float32 images in [0, 1], stratified split."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor


def load_digits_split(*, test_share: float = 0.25, seed: int = 0) -> DigitsSplit:
    """The 1797 digits, pixels 0..16 scaled to [0, 1], split per class by ``seed``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
    labels = torch.tensor(digits.target, dtype=torch.int64)
    train, test = train_test_split(
        np.arange(len(labels)), test_size=test_share, random_state=seed, stratify=digits.target
    )
    train, test = torch.from_numpy(train), torch.from_numpy(test)
    return DigitsSplit(images[train], labels[train], images[test], labels[test])

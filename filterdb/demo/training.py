"""Deterministic training of the demo's CNN, normal or PGD adversarial (Madry et al. 2018)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from filterdb.demo.model import DigitsCNN, DigitsSplit


@dataclass(frozen=True)
class TrainingSettings:
    """Everything that decides the trained weights; a checkpoint is reused only when equal.

    ``eps`` is the Linf budget on pixels scaled to [0, 1]; training attacks with
    ``train_steps`` PGD steps, evaluation with the stronger ``eval_steps``.
    """

    epochs: int
    eps: float = 0.1
    train_steps: int = 7
    eval_steps: int = 20
    batch_size: int = 64
    learning_rate: float = 3e-3
    test_share: float = 0.25
    seed: int = 0


def pgd_attack(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    eps: float,
    steps: int,
    step_size: float | None = None,
    random_start: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Linf PGD (Madry et al. 2018): images within ``eps`` of ``images`` and in [0, 1].

    Each step moves ``step_size`` (default 2.5 eps / steps, Madry's choice) along the sign
    of the cross-entropy gradient, then projects onto the eps ball and the pixel range.
    ``random_start`` begins at a uniform point of the ball (drawn with ``generator``).
    The model's parameter gradients are left untouched.
    """
    step_size = 2.5 * eps / steps if step_size is None else step_size
    lower, upper = (images - eps).clamp(min=0.0), (images + eps).clamp(max=1.0)
    adversarial = images.clone()
    if random_start:
        noise = torch.rand(images.shape, generator=generator, dtype=images.dtype)
        adversarial = adversarial + (2 * noise - 1) * eps
    adversarial = torch.max(torch.min(adversarial, upper), lower)
    for _ in range(steps):
        adversarial.requires_grad_(True)
        loss = F.cross_entropy(model(adversarial), labels)
        (gradient,) = torch.autograd.grad(loss, adversarial)
        adversarial = adversarial.detach() + step_size * gradient.sign()
        adversarial = torch.max(torch.min(adversarial, upper), lower)
    return adversarial.detach()


@contextmanager
def deterministic(seed: int) -> Iterator[None]:
    """Seeded, deterministic, single-threaded torch; the caller's settings come back after.

    One thread: on a busy 2-core machine two threads made PGD training 10x slower (tiny
    convs spend their time waiting for each other), and one thread is also reproducible.
    """
    threads = torch.get_num_threads()
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True)
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(threads)
            torch.use_deterministic_algorithms(was_deterministic)


def train_digits_cnn(
    split: DigitsSplit, settings: TrainingSettings, *, adversarial: bool
) -> DigitsCNN:
    """Train a :class:`DigitsCNN` with Adam; on PGD examples only when ``adversarial``.

    Deterministic for given ``split`` and ``settings`` (same weights on every run on one
    machine); the normal and the PGD model start from the same initial weights.
    """
    with deterministic(settings.seed):
        model = DigitsCNN()
        optimiser = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
        generator = torch.Generator().manual_seed(settings.seed)
        n_train = len(split.train_labels)
        for _ in range(settings.epochs):
            order = torch.randperm(n_train, generator=generator)
            for batch in order.split(settings.batch_size):
                images, labels = split.train_images[batch], split.train_labels[batch]
                if adversarial:
                    images = pgd_attack(
                        model,
                        images,
                        labels,
                        eps=settings.eps,
                        steps=settings.train_steps,
                        generator=generator,
                    )
                optimiser.zero_grad()
                F.cross_entropy(model(images), labels).backward()
                optimiser.step()
    return model.eval()


def evaluate(
    model: nn.Module, split: DigitsSplit, settings: TrainingSettings
) -> tuple[float, float]:
    """Clean and PGD accuracy (``eval_steps`` steps, random start) on the test split, in %."""
    with deterministic(settings.seed):
        images, labels = split.test_images, split.test_labels
        attacked = pgd_attack(
            model,
            images,
            labels,
            eps=settings.eps,
            steps=settings.eval_steps,
            generator=torch.Generator().manual_seed(settings.seed),
        )
        with torch.no_grad():
            clean = (model(images).argmax(dim=1) == labels).double().mean().item()
            robust = (model(attacked).argmax(dim=1) == labels).double().mean().item()
    return 100 * clean, 100 * robust

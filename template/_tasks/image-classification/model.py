"""The model for image classification: a small CNN, plain PyTorch.

Besides the network, a task defines its loss, its validation metrics and the metric that
decides the best checkpoint; both training engines use these.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from .config import Config

MONITOR, MONITOR_MODE = "val/acc", "max"  # the best checkpoint has the highest accuracy
BASELINE = "majority class"  # what a model that learned nothing scores; see build_baseline


class SmallCNN(nn.Module):
    """Three conv blocks, global average pooling and a linear classifier.

    The per-channel mean and std of the training images are buffers: the model takes raw
    pixels in [0, 1], also once exported.
    """

    def __init__(
        self,
        num_classes: int,
        width: int = 32,
        dropout: float = 0.1,
        mean: list[float] | None = None,
        std: list[float] | None = None,
    ):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean or [0.5] * 3).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std or [0.25] * 3).view(1, 3, 1, 1))
        self.features = nn.Sequential(
            conv_block(3, width),
            conv_block(width, 2 * width),
            conv_block(2 * width, 4 * width),
        )
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(4 * width, num_classes),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features((images - self.mean) / self.std))


def conv_block(channels_in: int, channels_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels_in, channels_out, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(channels_out),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


def build_model(cfg: Config, meta: dict) -> SmallCNN:
    return SmallCNN(
        num_classes=len(meta["classes"]),
        width=cfg.model.width,
        dropout=cfg.model.dropout,
        mean=meta["mean"],
        std=meta["std"],
    )


def step(model: nn.Module, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One batch through the model: the loss to minimise, and the (outputs, targets) that
    the metrics of build_metrics are updated with. Training, evaluation and the baseline
    all go through it: a model with other inputs, or a loss that needs them, changes here."""
    images, labels = batch
    logits = model(images)
    return F.cross_entropy(logits, labels), logits, labels


def build_metrics(meta: dict) -> MetricCollection:
    """Validation metrics, updated with (model output, target) batches."""
    return MetricCollection(
        {"acc": MulticlassAccuracy(num_classes=len(meta["classes"]), average="micro")}
    )


class ClassPrior(nn.Module):
    """A model that learned nothing: the training classes' frequencies, whatever the input.

    Its accuracy is the majority class's share; its loss is the entropy of the classes.
    """

    def __init__(self, counts: list[int]):
        super().__init__()
        self.register_buffer("logits", torch.tensor(counts, dtype=torch.float).add(1).log())

    def forward(self, inputs: torch.Tensor, *more_inputs: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(len(inputs), -1)


def build_baseline(meta: dict) -> ClassPrior:
    return ClassPrior(meta["class_counts"])
